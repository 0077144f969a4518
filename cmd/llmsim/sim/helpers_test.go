package sim_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

// seedRequest is the seed demo's request body.
const seedRequest = `{"model":"qwen3","messages":[{"role":"user","content":"Hello from Alice!"}]}`

// defaultText is the answer with the default 6 tokens.
const defaultText = "Hello from the LLM simulator today."

// startServer serves a simulator with opts on 127.0.0.1 for the duration of the test.
func startServer(t *testing.T, opts sim.Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(sim.NewHandler(opts, nil))
	t.Cleanup(srv.Close)
	return srv
}

// rawClient does not add Accept-Encoding or decompress, so tests see exactly what was sent.
func rawClient(t *testing.T) *http.Client {
	t.Helper()
	transport := &http.Transport{DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// post sends body to path with optional header pairs ("name", "value", ...).
func post(t *testing.T, ctx context.Context, srv *httptest.Server, path, body string, headerPairs ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headerPairs); i += 2 {
		req.Header.Set(headerPairs[i], headerPairs[i+1])
	}
	resp, err := rawClient(t).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// readAll reads the whole body and fails the test on a read error.
func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

// decodeJSON parses a JSON body into a generic map, failing the test on invalid JSON.
func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, b)
	}
	return m
}

// field walks a decoded JSON value along path; numbers in path index arrays.
func field(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch key := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: not an object: %v", key, v)
			}
			if v, ok = m[key]; !ok {
				t.Fatalf("missing field %q in %v", key, m)
			}
		case int:
			a, ok := v.([]any)
			if !ok || key >= len(a) {
				t.Fatalf("at [%d]: not an array that long: %v", key, v)
			}
			v = a[key]
		}
	}
	return v
}

// number reads a JSON number field as an int.
func number(t *testing.T, v any, path ...any) int {
	t.Helper()
	f, ok := field(t, v, path...).(float64)
	if !ok {
		t.Fatalf("field %v is not a number", path)
	}
	return int(f)
}

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	name string // the "event:" line, empty when absent
	data string
}

// readSSE parses a server-sent events stream strictly: every event is an optional "event: "
// line and exactly one "data: " line, followed by a blank line. Anything else fails the test.
// It returns the events read and the error that ended the stream (nil for a clean end).
func readSSE(t *testing.T, r io.Reader) ([]sseEvent, error) {
	t.Helper()
	var events []sseEvent
	var cur sseEvent
	var haveData bool
	scanner := bufio.NewScanner(r)
	for scanner.Scan() {
		line := scanner.Text()
		switch {
		case line == "":
			if !haveData {
				t.Fatalf("blank line ends an event without data (after %d events)", len(events))
			}
			events = append(events, cur)
			cur, haveData = sseEvent{}, false
		case strings.HasPrefix(line, "event: ") && !haveData && cur.name == "":
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && !haveData:
			cur.data, haveData = strings.TrimPrefix(line, "data: "), true
		default:
			t.Fatalf("unexpected SSE line %q after %d events", line, len(events))
		}
	}
	if scanner.Err() == nil && (haveData || cur.name != "") {
		t.Fatalf("stream ended inside an event")
	}
	return events, scanner.Err()
}

// dataObjects decodes the data of every event, skipping [DONE].
func dataObjects(t *testing.T, events []sseEvent) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, e := range events {
		if e.data == "[DONE]" {
			continue
		}
		out = append(out, decodeJSON(t, []byte(e.data)))
	}
	return out
}

// gunzip decompresses a complete gzip body.
func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gzip header: %v", err)
	}
	return readAll(t, zr)
}
