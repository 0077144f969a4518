//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// The charging tests end requests every way a client can — leaving mid-stream, after the usage
// chunk but before [DONE], over HTTP/2, on the Anthropic API, by a client timeout before any
// answer — and read what the real ratelimit service counted. Leaving early must never make a
// request free.

// chargingPolicy has high limits so nothing is rejected: the tests read what was counted. The
// "fast" backend streams 30 tokens 40 ms apart; "slow" takes 3 s to answer at all.
const chargingPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity: {header: x-user-id}
backends:
  - {name: fast, url: "{{backend:fast}}"}
  - {name: slow, url: "{{backend:slow}}"}
models:
  - {name: qwen3, backend: fast}
  - {name: claude, backend: fast}
  - {name: slowpoke, backend: slow}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {name: qwen3-hourly, model: qwen3, cost: tokens, limit: 1000000, per: hour}
  - {name: claude-hourly, model: claude, cost: tokens, limit: 1000000, per: hour}
  - {name: slowpoke-hourly, model: slowpoke, cost: tokens, limit: 1000000, per: hour}
`

// simOutputTokens is what the fast backend generates per request; simInputTokens what it reports
// for any prompt.
const (
	simOutputTokens = 30
	simInputTokens  = 6
)

// chargingPrompt is the request text: "user" and this content are the prompt's strings, 4 + 17
// bytes, which the gateway bounds at 21 + 8 (framing) = 29 tokens when no usage arrives.
const chargingPrompt = "Hello from Alice!"

// promptBound is what the gateway charges for chargingPrompt when the backend reported no
// prompt count: one token per byte of its strings, plus 8 for the framing.
const promptBound = len("user") + len(chargingPrompt) + 8

func chargingStack(t *testing.T) *stack {
	t.Helper()
	testutil.Envoy(t)
	return startStack(t, chargingPolicy, map[string]int{
		"fast": startSim(t, "fast", "--output-tokens", fmt.Sprint(simOutputTokens), "--token-delay", "40ms"),
		"slow": startSim(t, "slow", "--ttft", "3s"),
	})
}

// startStack runs the whole gateway on policy (a template) in front of backends: tollgate
// serve, the ratelimit service, Redis and Envoy.
func startStack(t *testing.T, policy string, backends map[string]int) *stack {
	t.Helper()
	s := newStack(t, backends)
	s.writePolicy(t, policy)
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)
	return s
}

// spent asks the ratelimit service how much of user's quota on model (named "<model>-hourly")
// is used.
func spent(t testing.TB, s *stack, user, model string) int {
	t.Helper()
	return spentOn(t, s, user, model, model+"-hourly")
}

// spentOn asks the ratelimit service how much of user's quota on model is used.
func spentOn(t testing.TB, s *stack, user, model, quota string) int {
	t.Helper()
	statuses, err := rlsclient.CheckOnce(context.Background(), addr(s.rateLimit), "tollgate", []rlsclient.Descriptor{{Entries: []rlsclient.Entry{
		{Key: "model", Value: model}, {Key: "quota", Value: quota}, {Key: "user", Value: user},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if !statuses[0].Limit.Matched() {
		t.Fatalf("the ratelimit service has no limit for %s on %s", user, model)
	}
	return int(statuses[0].Limit.PerWindow - statuses[0].Remaining)
}

// awaitSpent waits until the counter stops moving (charges land after the client has left),
// then returns it.
func awaitSpent(t testing.TB, s *stack, user, model string, atLeast int) int {
	t.Helper()
	var got int
	testutil.Eventually(t, 10*time.Second, "charges counted", func() error {
		got = spent(t, s, user, model)
		if got < atLeast {
			return fmt.Errorf("%d counted, want at least %d", got, atLeast)
		}
		return nil
	})
	// Anything still in flight arrives within a few retries' time.
	time.Sleep(300 * time.Millisecond)
	return spent(t, s, user, model)
}

// sseReader counts the output events of an SSE body as a client sees them.
type sseReader struct {
	r *bufio.Reader
}

// next reads events until one carries generated text and returns it; "" at the end.
func (sr sseReader) next(t testing.TB) (text string, usage bool) {
	t.Helper()
	for {
		line, err := sr.r.ReadString('\n')
		if err != nil {
			return "", false
		}
		data, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ev struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Delta struct {
				Text string `json:"text"`
			} `json:"delta"`
			Usage json.RawMessage `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if len(ev.Choices) > 0 && ev.Choices[0].Delta.Content != "" {
			return ev.Choices[0].Delta.Content, false
		}
		if ev.Delta.Text != "" {
			return ev.Delta.Text, false
		}
		if len(ev.Usage) > 0 && string(ev.Usage) != "null" {
			return "", true
		}
	}
}

// streamAndLeave sends a streamed request over HTTP/1.1 on its own connection, reads `events`
// output events (or, with events < 0, up to the usage chunk) and closes the connection. It
// returns the output events it read and the bytes of their text.
func streamAndLeave(t testing.TB, s *stack, path, user, body string, events int) (served, textBytes int) {
	t.Helper()
	conn, err := net.Dial("tcp", addr(s.listenerPort))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nx-user-id: %s\r\n"+
		"anthropic-version: 2023-06-01\r\nContent-Length: %d\r\n\r\n%s", path, user, len(body), body); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	// The client leaves by closing the connection: closing the body would read the stream to its end.
	resp, err := http.ReadResponse(br, nil) //nolint:bodyclose // closed with the connection
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	sr := sseReader{bufio.NewReader(resp.Body)}
	for events < 0 || served < events {
		text, usage := sr.next(t)
		if usage {
			return served, textBytes
		}
		if text == "" {
			t.Fatalf("stream ended after %d output events, before the client meant to leave", served)
		}
		served++
		textBytes += len(text)
	}
	return served, textBytes
}

func streamBody(model string) string {
	return fmt.Sprintf(`{"model":%q,"stream":true,"messages":[{"role":"user","content":%q}]}`, model, chargingPrompt)
}

// assertEstimateCharged checks what user was charged on model for `streams` streams the client
// left after `served` output events of llmsim's words (textBytes of text), against the
// documented upper bound: never less than the backend generated (the events served, up to two
// more per stream that Envoy had passed on before it saw the client go, and the prompt), at
// most one token per byte of the text served and of those two events, rounded up to a step of
// 64 tokens, plus the prompt's bound (or the prompt count the backend reported, promptReported).
func assertEstimateCharged(t *testing.T, s *stack, user, model string, served, textBytes, streams int, promptReported bool) {
	t.Helper()
	const maxEventBytes = 24 // llmsim's longest word, with its space
	prompt := promptBound
	if promptReported {
		prompt = simInputTokens
	}
	low := served + 2*streams + streams*simInputTokens
	const step = 64 // a broken-off stream's output is rounded up to a multiple of it
	high := textBytes + streams*(2*maxEventBytes+step-1+prompt)
	got := awaitSpent(t, s, user, model, low)
	t.Logf("%d streams left after %d output events (%d bytes of text) in all: %d tokens charged (bounds %d–%d)", streams, served, textBytes, got, low, high)
	if got < low || got > high {
		t.Fatalf("charged %d tokens for %d output events served; want %d–%d", got, served, low, high)
	}
}

// TestClientLeavingMidStreamIsCharged: ten streams whose client reads 3 to 29 of 30 tokens and
// drops the connection are charged what they served, within the documented estimate error.
func TestClientLeavingMidStreamIsCharged(t *testing.T) {
	s := chargingStack(t)
	served, textBytes := 0, 0
	for i := range 10 {
		n, b := streamAndLeave(t, s, "/v1/chat/completions", "leaver", streamBody("qwen3"), 3+i*26/9)
		served, textBytes = served+n, textBytes+b
	}
	assertEstimateCharged(t, s, "leaver", "qwen3", served, textBytes, 10, false)
}

// TestClientLeavingAfterUsageIsChargedExactly: a client that leaves after the usage chunk but
// before [DONE] is charged the reported usage, exactly.
func TestClientLeavingAfterUsageIsChargedExactly(t *testing.T) {
	s := chargingStack(t)
	for range 3 {
		if n, _ := streamAndLeave(t, s, "/v1/chat/completions", "almost", streamBody("qwen3"), -1); n != simOutputTokens {
			t.Fatalf("%d output events before the usage chunk, want %d", n, simOutputTokens)
		}
	}
	want := 3 * (simInputTokens + simOutputTokens)
	if got := awaitSpent(t, s, "almost", "qwen3", want); got != want {
		t.Fatalf("charged %d, want the reported usage %d", got, want)
	}
}

// TestClientLeavingAnthropicStreamIsCharged: the same on /v1/messages, where the prompt count
// arrives first (message_start) and the output count only at the end.
func TestClientLeavingAnthropicStreamIsCharged(t *testing.T) {
	s := chargingStack(t)
	body := fmt.Sprintf(`{"model":"claude","max_tokens":100,"stream":true,"messages":[{"role":"user","content":%q}]}`, chargingPrompt)
	served, textBytes := streamAndLeave(t, s, "/v1/messages", "anthro", body, 10)
	assertEstimateCharged(t, s, "anthro", "claude", served, textBytes, 1, true)
}

// TestClientLeavingHTTP2StreamIsCharged: over HTTP/2 the client resets only its stream, not
// the connection; the charge is the same.
func TestClientLeavingHTTP2StreamIsCharged(t *testing.T) {
	s := chargingStack(t)
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols}}
	defer client.CloseIdleConnections()

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "POST", s.url("/v1/chat/completions"), strings.NewReader(streamBody("qwen3")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-user-id", "h2")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("%s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	sr := sseReader{bufio.NewReader(resp.Body)}
	served, textBytes := 0, 0
	for served < 12 {
		text, _ := sr.next(t)
		if text == "" {
			t.Fatalf("stream ended after %d events", served)
		}
		served++
		textBytes += len(text)
	}
	cancel() // RST_STREAM; the connection stays up
	_ = resp.Body.Close()

	assertEstimateCharged(t, s, "h2", "qwen3", served, textBytes, 1, false)
}

// TestClientTimeoutBeforeAnswerIsCharged: a non-streamed request whose client gives up before
// the backend answers is charged the prompt's bound and the request's whole output ceiling: the
// backend has read the prompt and goes on to answer it, whoever is left to read the answer.
func TestClientTimeoutBeforeAnswerIsCharged(t *testing.T) {
	s := chargingStack(t)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	body := fmt.Sprintf(`{"model":"slowpoke","messages":[{"role":"user","content":%q}]}`, chargingPrompt)
	req, err := http.NewRequest("POST", s.url("/v1/chat/completions"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-user-id", "impatient")
	if resp, err := client.Do(req); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("the slow backend answered within the client's timeout (%d)", resp.StatusCode)
	}
	want := promptBound + int(policies.DefaultMaxOutputTokens) // the request names no max_tokens
	if got := awaitSpent(t, s, "impatient", "slowpoke", 1); got != want {
		t.Fatalf("charged %d, want the prompt's bound and the output ceiling, %d", got, want)
	}
}

// TestStreamInFlightWhenModelRemovedIsCharged: a stream that started before its model was
// removed from the policy is still charged in full when it ends.
func TestStreamInFlightWhenModelRemovedIsCharged(t *testing.T) {
	s := chargingStack(t)
	done := make(chan int, 1)
	go func() {
		r, err := do("POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "inflight"}, streamBody("qwen3"))
		if err != nil {
			done <- 0
			return
		}
		done <- r.status
	}()
	// The stream takes 30 × 40 ms; remove qwen3 while it runs.
	time.Sleep(400 * time.Millisecond)
	without := strings.Replace(strings.Replace(chargingPolicy, "  - {name: qwen3, backend: fast}\n", "", 1),
		"  - {name: qwen3-hourly, model: qwen3, cost: tokens, limit: 1000000, per: hour}\n", "", 1)
	s.writePolicy(t, without)
	var st struct {
		Policy struct {
			Models        []string `json:"models"`
			RetiredQuotas []string `json:"retired_quotas"`
		} `json:"policy"`
	}
	testutil.Eventually(t, 10*time.Second, "qwen3 removed", func() error {
		if err := getJSON(s.metricsURL("/status"), &st); err != nil {
			return err
		}
		if strings.Contains(fmt.Sprint(st.Policy.Models), "qwen3") {
			return fmt.Errorf("models %v", st.Policy.Models)
		}
		return nil
	})
	if status := <-done; status != 200 {
		t.Fatalf("the stream in flight got %d", status)
	}
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "inflight"}, chatBody("qwen3")); r.status != 404 {
		t.Fatalf("a new qwen3 request after the removal got %d, want 404", r.status)
	}
	want := simInputTokens + simOutputTokens
	if got := awaitSpent(t, s, "inflight", "qwen3", want); got != want {
		t.Fatalf("charged %d, want the stream's %d", got, want)
	}
	if len(st.Policy.RetiredQuotas) != 1 || !strings.Contains(st.Policy.RetiredQuotas[0], "qwen3-hourly on qwen3") {
		t.Errorf("tollgate status lists retired quotas %q, want qwen3-hourly", st.Policy.RetiredQuotas)
	}
}
