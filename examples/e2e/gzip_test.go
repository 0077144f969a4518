//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// TestGzipResponsesChargedExactly: a backend that gzips its answer although tollgate asked for
// identity encoding is still charged exactly the usage it reported, for a JSON answer and for an
// event stream flushed through gzip event by event. The client gets the gzip bytes as the
// backend sent them. The same holds where Envoy reads streams' usage: it does not read a
// compressed one, which tollgate then reads.
func TestGzipResponsesChargedExactly(t *testing.T) {
	testutil.Envoy(t)
	for _, reader := range []string{policies.StreamUsageTollgate, policies.StreamUsageEnvoy} {
		t.Run("streamUsage="+reader, func(t *testing.T) {
			testGzipResponsesChargedExactly(t, reader)
		})
	}
}

func testGzipResponsesChargedExactly(t *testing.T, reader string) {
	// The charging tests' policy (high limits: the test reads what was counted), with both of
	// its backends one simulator.
	sim := startSim(t, "sim", "--output-tokens", "23", "--input-tokens", "11")
	policy := chargingPolicy
	if reader == policies.StreamUsageEnvoy {
		policy = withEnvoyReadingStreams(policy)
	}
	s := startStack(t, policy, map[string]int{"fast": sim, "slow": sim})

	for _, tt := range []struct {
		user   string
		stream bool
	}{
		{"gzip-json", false},
		{"gzip-sse", true},
	} {
		t.Run(tt.user, func(t *testing.T) {
			body := chatBody("qwen3")
			if tt.stream {
				body = `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`
			}
			plain := postGzipped(t, s, tt.user, body)
			reported := reportedTotal(t, plain, tt.stream)
			if reported == 0 {
				t.Fatalf("the answer reports no usage:\n%s", plain)
			}
			got := awaitSpent(t, s, tt.user, "qwen3", reported)
			t.Logf("usage reported %d tokens, the ratelimit service counted %d", reported, got)
			if got != reported {
				t.Fatalf("counted %d tokens, want the reported %d", got, reported)
			}
		})
	}
}

// postGzipped sends a chat request asking llmsim for a gzip answer, checks the answer reached
// the client still gzip-encoded, and returns it decoded.
func postGzipped(t *testing.T, s *stack, user, body string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url("/v1/chat/completions"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-user-id", user)
	req.Header.Set("x-llmsim-gzip", "1")
	// Transparent decompression would hide what arrived.
	c := &http.Client{Timeout: client.Timeout, Transport: &http.Transport{DisableCompression: true}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, raw)
	}
	if enc := resp.Header.Get("content-encoding"); enc != "gzip" {
		t.Fatalf("content-encoding %q, want the backend's gzip", enc)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("the answer is not intact gzip: %v", err)
	}
	return plain
}

// reportedTotal returns the total_tokens of the usage in a chat completion or, for a stream,
// in its usage chunk.
func reportedTotal(t *testing.T, plain []byte, stream bool) int {
	t.Helper()
	type withUsage struct {
		Usage *struct {
			TotalTokens int `json:"total_tokens"`
		} `json:"usage"`
	}
	if !stream {
		var v withUsage
		if err := json.Unmarshal(plain, &v); err != nil || v.Usage == nil {
			t.Fatalf("no usage in %s (%v)", plain, err)
		}
		return v.Usage.TotalTokens
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(plain))
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var v withUsage
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if v.Usage != nil {
			total = v.Usage.TotalTokens
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}
