//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// With extProc.streamUsage: envoy, Envoy reads a stream's usage and hands it to the ext_proc
// server with the response trailers: a stream is four messages, not one per chunk. These
// tests hold that path to the same accounting as the default one: exact charges for every API
// Envoy reads, errors free, a stream the client leaves charged high (its whole reservation),
// JSON answers and the legacy completions API still read by tollgate, and quotas enforced for
// a back-to-back client.

// withEnvoyReadingStreams turns a policy template with "extProc: {{extproc}}" into one where
// Envoy reads streams' usage.
func withEnvoyReadingStreams(policy string) string {
	return strings.Replace(policy, "extProc: {{extproc}}", "extProc: {address: 127.0.0.1, port: {{extproc_port}}, streamUsage: envoy}", 1)
}

// envoyStreamsPolicy is chargingPolicy with Envoy reading streams' usage, a backend that
// refuses every request (401), and a tight quota for the back-to-back client.
var envoyStreamsPolicy = withEnvoyReadingStreams(strings.NewReplacer(
	"  - {name: slow, url: \"{{backend:slow}}\"}\n", "  - {name: slow, url: \"{{backend:slow}}\"}\n  - {name: locked, url: \"{{backend:locked}}\"}\n",
	"  - {name: slowpoke, backend: slow}\n", "  - {name: slowpoke, backend: slow}\n  - {name: refused, backend: locked}\n  - {name: tight, backend: fast}\n",
	"  - {name: slowpoke-hourly,", "  - {name: refused-hourly, model: refused, cost: tokens, limit: 1000000, per: hour}\n"+
		"  - {name: tight-hourly, model: tight, cost: tokens, limit: 150, per: hour}\n  - {name: slowpoke-hourly,",
).Replace(chargingPolicy))

func envoyStreamsStack(t *testing.T) *stack {
	t.Helper()
	testutil.Envoy(t)
	return startStack(t, envoyStreamsPolicy, map[string]int{
		"fast":   startSim(t, "fast", "--output-tokens", fmt.Sprint(simOutputTokens), "--token-delay", "1ms"),
		"slow":   startSim(t, "slow", "--ttft", "3s"),
		"locked": startSim(t, "locked", "--require-key", "not-sent"),
	})
}

// messageCounts reads tollgate_extproc_messages_total by message kind.
func messageCounts(t *testing.T, s *stack) map[string]int {
	t.Helper()
	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	counts := map[string]int{}
	for _, kind := range []string{"request_headers", "request_body", "response_headers", "response_body", "response_trailers"} {
		v := metricValue(metrics, "tollgate_extproc_messages_total", `message="`+kind+`"`)
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			n = 0 // a kind never sent has no series
		}
		counts[kind] = int(n)
	}
	return counts
}

// messagesSince is the messages of each kind since before.
func messagesSince(t *testing.T, s *stack, before map[string]int) map[string]int {
	t.Helper()
	after := messageCounts(t, s)
	for kind := range after {
		after[kind] -= before[kind]
	}
	return after
}

func TestEnvoyReadsStreamUsage(t *testing.T) {
	s := envoyStreamsStack(t)
	if st := runTollgate(t, "status", "--addr", addr(s.metricsPort)); !strings.Contains(st, "stream usage:      read by Envoy") {
		t.Errorf("status does not say Envoy reads streams' usage:\n%s", st)
	}
	anthropic := map[string]string{"anthropic-version": "2023-06-01"}
	tests := []struct {
		name, path, model, body string
		headers                 map[string]string
	}{
		{name: "chat, include_usage forced", path: "/v1/chat/completions", model: "qwen3",
			body: streamBody("qwen3")},
		{name: "chat with include_usage", path: "/v1/chat/completions", model: "qwen3",
			body: `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`},
		{name: "responses", path: "/v1/responses", model: "qwen3",
			body: `{"model":"qwen3","stream":true,"input":"hi"}`},
		{name: "anthropic messages", path: "/v1/messages", model: "claude", headers: anthropic,
			body: `{"model":"claude","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}`},
	}
	fourMessages := map[string]int{"request_headers": 1, "request_body": 1, "response_headers": 1, "response_body": 0, "response_trailers": 1}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user := fmt.Sprintf("streamer-%d", i)
			header := map[string]string{"x-user-id": user}
			for k, v := range tt.headers {
				header[k] = v
			}
			before := messageCounts(t, s)
			const streams = 3
			for range streams {
				r := mustDo(t, "POST", s.url(tt.path), header, tt.body)
				if r.status != 200 || !strings.Contains(string(r.body), "data: ") {
					t.Fatalf("status %d, body %.300s", r.status, r.body)
				}
			}
			want := streams * (simInputTokens + simOutputTokens)
			if got := awaitSpent(t, s, user, tt.model, want); got != want {
				t.Errorf("charged %d, want the reported usage %d", got, want)
			}
			got := messagesSince(t, s, before)
			for kind, n := range fourMessages {
				if got[kind] != n*streams {
					t.Errorf("%s messages for %d streams: %d, want %d (all: %v)", kind, streams, got[kind], n*streams, got)
				}
			}
		})
	}

	readByTollgate := []struct{ name, path, body string }{
		{"legacy completions stream", "/v1/completions", `{"model":"qwen3","stream":true,"prompt":"hi"}`},
		{"legacy completions JSON", "/v1/completions", `{"model":"qwen3","prompt":"hi"}`},
		{"chat JSON", "/v1/chat/completions", chatBody("qwen3")},
		{"responses JSON", "/v1/responses", `{"model":"qwen3","input":"hi"}`},
	}
	for i, tt := range readByTollgate {
		t.Run(tt.name+" read by tollgate", func(t *testing.T) {
			user := fmt.Sprintf("reader-%d", i)
			stream := strings.Contains(tt.body, `"stream":true`)
			before := messageCounts(t, s)
			if r := mustDo(t, "POST", s.url(tt.path), map[string]string{"x-user-id": user}, tt.body); r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if got, want := awaitSpent(t, s, user, "qwen3", simInputTokens+simOutputTokens), simInputTokens+simOutputTokens; got != want {
				t.Errorf("charged %d, want %d", got, want)
			}
			chunks := 1
			if stream {
				chunks = simOutputTokens
			}
			got := messagesSince(t, s, before)
			if got["response_body"] < chunks {
				t.Errorf("messages %v, want the body sent, at least %d chunks", got, chunks)
			}
			t.Logf("messages: %v", got)
		})
	}

	t.Run("a refused stream is free", func(t *testing.T) {
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "refused"}, streamBody("refused"))
		if r.status != 401 {
			t.Fatalf("status %d, want the backend's 401: %s", r.status, r.body)
		}
		// The reservation is given back once the error is seen.
		testutil.Eventually(t, 10*time.Second, "the reservation given back", func() error {
			if got := spent(t, s, "refused", "refused"); got != 0 {
				return fmt.Errorf("charged %d for a refused stream, want 0", got)
			}
			return nil
		})
	})

	t.Run("a stream left early is charged its reservation", func(t *testing.T) {
		const maxTokens = 200
		body := fmt.Sprintf(`{"model":"qwen3","stream":true,"max_tokens":%d,"messages":[{"role":"user","content":%q}]}`, maxTokens, chargingPrompt)
		streamAndLeave(t, s, "/v1/chat/completions", "leaver", body, 3)
		want := promptBound + maxTokens
		if got := awaitSpent(t, s, "leaver", "qwen3", want); got != want {
			t.Errorf("charged %d, want the prompt's bound and max_tokens, %d", got, want)
		}
	})

	t.Run("back to back until refused", func(t *testing.T) {
		// Each stream costs 36 tokens and reserves the prompt's bound and the default output
		// ceiling, so only the first gets past admission with nothing spent; after it the
		// counter holds what was served, exactly.
		var statuses []int
		for range 6 {
			statuses = append(statuses, mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "tight"}, streamBody("tight")).status)
		}
		t.Logf("statuses %v", statuses)
		served := 0
		for _, st := range statuses {
			if st == 200 {
				served++
			}
		}
		if statuses[0] != 200 || statuses[len(statuses)-1] != 429 {
			t.Fatalf("statuses %v, want the first answered and the last refused", statuses)
		}
		// The counter, read in Redis: the service's remaining count stops at the limit.
		awaitCounter(t, addr(s.redisPort), "tight", served*(simInputTokens+simOutputTokens))
	})
}

// TestStreamUsageFollowsReloads: switching extProc.streamUsage in a running gateway changes
// who reads new streams (messages per stream tell which), and every stream is charged its
// usage exactly across both switches, also those sent on a keep-alive connection opened
// before the switch (Envoy drains it under the old listener while routes are already new).
func TestStreamUsageFollowsReloads(t *testing.T) {
	testutil.Envoy(t)
	s := startStack(t, chargingPolicy, map[string]int{
		"fast": startSim(t, "fast", "--output-tokens", fmt.Sprint(simOutputTokens), "--token-delay", "1ms"),
		"slow": startSim(t, "slow", "--ttft", "3s"),
	})
	fresh := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	header := map[string]string{"x-user-id": "flipper"}
	streams := 0
	stream := func(t *testing.T, c *http.Client) map[string]int {
		t.Helper()
		before := messageCounts(t, s)
		req, err := http.NewRequest("POST", s.url("/v1/chat/completions"), strings.NewReader(streamBody("qwen3")))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-user-id", header["x-user-id"])
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, %v: %.200s", resp.StatusCode, err, body)
		}
		streams++
		return messagesSince(t, s, before)
	}
	readBy := func(got map[string]int) string {
		switch {
		case got["response_trailers"] == 1 && got["response_body"] == 0:
			return policies.StreamUsageEnvoy
		case got["response_body"] >= simOutputTokens && got["response_trailers"] == 0:
			return policies.StreamUsageTollgate
		}
		return fmt.Sprint(got)
	}
	awaitReader := func(t *testing.T, want string) {
		t.Helper()
		testutil.Eventually(t, 15*time.Second, "new streams read by "+want, func() error {
			if got := readBy(stream(t, fresh)); got != want {
				return fmt.Errorf("read by %s", got)
			}
			return nil
		})
	}

	if got := readBy(stream(t, client)); got != policies.StreamUsageTollgate {
		t.Fatalf("before the switch, a stream read by %s", got)
	}
	s.writePolicy(t, withEnvoyReadingStreams(chargingPolicy))
	awaitReader(t, policies.StreamUsageEnvoy)
	t.Logf("keep-alive stream after switching to envoy: read by %s", readBy(stream(t, client)))
	s.writePolicy(t, chargingPolicy)
	awaitReader(t, policies.StreamUsageTollgate)
	t.Logf("keep-alive stream after switching back: read by %s", readBy(stream(t, client)))

	want := streams * (simInputTokens + simOutputTokens)
	if got := awaitSpent(t, s, "flipper", "qwen3", want); got != want {
		t.Errorf("charged %d for %d streams, want their usage, %d", got, streams, want)
	}
}
