//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// Seeing quotas at runtime: limits on every answer, and 429s people and SDKs understand.

// TestRateLimitHeadersGoDown: every admitted answer, JSON or streamed, carries OpenAI's and the
// IETF's x-ratelimit-* headers for alice's qwen3 quota; what remains goes down by each
// request's tokens, and matches `tollgate quota`.
func TestRateLimitHeadersGoDown(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	duration := regexp.MustCompile(`^(\d+m)?\d+s$`)
	for i, stream := range []bool{false, true, false, true} {
		body := chatBody("qwen3")
		if stream {
			body = `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`
		}
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, body)
		if r.status != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
		want := map[string]string{
			"x-ratelimit-limit-tokens":     "50",
			"x-ratelimit-remaining-tokens": fmt.Sprint(50 - 12*i),
			"x-ratelimit-remaining":        fmt.Sprint(50 - 12*i),
			"x-ratelimit-limit":            `50, 50;w=3600;name="qwen3-llm_total_token-per-hour"`,
		}
		for name, v := range want {
			if got := r.header.Get(name); got != v {
				t.Errorf("request %d (stream %v): %s = %q, want %q", i+1, stream, name, got, v)
			}
		}
		if reset := r.header.Get("x-ratelimit-reset-tokens"); !duration.MatchString(reset) {
			t.Errorf("request %d: x-ratelimit-reset-tokens %q, want a duration such as 28m0s", i+1, reset)
		}
		if got := r.header.Get("x-ratelimit-limit-requests"); got != "" {
			t.Errorf("request %d: x-ratelimit-limit-requests %q without a request quota", i+1, got)
		}
		s.awaitCharged(t, "alice", 12*(i+1))
	}
	out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "alice", "--model", "qwen3")
	if !regexp.MustCompile(`50/hour\s+48\s+2\s`).MatchString(out) {
		t.Errorf("tollgate quota does not show 48 used and 2 left:\n%s", out)
	}
	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
	if got := r.header.Get("x-ratelimit-remaining-tokens"); got != "2" {
		t.Errorf("the fifth answer: x-ratelimit-remaining-tokens %q, want 2 as tollgate quota says", got)
	}
}

// awaitCharged waits until user's qwen3 counter holds n.
func (s *stack) awaitCharged(t testing.TB, user string, n int) {
	t.Helper()
	awaitCounter(t, addr(s.redisPort), user, n)
}

// TestSDKGivesUpOnALongWait: a 429 whose window resets in more than a minute carries
// x-should-retry: false, and the official openai SDK with its default retries raises
// RateLimitError at once, after one attempt.
func TestSDKGivesUpOnALongWait(t *testing.T) {
	python := pythonWithOpenAI(t)
	s := quotaStack(t, headerPolicy(`models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 10, per: day}
`))
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "sdk"}, chatBody("qwen3")); r.status != 200 {
		t.Fatalf("first request: %d", r.status)
	}
	awaitCounter(t, addr(s.redisPort), "sdk", 12)
	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "sdk"}, chatBody("qwen3"))
	if r.status != 429 || r.header.Get("x-should-retry") != "false" {
		t.Fatalf("over the daily quota: %d, x-should-retry %q", r.status, r.header.Get("x-should-retry"))
	}
	overLimit := func() string {
		return metricValue(s.extProcMetrics(t), "tollgate_quota_checks_total", `result="over_limit"`)
	}
	if got := overLimit(); got != "1" {
		t.Fatalf("over_limit checks %s, want 1", got)
	}
	cmd := exec.Command(python, filepath.Join("testdata", "sdk_default_retries.py"), s.url("/v1"), "sdk", "qwen3")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+pythonPath())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sdk_default_retries.py: %v\n%s", err, out)
	}
	if fields := strings.Fields(string(out)); len(fields) != 2 || fields[0] != "RateLimitError" {
		t.Fatalf("SDK: %s, want RateLimitError", out)
	}
	if got := overLimit(); got != "2" {
		t.Errorf("over_limit checks %s after the SDK's call, want 2 (one attempt, no retries)", got)
	}
}

// quotaOf reads GET /v1/quota with headers and returns the named quota's entry.
func quotaOf(t testing.TB, s *stack, headers map[string]string, name string) (report map[string]any, quota map[string]any) {
	t.Helper()
	r := mustDo(t, "GET", s.url("/v1/quota"), headers, "")
	if r.status != 200 {
		t.Fatalf("GET /v1/quota: %d %s", r.status, r.body)
	}
	report = r.json(t)
	list, _ := report["quotas"].([]any)
	for _, q := range list {
		if m, _ := q.(map[string]any); m["name"] == name {
			return report, m
		}
	}
	t.Fatalf("GET /v1/quota lacks %s: %s", name, r.body)
	return nil, nil
}

// TestSelfServiceQuota: GET /v1/quota answers the caller's own quotas, identified as for model
// calls (a header, an API key, a token), without reaching a backend; "used" is exact past the
// limit; nobody reads another user's numbers, and a request without identity gets 401.
func TestSelfServiceQuota(t *testing.T) {
	t.Run("header", func(t *testing.T) {
		s := quotaStack(t, seedPolicy)
		if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
			t.Fatalf("alice: %s", got)
		}
		awaitCounter(t, addr(s.redisPort), "alice", 60)
		report, q := quotaOf(t, s, map[string]string{"x-user-id": "alice"}, "qwen3-llm_total_token-per-hour")
		if report["user"] != "alice" || q["used"] != 60.0 || q["remaining"] != 0.0 || q["limit"] != 50.0 ||
			q["used_exact"] != true || q["unit"] != "tokens" || q["model"] != "qwen3" || q["window"] != "hour" {
			t.Errorf("alice's report: %v", report)
		}
		if secs, _ := q["resets_in_seconds"].(float64); secs <= 0 || secs > 3600 {
			t.Errorf("resets_in_seconds %v", q["resets_in_seconds"])
		}
		// tollgate quota reads the same counter when it knows the Redis.
		out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "alice", "--model", "qwen3", "--redis", addr(s.redisPort))
		if !regexp.MustCompile(`50/hour\s+60\s+0\s.*over limit`).MatchString(out) {
			t.Errorf("tollgate quota --redis does not show 60 used:\n%s", out)
		}
		// bob sees his own counter, whatever he asks for.
		_, q = quotaOf(t, s, map[string]string{"x-user-id": "bob"}, "qwen3-llm_total_token-per-hour")
		if q["used"] != 0.0 || q["remaining"] != 50.0 {
			t.Errorf("bob's report shows %v", q)
		}
		r := mustDo(t, "GET", s.url("/v1/quota?user=alice"), nil, "")
		wantAuthError(t, r, 401, "missing_user")
		if got := metricValue(s.extProcMetrics(t), "tollgate_extproc_requests_total", `outcome="quota_read"`); got != "2" {
			t.Errorf("quota reads counted %q, want 2", got)
		}
	})
	t.Run("api keys", func(t *testing.T) {
		s, _ := identityStack(t, apiKeysPolicy, map[string]string{"keys.yaml": keysFile(map[string]string{"alice": aliceAPIKey, "bob": bobAPIKey})})
		if got := statusesAs(t, s, 1, map[string]string{"authorization": "Bearer " + aliceAPIKey}); got != "[200]" {
			t.Fatalf("alice: %s", got)
		}
		report, q := quotaOf(t, s, map[string]string{"authorization": "Bearer " + bobAPIKey, "x-user-id": "alice"}, "qwen3-tokens-per-hour")
		if report["user"] != "bob" || q["used"] != 0.0 {
			t.Errorf("bob, claiming to be alice, sees %v", report)
		}
		_, q = quotaOf(t, s, map[string]string{"authorization": "Bearer " + aliceAPIKey}, "qwen3-tokens-per-hour")
		if q["used"] != 12.0 {
			t.Errorf("alice's report %v", q)
		}
		wantAuthError(t, mustDo(t, "GET", s.url("/v1/quota"), map[string]string{"x-user-id": "alice"}, ""), 401, "missing_api_key")
	})
	t.Run("jwt", func(t *testing.T) {
		issuer := newJWTIssuer(t, "e2e-key")
		s, _ := identityStack(t, jwtPolicy, map[string]string{"jwks.json": issuer.jwks(t)})
		carol := map[string]string{"authorization": "Bearer " + issuer.token(t, claims("carol", nil))}
		if got := statusesAs(t, s, 1, carol); got != "[200]" {
			t.Fatalf("carol: %s", got)
		}
		report, q := quotaOf(t, s, carol, "qwen3-tokens-per-hour")
		if report["user"] != "carol" || q["used"] != 12.0 {
			t.Errorf("carol's report %v", report)
		}
		if r := mustDo(t, "GET", s.url("/v1/quota"), nil, ""); r.status != 401 {
			t.Errorf("without a token: %d %s", r.status, r.body)
		}
	})
}

// TestUsageLogMatchesCounters: 100 mixed requests (JSON, streams, streams the client leaves
// after the first chunk) by four users; the usage log (a file, usageLog.path) has one line per
// request with its id, user and model, and the tokens its lines show add up, per user, to the
// counter in Redis.
func TestUsageLogMatchesCounters(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim", "--token-delay", "50ms")}) // a client that leaves after the first chunk is gone long before the next
	logPath := filepath.Join(s.dir, "usage.log")
	s.writePolicy(t, headerPolicy(`usageLog: {path: `+logPath+`}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 100000, per: hour}
`))
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)
	// The requests take about half a minute; an hour that ends meanwhile would split each
	// user's spend over two counters.
	users := []string{"u0", "u1", "u2", "u3"}
	for i := range 100 {
		user := users[i%len(users)]
		switch i % 3 {
		case 0:
			mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user}, chatBody("qwen3"))
		case 1:
			mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user},
				`{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`)
		default:
			leaveStreamEarly(t, s, user)
		}
	}
	want := map[string]int{}
	for _, u := range users {
		awaitCounterSettled(t, s, u)
		n, err := redisCounter(addr(s.redisPort), "*_user_"+u+"_*")
		if err != nil {
			t.Fatal(err)
		}
		want[u] = n
	}
	var lines []map[string]any
	testutil.Eventually(t, 15*time.Second, "100 lines in the usage log", func() error {
		lines = readJSONLines(t, logPath)
		if len(lines) != 100 {
			return fmt.Errorf("%d lines", len(lines))
		}
		return nil
	})
	got := map[string]int{}
	ids := map[any]bool{}
	for _, l := range lines {
		if l["model"] != "qwen3" || l["backend"] != "sim" || l["quota_decision"] != "ok" || l["request_id"] == nil {
			t.Errorf("line lacks model, backend, decision or request id: %v", l)
		}
		ids[l["request_id"]] = true
		total, _ := l["total_tokens"].(float64)
		got[fmt.Sprint(l["user"])] += int(total)
	}
	if len(ids) != 100 {
		t.Errorf("%d distinct request ids in 100 lines", len(ids))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tokens in the usage log %v, counters %v", got, want)
	}
}

// leaveStreamEarly starts a streamed request and closes the connection after its first chunk.
func leaveStreamEarly(t testing.TB, s *stack, user string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.url("/v1/chat/completions"),
		strings.NewReader(`{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("x-user-id", user)
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _ = resp.Body.Read(buf)
	_ = resp.Body.Close()
}

// awaitCounterSettled waits until a user's counter stops changing: every charge and refund of
// requests that ended is in.
func awaitCounterSettled(t testing.TB, s *stack, user string) {
	t.Helper()
	last := -1
	testutil.Eventually(t, 15*time.Second, user+"'s counter settled", func() error {
		n, err := redisCounter(addr(s.redisPort), "*_user_"+user+"_*")
		if err != nil {
			return err
		}
		if n != last {
			last = n
			return fmt.Errorf("counter at %d, still moving", n)
		}
		return nil
	})
}

// readJSONLines reads a file of JSON lines.
func readJSONLines(t testing.TB, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// alertPolicy alerts at 20, 40 and 100 % of 50 qwen3 tokens per hour, to webhook.
func alertPolicy(webhook string) string {
	return headerPolicy(`models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - name: hourly
    model: qwen3
    cost: tokens
    limit: 50
    per: hour
    alerts: {at: [20, 40, 100], webhook: "` + webhook + `"}
`)
}

// TestQuotaAlerts: a user who spends a quota request by request crosses 20 % (at 12 of 50),
// 40 % (24) and 100 % (60): the webhook gets exactly one event per threshold, counted in
// tollgate_quota_alerts_total, however many requests follow in the window. A webhook that
// hangs slows no request.
func TestQuotaAlerts(t *testing.T) {
	var mu sync.Mutex
	var events []map[string]any
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		if err := json.NewDecoder(r.Body).Decode(&ev); err == nil {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		}
	}))
	defer receiver.Close()
	s := quotaStack(t, alertPolicy(receiver.URL+"/hook"))
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 8, false)); got != "[200 200 200 200 200 429 429 429]" {
		t.Fatalf("alice: %s", got)
	}
	var thresholds []any
	testutil.Eventually(t, 10*time.Second, "three alerts", func() error {
		mu.Lock()
		defer mu.Unlock()
		thresholds = thresholds[:0]
		for _, ev := range events {
			thresholds = append(thresholds, ev["threshold_percent"])
		}
		if fmt.Sprint(thresholds) != "[20 40 100]" {
			return fmt.Errorf("thresholds %v", thresholds)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // nothing more may come
	mu.Lock()
	if len(events) != 3 || events[2]["subject"] != "alice" || events[2]["quota"] != "hourly" || events[2]["used"] != 50.0 || events[2]["limit"] != 50.0 {
		t.Errorf("events %v", events)
	}
	mu.Unlock()
	if got := metricValue(s.extProcMetrics(t), "tollgate_quota_alerts_total", `threshold="100"`); got != "1" {
		t.Errorf("tollgate_quota_alerts_total{threshold=100} %q, want 1", got)
	}

	// A webhook that never answers: every request still comes back at once.
	hang := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer stuck.Close()
	defer close(hang)
	s2 := quotaStack(t, alertPolicy(stuck.URL))
	start := time.Now()
	if got := fmt.Sprint(sendBackToBack(t, s2, "bob", "qwen3", 8, false)); got != "[200 200 200 200 200 429 429 429]" {
		t.Fatalf("bob: %s", got)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("8 requests took %s with a hanging webhook", took)
	}
}
