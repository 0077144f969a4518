//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// overloadPolicy bounds the gateway's requests in flight at inFlight; qwen3's hourly quota is
// far from spent, so every refusal below is the gateway's own.
func overloadPolicy(inFlight int) string {
	p := headerPolicy(`models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {name: qwen3-hourly, model: qwen3, cost: tokens, limit: 1000000, per: hour}
`)
	p = strings.Replace(p, "listener: {{listener}}",
		fmt.Sprintf("listener: {address: 127.0.0.1, port: {{listener_port}}, maxConcurrentRequests: %d}", inFlight), 1)
	return strings.Replace(p, "timeout: 1s}", "timeout: 1s, failureMode: closed}", 1)
}

// outcome is what one request got.
type outcome struct {
	resp response
	err  error
}

// sendConcurrently sends n chat requests of user at once, request i to gateways[i mod len],
// and returns what each got.
func sendConcurrently(user string, n int, gateways ...*stack) []outcome {
	out := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := gateways[i%len(gateways)]
			out[i].resp, out[i].err = do("POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user}, chatBody("qwen3"))
		}()
	}
	wg.Wait()
	return out
}

// tally checks every outcome is a 200 or a JSON 503 with Retry-After and the error code
// wantCode, and returns the 200s' total tokens and how many of each there were.
func tally(t *testing.T, outcomes []outcome, wantCode string) (tokens, ok, refused int) {
	t.Helper()
	for _, o := range outcomes {
		if o.err != nil {
			t.Fatalf("a request got no answer: %v", o.err)
		}
		switch o.resp.status {
		case 200:
			ok++
			usage, _ := o.resp.json(t)["usage"].(map[string]any)
			total, _ := usage["total_tokens"].(float64)
			if total <= 0 {
				t.Fatalf("a 200 without usage: %s", o.resp.body)
			}
			tokens += int(total)
		case 503:
			refused++
			e, _ := o.resp.json(t)["error"].(map[string]any)
			if e["code"] != wantCode || e["type"] != "service_unavailable" {
				t.Errorf("503 error %v, want code %q", e, wantCode)
			}
			if o.resp.header.Get("Retry-After") == "" {
				t.Errorf("a 503 without Retry-After: %v", o.resp.header)
			}
			if ct := o.resp.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("503 content type %q", ct)
			}
		default:
			t.Errorf("status %d: %s", o.resp.status, o.resp.body)
		}
	}
	return tokens, ok, refused
}

// TestInFlightBoundRefusesTheRest: with 2 requests in flight allowed and a backend that takes
// a second to answer, 8 requests at once get 2 answers and 6 JSON 503s with Retry-After; only
// the answered ones are charged, and the gateway serves again once they are done.
func TestInFlightBoundRefusesTheRest(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "slow", "--ttft", "1s")})
	s.writePolicy(t, overloadPolicy(2))
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)

	tokens, ok, refused := tally(t, sendConcurrently("carol", 8, s), "gateway_at_capacity")
	if ok != 2 || refused != 6 {
		t.Fatalf("%d answered and %d refused, want 2 and 6", ok, refused)
	}
	// The bound frees up as requests end: the next two are served.
	more, ok2, _ := tally(t, sendConcurrently("carol", 2, s), "gateway_at_capacity")
	if ok2 != 2 {
		t.Fatalf("after the first ones ended, %d of 2 were served", ok2)
	}
	if got := awaitSpent(t, s, "carol", "qwen3", tokens+more); got != tokens+more {
		t.Errorf("carol charged %d, want %d (the answered requests' tokens, nothing for the refused)", got, tokens+more)
	}
	st := runTollgate(t, "status", "--addr", addr(s.metricsPort))
	if !strings.Contains(st, "requests in flight:  2 (listener.maxConcurrentRequests)") {
		t.Errorf("tollgate status does not show the bound:\n%s", st)
	}
}

// TestBackendBoundRefusesAndGivesBackTheReservation: a backend that takes one request in flight
// and one waiting. Of 6 requests at once, 2 are served and 4 get a JSON 503, code
// backend_at_capacity, with Retry-After. Those 4 passed the quota check and reserved their
// worst case; they reached no backend, so the reservations are given back and only the 2
// served are charged.
func TestBackendBoundRefusesAndGivesBackTheReservation(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "slow", "--ttft", "1s")})
	s.writePolicy(t, strings.Replace(overloadPolicy(100), `url: "{{backend:sim}}"}`,
		`url: "{{backend:sim}}", maxConcurrentRequests: 1, maxPendingRequests: 1}`, 1))
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)
	// One request first opens the connection to the backend: the burst then finds it idle,
	// and the first of its requests is in flight at once rather than waiting for a connection.
	if _, ok, _ := tally(t, sendConcurrently("warm-up", 1, s), "backend_at_capacity"); ok != 1 {
		t.Fatal("the warm-up request was not served")
	}

	tokens, ok, refused := tally(t, sendConcurrently("erin", 6, s), "backend_at_capacity")
	if ok != 2 || refused != 4 {
		t.Fatalf("%d answered and %d refused, want 2 and 4", ok, refused)
	}
	if got := awaitSpent(t, s, "erin", "qwen3", tokens); got != tokens {
		t.Errorf("erin charged %d, want %d: the refused requests' reservations given back", got, tokens)
	}
}

// hog opens n connections that each send most of a 1000 KiB request body and then wait:
// Envoy buffers every body whole for the ext_proc server, so they fill its heap. Closing them
// frees it.
func hog(t *testing.T, s *stack, n int) (release func()) {
	t.Helper()
	const size = 1000 << 10
	body := `{"model":"qwen3","messages":[{"role":"user","content":"` + strings.Repeat("a", size)
	var conns []net.Conn
	release = func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for range n {
		c, err := net.Dial("tcp", addr(s.listenerPort))
		if err != nil {
			release()
			t.Fatal(err)
		}
		conns = append(conns, c)
		head := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nx-user-id: hog\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n", len(body)+100)
		if _, err := c.Write([]byte(head + body)); err != nil {
			// Envoy may already refuse new requests; what was written still counts.
			break
		}
	}
	return release
}

// envoyStat reads one of Envoy's stats from its admin interface.
func envoyStat(t *testing.T, s *stack, name string) string {
	t.Helper()
	r := mustDo(t, "GET", s.adminURL("/stats?filter=^"+name+"$"), nil, "")
	_, v, _ := strings.Cut(strings.TrimSpace(string(r.body)), ": ")
	return v
}

// TestHeapBoundShedsAndRecovers: `tollgate run` with a 64 MiB heap bound for Envoy. Slow
// clients holding large bodies push Envoy's heap past it; meanwhile new requests are answered
// at once with a JSON 503, code gateway_overloaded, and Retry-After, or served — never left
// hanging. Nothing is killed, the gateway serves every request again once the slow clients
// are gone, and the counters hold exactly the tokens of the answered requests.
func TestHeapBoundShedsAndRecovers(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, overloadPolicy(1000))
	r.startWith(t, append(r.args(), "--envoy-max-heap", "64MiB"))

	release := hog(t, r.stack, 100)
	defer release()
	testutil.Eventually(t, 20*time.Second, "Envoy refusing new requests", func() error {
		if v := envoyStat(t, r.stack, "overload.envoy.overload_actions.stop_accepting_requests.active"); v != "1" {
			return fmt.Errorf("stop_accepting_requests.active = %q; heap pressure %s%%", v,
				envoyStat(t, r.stack, "overload.envoy.resource_monitors.fixed_heap.pressure"))
		}
		return nil
	})
	tokens, ok, refused := tally(t, sendConcurrently("dave", 20, r.stack), "gateway_overloaded")
	if refused == 0 {
		t.Fatalf("an overloaded gateway refused none of 20 requests (%d served)", ok)
	}
	t.Logf("while overloaded: %d served, %d refused", ok, refused)

	release()
	var after []outcome
	testutil.Eventually(t, 30*time.Second, "the gateway serving again", func() error {
		o := sendConcurrently("dave", 1, r.stack)
		after = append(after, o...)
		if o[0].err != nil || o[0].resp.status != 200 {
			return fmt.Errorf("still refused: %d (%w)", o[0].resp.status, o[0].err)
		}
		return nil
	})
	more, _, _ := tally(t, after, "gateway_overloaded")
	select {
	case <-r.proc.done:
		t.Fatalf("tollgate run exited under overload:\n%s", r.proc.logText())
	default:
	}
	if got := awaitSpent(t, r.stack, "dave", "qwen3", tokens+more); got != tokens+more {
		t.Errorf("dave charged %d, want %d: every 200 charged, no 503", got, tokens+more)
	}
	if got := spent(t, r.stack, "hog", "qwen3"); got != 0 {
		t.Errorf("the slow clients, which reached no backend, were charged %d", got)
	}
	if banner := r.proc.logText(); !strings.Contains(banner, "1000 requests in flight (listener.maxConcurrentRequests), Envoy heap 64MiB") {
		t.Errorf("the banner does not state the bounds:\n%s", banner)
	}
	st := runTollgate(t, "status", "--addr", addr(r.metricsPort))
	if !strings.Contains(st, "heap 64MiB") {
		t.Errorf("tollgate status does not show Envoy's heap bound:\n%s", st)
	}
}
