//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// The abuse tests attack a running gateway the way a hostile client or a broken upstream
// would, through the real Envoy, and check that every attack gets a deliberate answer, that
// nothing falls over, and that no attack buys tokens that are not counted. Each test is bounded
// in requests and time, runs on loopback only, and logs what it measured.

// abusePolicy meters qwen3 and gpt-4, served by two backends so that routing shows in which
// backend answers; its limits are high enough that no abuse test runs into them.
const abusePolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity: {header: x-user-id}
backends:
  - {name: alpha, url: "{{backend:alpha}}"}
  - {name: beta, url: "{{backend:beta}}"}
models:
  - {name: qwen3, backend: alpha}
  - {name: gpt-4, backend: beta}
costs:
  - {name: llm_total_token, type: TotalToken}
quotas:
  - {model: qwen3, cost: llm_total_token, limit: 5000, per: hour}
  - {model: gpt-4, cost: llm_total_token, limit: 5000, per: hour}
`

// defaultMaxRequestBytes is listener.maxRequestBytes when the policy leaves it out.
const defaultMaxRequestBytes = 1 << 20

// TestAbuseHugeRequestBody: a client uploading 1 GiB (generated on the fly, chunked or with a
// content-length) gets a JSON 413 long before it has sent the gigabyte; the ext_proc server
// never sees more than the limit, and Envoy and tollgate keep serving with bounded memory.
func TestAbuseHugeRequestBody(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"alpha": startSim(t, "alpha"), "beta": startSim(t, "beta")})
	s.writePolicy(t, abusePolicy)
	s.startTollgate(t)
	s.startEnvoy(t)
	rssBefore := s.tollgateRSS(t)

	const total = 1 << 30
	for _, chunked := range []bool{true, false} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			extProcBefore := s.envoyStat(t, "cluster.tollgate_extproc.upstream_cx_tx_bytes_total")
			up := uploadGenerated(t, s.listenerPort, map[string]string{"x-user-id": "mallory"},
				`{"model":"qwen3","messages":[{"role":"user","content":"`, total, chunked)
			t.Logf("1 GiB upload: answered %d after %d bytes sent (%.2f%% of the body) in %s; %d bytes sent in all",
				up.status, up.sentAtAnswer, 100*float64(up.sentAtAnswer)/total, up.elapsed.Round(time.Millisecond), up.sentTotal)
			if up.status != 413 {
				t.Fatalf("status %d, want 413: %s", up.status, up.body)
			}
			if e, ok := up.json(t)["error"].(map[string]any); !ok || e["type"] != "invalid_request_error" {
				t.Errorf("413 body: %s", up.body)
			}
			// Early: the answer must come while the client is still far from done. The socket
			// buffers between client and Envoy hold a few MiB at most, so 64 MiB is a generous
			// bound that a gateway reading the whole body would miss by a factor of 16.
			if up.sentAtAnswer > 64<<20 {
				t.Errorf("413 came after %d bytes, want it within the first 64 MiB", up.sentAtAnswer)
			}
			extProcSent := s.envoyStat(t, "cluster.tollgate_extproc.upstream_cx_tx_bytes_total") - extProcBefore
			t.Logf("bytes Envoy sent to the ext_proc server for that request: %d", extProcSent)
			if extProcSent > defaultMaxRequestBytes {
				t.Errorf("Envoy sent the ext_proc server %d bytes, more than the %d byte limit", extProcSent, defaultMaxRequestBytes)
			}
		})
	}

	s.assertServing(t)
	rssAfter := s.tollgateRSS(t)
	t.Logf("tollgate RSS: %.1f MiB before, %.1f MiB after; Envoy: %s",
		float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20), s.envoyMemory(t))
	if rssAfter-rssBefore > 64<<20 {
		t.Errorf("tollgate RSS grew by %d bytes during two 1 GiB uploads", rssAfter-rssBefore)
	}
}

// TestAbuseBodyLimitIsExact: a body of exactly listener.maxRequestBytes is served, one byte
// more is a JSON 413, with and without content-length, at the default limit and at limits the
// policy raises it to: Envoy's buffer limits and the ext_proc server's limit agree, so no size
// slips between them, and a raised limit really admits bodies that large.
func TestAbuseBodyLimitIsExact(t *testing.T) {
	testutil.Envoy(t)
	sim := startSim(t, "alpha")
	for _, limit := range []int{defaultMaxRequestBytes, 4 << 20, 32 << 20} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			s := newStack(t, map[string]int{"alpha": sim, "beta": sim})
			policy := abusePolicy
			if limit != defaultMaxRequestBytes {
				policy = strings.Replace(policy, "listener: {{listener}}",
					fmt.Sprintf("listener: {address: 127.0.0.1, port: {{listener_port}}, maxRequestBytes: %d}", limit), 1)
			}
			s.writePolicy(t, policy)
			s.startTollgate(t)
			s.startEnvoy(t)
			for _, chunked := range []bool{false, true} {
				for _, size := range []int{limit, limit + 1} {
					want := 200
					if size > limit {
						want = 413
					}
					t.Run(fmt.Sprintf("chunked=%v/%d bytes", chunked, size), func(t *testing.T) {
						body := paddedChat("qwen3", size)
						extProcBefore := s.envoyStat(t, "cluster.tollgate_extproc.upstream_cx_tx_bytes_total")
						up := uploadBody(t, s.listenerPort, map[string]string{"x-user-id": "alice"}, body, chunked)
						if up.status != want {
							t.Fatalf("status %d, want %d: %.300s", up.status, want, up.body)
						}
						// The served body reached the ext_proc server whole; the refused one did not.
						extProcSent := s.envoyStat(t, "cluster.tollgate_extproc.upstream_cx_tx_bytes_total") - extProcBefore
						if reached := extProcSent >= size; reached != (want == 200) {
							t.Errorf("Envoy sent the ext_proc server %d bytes for a %d byte body answered %d", extProcSent, size, up.status)
						}
						if want == 200 && up.header.Get("x-llmsim-backend") != "alpha" {
							t.Errorf("served by %q, want alpha", up.header.Get("x-llmsim-backend"))
						}
						if want == 413 {
							if e, ok := up.json(t)["error"].(map[string]any); !ok || e["type"] != "invalid_request_error" {
								t.Errorf("413 body: %s", up.body)
							}
						}
					})
				}
			}
		})
	}
}

// TestAbuseDeeplyNestedJSON: bodies nested a million levels deep (within the size limit) get a
// JSON 400 after a bounded amount of work, and the gateway keeps serving.
func TestAbuseDeeplyNestedJSON(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"alpha": startSim(t, "alpha"), "beta": startSim(t, "beta")})
	s.writePolicy(t, abusePolicy)
	s.startTollgate(t)
	s.startEnvoy(t)

	const deep = 1_000_000
	objectDepth := (defaultMaxRequestBytes - 64) / len(`{"a":}`)
	cases := []struct {
		name string
		body string
	}{
		{"top-level array 1e6 deep", strings.Repeat("[", deep)},
		{"messages array 1e6 deep", `{"model":"qwen3","messages":` + strings.Repeat("[", deep)},
		{fmt.Sprintf(`{"a": object %d deep`, objectDepth), strings.Repeat(`{"a":`, objectDepth) + "1" + strings.Repeat("}", objectDepth)},
		{"model after 100 levels", `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,"model":"qwen3"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if len(c.body) > defaultMaxRequestBytes {
				t.Fatalf("body of %d bytes is over the limit; the case must test nesting, not size", len(c.body))
			}
			start := time.Now()
			r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "mallory"}, c.body)
			t.Logf("%d bytes: %d in %s: %s", len(c.body), r.status, time.Since(start).Round(time.Millisecond), r.body)
			if r.status != 400 {
				t.Fatalf("status %d, want 400", r.status)
			}
			if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "invalid_request_error" {
				t.Errorf("400 body: %s", r.body)
			}
		})
	}
	s.assertServing(t)
	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	if got := metricValue(metrics, "tollgate_extproc_requests_total", `outcome="rejected_400"`); got != fmt.Sprint(len(cases)) {
		t.Errorf("ext_proc counted %q rejected_400 outcomes, want %d", got, len(cases))
	}
}

// TestAbuseMalformedUpstreamStreams: a backend that sends junk between events, an event over
// the 1 MiB event cap, a last event that is never terminated, or that dies before its usage
// chunk never hangs the client and never takes tollgate down. Usage is charged when it can be
// read; when it cannot, the gap is logged, counted in tollgate_usage_missing_total, and an
// upper bound of what was served is charged: the prompt's 6 bytes of strings plus 8 for the
// framing, and one token per byte of the output text served, or the whole output ceiling when
// none could be read.
func TestAbuseMalformedUpstreamStreams(t *testing.T) {
	// Tokens 20 ms apart: a stream cut after its third token has surely sent its headers
	// through Envoy to the client by then.
	s, redisAddr := abuseQuotaStack(t, "--token-delay", "20ms")
	cases := []struct {
		name, user string
		knob       [2]string
		// cleanEnd says the body ends normally; otherwise the client sees the connection drop.
		cleanEnd   bool
		wantDone   bool   // the client receives [DONE]
		wantCharge int    // tokens charged to the user
		estimated  bool   // the charge is an estimate: no usage could be read
		wantLog    string // what tollgate logs about the answer
	}{
		{"garbage between events", "junk", [2]string{"x-llmsim-sse-fault", "garbage"}, true, true, 12, false, ""},
		// The oversized event comes first: the parser stops before any output, so the request
		// is charged its output ceiling (it names none: the policy's default).
		{"event over the cap", "bloat", [2]string{"x-llmsim-sse-fault", "oversize-event"}, true, true, 14 + int(policies.DefaultMaxOutputTokens), true,
			"cannot parse response stream"},
		// Six output events of llmsim's words (35 bytes of text).
		{"last event never terminated", "dangle", [2]string{"x-llmsim-sse-fault", "unterminated"}, true, false, 14 + 35, true,
			"successful response without token usage; charging an estimate"},
		// Three output events (14 bytes of text), of a stream broken off: rounded up to a step
		// of 64 tokens.
		{"cut before the usage chunk", "cut", [2]string{"x-llmsim-cut-after", "3"}, false, false, 14 + 64, true,
			"response broke off before its final usage; charging what was served"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
			calls := s.rateLimitCalls(t)

			start := time.Now()
			st := streamChat(t, s, c.user, map[string]string{c.knob[0]: c.knob[1]})
			t.Logf("status %d, %d bytes in %s, ended with %v", st.status, len(st.body), time.Since(start).Round(time.Millisecond), st.err)
			if st.status != 200 {
				t.Fatalf("status %d: %.300s", st.status, st.body)
			}
			if errors.Is(st.err, context.DeadlineExceeded) {
				t.Fatalf("the client's stream hung until its timeout")
			}
			if c.cleanEnd && st.err != nil {
				t.Errorf("stream ended with %v, want a clean end", st.err)
			}
			if !c.cleanEnd && st.err == nil {
				t.Errorf("stream ended cleanly although the backend died mid-answer")
			}
			if got := strings.Contains(string(st.body), "data: [DONE]"); got != c.wantDone {
				t.Errorf("client got [DONE]: %v, want %v", got, c.wantDone)
			}

			// The request was checked (one call); the charge is a second call.
			s.awaitRateLimitCalls(t, calls+2)
			charged, err := redisCounter(redisAddr, "*user_"+c.user+"_*")
			if err != nil {
				t.Fatal(err)
			}
			if charged != c.wantCharge {
				t.Errorf("%d tokens charged, want %d", charged, c.wantCharge)
			}

			var after string
			testutil.Eventually(t, 10*time.Second, "tollgate records the outcome", func() error {
				after = string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
				if metricDelta(before, after, "tollgate_extproc_requests_total") < 1 {
					return errors.New("no outcome yet")
				}
				return nil
			})
			missing := metricDelta(before, after, "tollgate_usage_missing_total", `model="qwen3"`)
			t.Logf("outcomes: %s; usage missing +%v", outcomeDeltas(before, after), missing)
			wantMissing := 0.0
			if c.estimated {
				wantMissing = 1 // every answer without readable usage is a gap, and must be counted as one
			}
			if missing != wantMissing {
				t.Errorf("tollgate_usage_missing_total grew by %v, want %v", missing, wantMissing)
			}
			if c.wantLog != "" && !strings.Contains(s.tollgate.logText(), c.wantLog) {
				t.Errorf("tollgate did not log %q", c.wantLog)
			}
		})
	}
	s.assertServing(t)
	t.Logf("after the malformed streams: tollgate RSS %.1f MiB; Envoy %s", float64(s.tollgateRSS(t))/(1<<20), s.envoyMemory(t))
}

// TestAbuseBrokenUpstream: a backend that answers with bytes that are not HTTP makes Envoy
// answer 502 itself; the client gets the same OpenAI-style JSON error as for every other
// gateway failure, and nothing is charged.
func TestAbuseBrokenUpstream(t *testing.T) {
	testutil.Envoy(t)
	broken := garbageServer(t, "this is not HTTP\r\n\r\n")
	s := newStack(t, map[string]int{"alpha": broken, "beta": startSim(t, "beta")})
	s.writePolicy(t, abusePolicy)
	s.startTollgate(t)
	s.startEnvoy(t)

	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
	t.Logf("%d %s: %s", r.status, r.header.Get("content-type"), r.body)
	if r.status != 502 {
		t.Fatalf("status %d, want 502", r.status)
	}
	if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "bad_gateway" {
		t.Errorf("502 body: %s", r.body)
	}
	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	if got := metricValue(metrics, "tollgate_extproc_requests_total", `outcome="error_status"`); got != "1" {
		t.Errorf("ext_proc recorded %q error_status outcomes, want 1 (the 502 is not charged)", got)
	}
	s.assertServingModel(t, "gpt-4")
}

// garbageServer accepts connections, reads a little, answers reply and closes; it returns its
// port.
func garbageServer(t testing.TB, reply string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = c.Read(make([]byte, 4096))
				_, _ = io.WriteString(c, reply)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// TestAbuseSlowClients: a client that sends its headers a byte at a time is cut off by the
// 10 s request_headers_timeout, while a healthy stream that takes about 20 s (200 tokens 100 ms
// apart) runs to its end: neither the route timeout (300 s) nor the stream idle timeout (5 min)
// cuts a long answer that keeps moving. Both run at the same time.
func TestAbuseSlowClients(t *testing.T) {
	s, redisAddr := abuseQuotaStack(t, "--token-delay", "100ms")

	t.Run("headers a byte at a time", func(t *testing.T) {
		t.Parallel()
		conn, err := net.DialTimeout("tcp", addr(s.listenerPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close() }()
		type answer struct {
			status int
			body   string
			err    error
			after  time.Duration
		}
		answered := make(chan answer, 1)
		start := time.Now()
		if _, err := io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"); err != nil {
			t.Fatal(err)
		}
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			a := answer{err: err}
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				a.status, a.body = resp.StatusCode, string(b)
			}
			a.after = time.Since(start)
			answered <- a
		}()
		// 60 header bytes, one every 500 ms: 30 s if nobody stops it, three times the timeout.
		trickle := []byte("x-user-id: slowloris\r\ncontent-type: application/json\r\nx-pad: 0123456789\r\n")[:60]
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		sent := 0
		var a answer
	trickling:
		for {
			select {
			case a = <-answered:
				break trickling
			case <-tick.C:
				if sent == len(trickle) {
					t.Fatalf("sent all %d header bytes over %s and the gateway is still waiting", sent, time.Since(start).Round(time.Second))
				}
				if _, err := conn.Write(trickle[sent : sent+1]); err != nil {
					a = <-answered // the gateway closed the connection; its answer (if any) is on the way
					break trickling
				}
				sent++
			}
		}
		t.Logf("cut off after %s and %d of %d trickled header bytes: status %d %q (read error %v)",
			a.after.Round(time.Millisecond), sent, len(trickle), a.status, a.body, a.err)
		if a.err != nil {
			t.Fatalf("the gateway closed the connection without an answer: %v", a.err)
		}
		if a.status != http.StatusRequestTimeout {
			t.Fatalf("status %d, want 408", a.status)
		}
		var body struct {
			Error struct{ Type string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(a.body), &body); err != nil || body.Error.Type != "invalid_request_error" {
			t.Errorf("408 body is not an OpenAI-style JSON error: %q", a.body)
		}
	})

	t.Run("long healthy stream", func(t *testing.T) {
		t.Parallel()
		const tokens = 200
		start := time.Now()
		st := streamChat(t, s, "patient", map[string]string{"x-llmsim-output-tokens": strconv.Itoa(tokens)})
		took := time.Since(start)
		t.Logf("%d-token stream: status %d, %d bytes in %s, ended with %v", tokens, st.status, len(st.body), took.Round(time.Millisecond), st.err)
		if st.status != 200 || st.err != nil {
			t.Fatalf("status %d, error %v", st.status, st.err)
		}
		if !strings.Contains(string(st.body), "data: [DONE]") {
			t.Fatalf("stream ended without [DONE]")
		}
		if n := strings.Count(string(st.body), `"content":`); n != tokens {
			t.Errorf("%d content events, want %d", n, tokens)
		}
		testutil.Eventually(t, 10*time.Second, "the long stream is charged", func() error {
			n, err := redisCounter(redisAddr, "*user_patient_*")
			if err != nil {
				return err
			}
			if n != 6+tokens {
				return fmt.Errorf("charged %d, want %d", n, 6+tokens)
			}
			return nil
		})
	})
}

// TestAbuseSpoofedHeaders: headers a client sets to steer the gateway are never honoured. A
// model header that disagrees with the body is overwritten (routed and charged as the body's
// model, and the backend sees only the body's), a client's x-envoy-original-path shows up
// neither in the access log nor at the backend, and a duplicated identity header is refused
// before anything is checked or charged.
func TestAbuseSpoofedHeaders(t *testing.T) {
	s, redisAddr := abuseQuotaStack(t)
	echo := "x-ai-eg-model, x-envoy-original-path, x-user-id"

	t.Run("model header disagrees with the body", func(t *testing.T) {
		req := chatRequest(t, s, chatBody("qwen3"))
		req.Header.Set("x-user-id", "spoofer")
		req.Header.Set("x-llmsim-echo-headers", echo)
		// Two values, both naming the cheaper-looking model on the other backend.
		req.Header.Add("x-ai-eg-model", "gpt-4")
		req.Header.Add("x-ai-eg-model", "gpt-4")
		calls := s.rateLimitCalls(t)
		r := doRequest(t, req)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if got := r.header.Get("x-llmsim-backend"); got != "alpha" {
			t.Errorf("served by %q, want alpha (qwen3's backend, from the body)", got)
		}
		if got := r.header.Values("x-llmsim-echo-x-ai-eg-model"); strings.Join(got, ",") != "qwen3" {
			t.Errorf("backend saw model header %q, want only the body's qwen3", got)
		}
		s.awaitRateLimitCalls(t, calls+2)
		keys, err := redisKeys(redisAddr, "*user_spoofer_*")
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || !strings.Contains(keys[0], "qwen3") {
			t.Fatalf("spoofer's counters %q, want one qwen3 counter", keys)
		}
		if n, _ := redisCounter(redisAddr, keys[0]); n != 12 {
			t.Errorf("qwen3 counter %d, want 12", n)
		}
	})

	t.Run("client-sent x-envoy-original-path", func(t *testing.T) {
		req := chatRequest(t, s, chatBody("qwen3"))
		req.Header.Set("x-user-id", "pathspoofer")
		req.Header.Set("x-llmsim-echo-headers", echo)
		req.Header.Set("x-envoy-original-path", "/admin/innocent")
		calls := s.rateLimitCalls(t)
		r := doRequest(t, req)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		// Its check and its charge, so that the next subtest counts only its own calls.
		s.awaitRateLimitCalls(t, calls+2)
		if got := r.header.Values("x-llmsim-echo-x-envoy-original-path"); len(got) != 0 {
			t.Errorf("backend received the client's x-envoy-original-path %q", got)
		}
	})

	t.Run("duplicated identity header", func(t *testing.T) {
		for _, users := range [][]string{{"alice", "bob"}, {"alice", "alice"}} {
			req := chatRequest(t, s, chatBody("qwen3"))
			for _, u := range users {
				req.Header.Add("x-user-id", u)
			}
			calls := s.rateLimitCalls(t)
			r := doRequest(t, req)
			if r.status != 400 {
				t.Fatalf("x-user-id %q: status %d, want 400: %s", users, r.status, r.body)
			}
			if e, ok := r.json(t)["error"].(map[string]any); !ok || e["code"] != "ambiguous_user" {
				t.Errorf("x-user-id %q: body %s", users, r.body)
			}
			if got := s.rateLimitCalls(t); got != calls {
				t.Errorf("x-user-id %q: %d ratelimit calls for a refused request", users, got-calls)
			}
		}
	})

	// Envoy flushes its access log every few seconds, so both lines are awaited together.
	entries := s.accessLogEntries(t, "spoofer", "pathspoofer")
	if e := entries["spoofer"]; e["model"] != "qwen3" || e["route"] != "model_qwen3" {
		t.Errorf("access log of the model spoof: model %v route %v, want qwen3", e["model"], e["route"])
	}
	if path := entries["pathspoofer"]["path"]; path != "/v1/chat/completions" {
		t.Errorf("access log path %v, want the real /v1/chat/completions", path)
	}
}

// TestAbuseRandomUserCardinality: in header identity mode every distinct user id is a user, so
// a client inventing ids makes the ratelimit service keep one Redis counter per id and quota
// window. This measures what that costs (keys, Redis memory, ratelimit service memory) for
// randomUsers ids, and checks that the cost stays in Redis, bounded by the window: one key per
// user per quota, each expiring with its window, and no per-user series in tollgate's metrics or
// Envoy's stats.
func TestAbuseRandomUserCardinality(t *testing.T) {
	const randomUsers, concurrency = 2000, 8
	s, redisAddr, rls := abuseQuotaStackWithRateLimit(t)

	keysBefore := redisInt(t, redisAddr, "DBSIZE")
	memBefore := redisInfoInt(t, redisAddr, "memory", "used_memory")
	rlsBefore := processRSS(t, rls)
	calls := s.rateLimitCalls(t)

	users := make([]string, randomUsers)
	for i := range users {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		users[i] = "rnd-" + hex.EncodeToString(b)
	}
	start := time.Now()
	statuses := hammer(t, randomUsers, concurrency, func(c *http.Client, i int) (int, error) {
		return statusOf(c, s.url("/v1/chat/completions"), chatBody("qwen3"), "x-user-id", users[i])
	})
	took := time.Since(start)
	if statuses[200] != randomUsers {
		t.Fatalf("statuses %v, want %d × 200", statuses, randomUsers)
	}
	// Every request was checked and then charged: two calls each.
	s.awaitRateLimitCalls(t, calls+2*randomUsers)

	keysAdded := redisInt(t, redisAddr, "DBSIZE") - keysBefore
	memAdded := redisInfoInt(t, redisAddr, "memory", "used_memory") - memBefore
	rlsAfter := processRSS(t, rls)
	t.Logf("%d random users in %s (%.0f req/s): %d new Redis keys, Redis used_memory +%.1f KiB (%.0f bytes per user); "+
		"ratelimit service RSS %.1f → %.1f MiB; tollgate RSS %.1f MiB; Envoy %s",
		randomUsers, took.Round(time.Millisecond), randomUsers/took.Seconds(), keysAdded, float64(memAdded)/1024,
		float64(memAdded)/randomUsers, float64(rlsBefore)/(1<<20), float64(rlsAfter)/(1<<20),
		float64(s.tollgateRSS(t))/(1<<20), s.envoyMemory(t))
	// One qwen3 quota with one window: exactly one counter per user, no more.
	if keysAdded != randomUsers {
		t.Errorf("%d new Redis keys for %d users with one quota each, want %d", keysAdded, randomUsers, randomUsers)
	}
	keys, err := redisKeys(redisAddr, "*user_"+users[0]+"_*")
	if err != nil || len(keys) != 1 {
		t.Fatalf("counters of one random user: %q (%v)", keys, err)
	}
	// The service expires a counter with its window, plus up to 300 s of jitter (its
	// EXPIRATION_JITTER_MAX_SECONDS default) so that counters do not all expire at once.
	if ttl := redisInt(t, redisAddr, "TTL", keys[0]); ttl <= 0 || ttl > 3600+300 {
		t.Errorf("a random user's counter has TTL %d s; it must expire with its hour window", ttl)
	} else {
		t.Logf("a random user's counter expires in %d s", ttl)
	}

	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	stats := string(mustDo(t, "GET", s.adminURL("/stats"), nil, "").body)
	for _, u := range users[:50] {
		if strings.Contains(metrics, u) {
			t.Fatalf("tollgate's metrics name user %s: the user label must stay opt-in", u)
		}
		if strings.Contains(stats, u) {
			t.Fatalf("Envoy's stats name user %s", u)
		}
	}
}

// TestAbuseRandomAPIKeysNeverReachRedis: in apiKeys identity mode an invented key is refused
// by the ext_proc server (401) before the quota check, so randomKeys random keys add no
// Redis key and no ratelimit call at all; a known key still works, and is charged to its own
// user whatever x-user-id the client adds.
func TestAbuseRandomAPIKeysNeverReachRedis(t *testing.T) {
	const concurrency = 16
	randomKeys := 100_000
	if testing.Short() {
		randomKeys = 10_000
	}
	testutil.Envoy(t)
	sum := sha256.Sum256([]byte("sk-alice-abuse-test"))
	policy := strings.Replace(abusePolicy, "identity: {header: x-user-id}",
		"identity:\n  mode: apiKeys\n  apiKeys: [{user: alice, sha256: "+hex.EncodeToString(sum[:])+"}]", 1)
	s := newStack(t, map[string]int{"alpha": startSim(t, "alpha"), "beta": startSim(t, "beta")})
	s.writePolicy(t, policy)
	s.startTollgate(t)
	redisAddr := s.startRedis(t)
	rls := s.startRateLimit(t, redisAddr)
	s.startEnvoy(t)

	keysBefore := redisInt(t, redisAddr, "DBSIZE")
	calls := s.rateLimitCalls(t)
	rlsBefore := processRSS(t, rls)
	start := time.Now()
	statuses := hammer(t, randomKeys, concurrency, func(c *http.Client, i int) (int, error) {
		key := make([]byte, 16)
		if _, err := rand.Read(key); err != nil {
			return 0, err
		}
		// A victim's id next to an invented key changes nothing.
		return statusOf(c, s.url("/v1/chat/completions"), chatBody("qwen3"),
			"authorization", "Bearer sk-"+hex.EncodeToString(key), "x-user-id", "alice")
	})
	took := time.Since(start)
	t.Logf("%d random API keys in %s (%.0f req/s): statuses %v; Redis keys %d → %d; ratelimit calls +%d; ratelimit service RSS %.1f → %.1f MiB; tollgate RSS %.1f MiB",
		randomKeys, took.Round(time.Millisecond), float64(randomKeys)/took.Seconds(), statuses, keysBefore, redisInt(t, redisAddr, "DBSIZE"),
		s.rateLimitCalls(t)-calls, float64(rlsBefore)/(1<<20), float64(processRSS(t, rls))/(1<<20), float64(s.tollgateRSS(t))/(1<<20))
	if statuses[401] != randomKeys {
		t.Errorf("statuses %v, want %d × 401", statuses, randomKeys)
	}
	if got := redisInt(t, redisAddr, "DBSIZE"); got != keysBefore {
		t.Errorf("Redis keys %d → %d: random keys reached the ratelimit service", keysBefore, got)
	}
	if got := s.rateLimitCalls(t); got != calls {
		t.Errorf("%d ratelimit calls for requests with invented keys, want none", got-calls)
	}

	// alice's real key, with a spoofed x-user-id: served, and charged to alice alone.
	req := chatRequest(t, s, chatBody("qwen3"))
	req.Header.Set("authorization", "Bearer sk-alice-abuse-test")
	req.Header.Set("x-user-id", "victim")
	if r := doRequest(t, req); r.status != 200 {
		t.Fatalf("alice's key: status %d: %s", r.status, r.body)
	}
	s.awaitRateLimitCalls(t, calls+2)
	if keys, err := redisKeys(redisAddr, "*"); err != nil || len(keys) != 1 || !strings.Contains(keys[0], "user_alice_") {
		t.Errorf("Redis keys after alice's request: %q (%v), want alice's one counter", keys, err)
	}
}

// hammer runs n requests over concurrency keep-alive connections and counts their statuses;
// transport errors fail the test.
func hammer(t testing.TB, n, concurrency int, request func(c *http.Client, i int) (int, error)) map[int]int {
	t.Helper()
	transport := &http.Transport{MaxIdleConnsPerHost: concurrency, DisableCompression: true}
	defer transport.CloseIdleConnections()
	c := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
		failures atomic.Int64
	)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				status, err := request(c, i)
				if err != nil {
					if failures.Add(1) <= 3 {
						t.Errorf("request %d: %v", i, err)
					}
					continue
				}
				mu.Lock()
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d requests failed", failures.Load(), n)
	}
	return statuses
}

// statusOf POSTs a JSON body with header pairs ("name", "value", ...), drains the answer (so
// the connection is reused) and returns its status.
func statusOf(c *http.Client, url, body string, headerPairs ...string) (int, error) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("content-type", "application/json")
	for i := 0; i+1 < len(headerPairs); i += 2 {
		req.Header.Set(headerPairs[i], headerPairs[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// redisInt runs a command with an integer reply.
func redisInt(t testing.TB, addr string, args ...string) int64 {
	t.Helper()
	out, err := redisDo(addr, args...)
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("redis %v: %q is not an integer", args, out)
	}
	return n
}

// redisInfoInt reads one integer field of a section of Redis's INFO.
func redisInfoInt(t testing.TB, addr, section, field string) int64 {
	t.Helper()
	out, err := redisDo(addr, "INFO", section)
	if err != nil {
		t.Fatalf("redis INFO %s: %v", section, err)
	}
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO %s: %q", field, v)
			}
			return n
		}
	}
	t.Fatalf("INFO %s has no %s", section, field)
	return 0
}

// processRSS reads a child process's resident memory from /proc; it is only ever logged, so
// where /proc is missing it logs that and returns 0.
func processRSS(t testing.TB, p *process) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.child.Pid()))
	if err != nil {
		t.Logf("cannot read %s's memory: %v", p.name, err)
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q", v)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for %s", p.name)
	return 0
}

// chatRequest builds a chat POST to the stack's listener; the caller sets the headers.
func chatRequest(t testing.TB, s *stack, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest("POST", s.url("/v1/chat/completions"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	return req
}

// doRequest runs req with the shared client and reads the whole answer.
func doRequest(t testing.TB, req *http.Request) response {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// accessLogEntries waits for exactly one access log line of each user's request and returns
// them by user. Envoy flushes its access log every 10 s by default; the wait allows for that.
func (s *stack) accessLogEntries(t testing.TB, users ...string) map[string]map[string]any {
	t.Helper()
	var found map[string][]map[string]any
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("access log lines of %q", users), func() error {
		found = map[string][]map[string]any{}
		for _, line := range strings.Split(s.envoy.logText(), "\n") {
			var e map[string]any
			if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil {
				if u, ok := e["user"].(string); ok {
					found[u] = append(found[u], e)
				}
			}
		}
		for _, u := range users {
			if len(found[u]) != 1 {
				return fmt.Errorf("%d lines for %s", len(found[u]), u)
			}
		}
		return nil
	})
	out := map[string]map[string]any{}
	for _, u := range users {
		out[u] = found[u][0]
	}
	return out
}

// redisDo sends one command and returns its reply: a status, integer or bulk string as text,
// an array as its elements joined by newlines.
func redisDo(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var cmd strings.Builder
	fmt.Fprintf(&cmd, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&cmd, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, cmd.String()); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

func readReply(r *bufio.Reader) (string, error) {
	head, err := readLine(r)
	if err != nil {
		return "", err
	}
	if head == "" {
		return "", errors.New("empty reply")
	}
	switch head[0] {
	case '+', ':':
		return head[1:], nil
	case '-':
		return "", errors.New(head[1:])
	case '$':
		n, err := strconv.Atoi(head[1:])
		if err != nil || n < 0 {
			return "", err
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(head[1:])
		if err != nil {
			return "", err
		}
		items := make([]string, 0, max(n, 0))
		for range n {
			item, err := readReply(r)
			if err != nil {
				return "", err
			}
			items = append(items, item)
		}
		return strings.Join(items, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", head)
}

// redisKeys lists the keys matching pattern.
func redisKeys(addr, pattern string) ([]string, error) {
	out, err := redisDo(addr, "KEYS", pattern)
	if err != nil || out == "" {
		return nil, err
	}
	return strings.Split(out, "\n"), nil
}

// abuseQuotaStack runs the whole gateway on abusePolicy: two llmsims, Redis, tollgate serve,
// tollgate ratelimit, Envoy. It returns Redis's address for reading counters.
func abuseQuotaStack(t testing.TB, simArgs ...string) (*stack, string) {
	t.Helper()
	s, redisAddr, _ := abuseQuotaStackWithRateLimit(t, simArgs...)
	return s, redisAddr
}

// abuseQuotaStackWithRateLimit is abuseQuotaStack that also hands back the ratelimit service.
func abuseQuotaStackWithRateLimit(t testing.TB, simArgs ...string) (*stack, string, *process) {
	t.Helper()
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"alpha": startSim(t, "alpha", simArgs...), "beta": startSim(t, "beta", simArgs...)})
	s.writePolicy(t, abusePolicy)
	s.startTollgate(t)
	redisAddr := s.startRedis(t)
	rls := s.startRateLimit(t, redisAddr)
	s.startEnvoy(t)
	return s, redisAddr, rls
}

// streamResult is a streamed answer read until it ended, however it ended.
type streamResult struct {
	status int
	header http.Header
	body   []byte
	err    error // what ended the body: nil for a clean end
}

// streamChat sends a streaming qwen3 chat request and reads the answer to its end, bounded by a
// client timeout so a hung stream fails the test instead of hanging it.
func streamChat(t testing.TB, s *stack, user string, header map[string]string) streamResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	req, err := http.NewRequestWithContext(ctx, "POST", s.url("/v1/chat/completions"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-user-id", user)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatalf("streaming request: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return streamResult{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// metricDelta is how much the samples of name matching every matcher grew between two scrapes.
func metricDelta(before, after, name string, matchers ...string) float64 {
	value := func(text string) float64 {
		v, _ := strconv.ParseFloat(metricValue(text, name, matchers...), 64)
		return v
	}
	return value(after) - value(before)
}

// outcomeDeltas lists the ext_proc outcomes that grew between two scrapes.
func outcomeDeltas(before, after string) string {
	var out []string
	for _, o := range []string{"ok", "usage_missing", "error_status", "passthrough", "cancelled",
		"rejected_400", "rejected_401", "rejected_413"} {
		if d := metricDelta(before, after, "tollgate_extproc_requests_total", `outcome="`+o+`"`); d != 0 {
			out = append(out, fmt.Sprintf("%s +%v", o, d))
		}
	}
	return strings.Join(out, ", ")
}

// paddedChat returns a chat request for model of exactly size bytes.
func paddedChat(model string, size int) string {
	head := `{"model":"` + model + `","messages":[{"role":"user","content":"`
	const tail = `"}]}`
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

// assertServing checks that Envoy is ready, tollgate healthy, and a normal request still served.
func (s *stack) assertServing(t testing.TB) {
	t.Helper()
	s.assertServingModel(t, "qwen3")
}

// assertServingModel is assertServing with a request for model.
func (s *stack) assertServingModel(t testing.TB, model string) {
	t.Helper()
	if r := mustDo(t, "GET", s.adminURL("/ready"), nil, ""); r.status != 200 {
		t.Errorf("Envoy not ready: %d %s", r.status, r.body)
	}
	if r := mustDo(t, "GET", s.metricsURL("/healthz"), nil, ""); r.status != 200 {
		t.Errorf("tollgate not healthy: %d %s", r.status, r.body)
	}
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody(model)); r.status != 200 {
		t.Errorf("a normal request after the attack: %d %s", r.status, r.body)
	}
	for _, p := range []*process{s.envoy, s.tollgate} {
		select {
		case <-p.done:
			t.Errorf("%s exited", p.name)
		default:
		}
	}
}

// tollgateRSS reads tollgate's resident memory from its own metrics.
func (s *stack) tollgateRSS(t testing.TB) int64 {
	t.Helper()
	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	v, err := strconv.ParseFloat(metricValue(metrics, "process_resident_memory_bytes"), 64)
	if err != nil {
		t.Fatalf("no process_resident_memory_bytes in tollgate's metrics: %v", err)
	}
	return int64(v)
}

// envoyStat reads one counter from Envoy's admin /stats.
func (s *stack) envoyStat(t testing.TB, name string) int {
	t.Helper()
	stats := string(mustDo(t, "GET", s.adminURL("/stats?filter=^"+name+"$"), nil, "").body)
	return statValue(stats, name)
}

// envoyMemory summarises Envoy's admin /memory.
func (s *stack) envoyMemory(t testing.TB) string {
	t.Helper()
	var m struct {
		Allocated string `json:"allocated"`
		HeapSize  string `json:"heap_size"`
	}
	if err := json.Unmarshal(mustDo(t, "GET", s.adminURL("/memory"), nil, "").body, &m); err != nil {
		t.Fatalf("Envoy /memory: %v", err)
	}
	mib := func(v string) string {
		n, _ := strconv.ParseFloat(v, 64)
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	}
	return "allocated " + mib(m.Allocated) + ", heap " + mib(m.HeapSize)
}

// uploadResult is what a raw upload saw.
type uploadResult struct {
	response
	sentAtAnswer int64 // body bytes written when the status line arrived
	sentTotal    int64 // body bytes written in all
	elapsed      time.Duration
}

// uploadGenerated POSTs prefix followed by 'x' bytes, total bytes in all, chunked or with a
// content-length, over a raw connection: the body is generated as it is written, and the answer
// is read while the upload is still going, as a client with a huge file would see it.
func uploadGenerated(t testing.TB, port int, header map[string]string, prefix string, total int64, chunked bool) uploadResult {
	t.Helper()
	return rawUpload(t, port, header, chunked, total, func(w io.Writer, sent *atomic.Int64) error {
		write := func(p []byte) error {
			var err error
			if chunked {
				_, err = fmt.Fprintf(w, "%x\r\n%s\r\n", len(p), p)
			} else {
				_, err = w.Write(p)
			}
			if err == nil {
				sent.Add(int64(len(p)))
			}
			return err
		}
		if err := write([]byte(prefix)); err != nil {
			return err
		}
		filler := []byte(strings.Repeat("x", 64<<10))
		for left := total - int64(len(prefix)); left > 0; {
			n := min(int64(len(filler)), left)
			if err := write(filler[:n]); err != nil {
				return err
			}
			left -= n
		}
		if chunked {
			_, err := io.WriteString(w, "0\r\n\r\n")
			return err
		}
		return nil
	})
}

// uploadBody POSTs body over a raw connection, with content-length or as two chunks.
func uploadBody(t testing.TB, port int, header map[string]string, body string, chunked bool) uploadResult {
	t.Helper()
	return rawUpload(t, port, header, chunked, int64(len(body)), func(w io.Writer, sent *atomic.Int64) error {
		if !chunked {
			_, err := io.WriteString(w, body)
			sent.Add(int64(len(body)))
			return err
		}
		half := len(body) / 2
		for _, part := range []string{body[:half], body[half:]} {
			if _, err := fmt.Fprintf(w, "%x\r\n%s\r\n", len(part), part); err != nil {
				return err
			}
			sent.Add(int64(len(part)))
		}
		_, err := io.WriteString(w, "0\r\n\r\n")
		return err
	})
}

// rawUpload writes a request head and runs writeBody concurrently with reading the answer.
func rawUpload(t testing.TB, port int, header map[string]string, chunked bool, length int64,
	writeBody func(io.Writer, *atomic.Int64) error) uploadResult {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	// A guard, not a measurement: nothing here should take more than a few seconds.
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))

	var head strings.Builder
	head.WriteString("POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n")
	if chunked {
		head.WriteString("Transfer-Encoding: chunked\r\n")
	} else {
		fmt.Fprintf(&head, "Content-Length: %d\r\n", length)
	}
	for k, v := range header {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	head.WriteString("\r\n")

	start := time.Now()
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	written := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(conn, 64<<10)
		err := writeBody(w, &sent)
		if err == nil {
			err = w.Flush()
		}
		written <- err
	}()

	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer after %d body bytes: %v", sent.Load(), err)
	}
	res := uploadResult{sentAtAnswer: sent.Load(), elapsed: time.Since(start)}
	res.status, res.header = resp.StatusCode, resp.Header
	res.body, err = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	// The writer stops when the gateway closes the connection; closing it ourselves ends the
	// upload if the gateway kept reading.
	_ = conn.Close()
	if err := <-written; err != nil && !isConnClosed(err) {
		t.Logf("upload ended with %v", err)
	}
	res.sentTotal = sent.Load()
	return res
}

func isConnClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}
