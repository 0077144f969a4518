//go:build e2e

package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// seedPolicy is the seed demo's policy: 50 tokens per user per hour on qwen3.
var seedPolicy = headerPolicy(`models:
  - {name: qwen3, backend: sim}
  - {name: gpt-4, backend: sim}
  - {name: gpt-3.5-turbo, backend: sim}
costs:
  - {name: llm_input_token, type: InputToken}
  - {name: llm_output_token, type: OutputToken}
  - {name: llm_total_token, type: TotalToken}
quotas:
  - {model: gpt-4, cost: llm_total_token, limit: 1000, per: hour}
  - {model: gpt-3.5-turbo, cost: llm_total_token, limit: 100, per: hour}
  - {model: qwen3, cost: llm_total_token, limit: 50, per: hour}
`)

// headerPolicy is a policy template with one llmsim backend named sim, users known by the
// x-user-id header, and the stack's ports; body adds models, costs, quotas and the rest.
func headerPolicy(body string) string {
	return `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity: {header: x-user-id}
backends:
  - {name: sim, url: "{{backend:sim}}"}
` + body
}

// quotaStack runs the whole gateway: llmsim (with simArgs), Redis, tollgate serve, tollgate
// ratelimit, Envoy.
func quotaStack(t testing.TB, policy string, simArgs ...string) *stack {
	t.Helper()
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim", simArgs...)})
	s.writePolicy(t, policy)
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)
	return s
}

// TestSeedScenario is the seed demo's acceptance test, the one its own run never reached:
// alice spends 12 tokens per qwen3 request against 50 per hour, so requests 1–5 pass and 6–10
// get a JSON 429 with Retry-After; bob and alice's other models are unaffected.
func TestSeedScenario(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	for _, stream := range []bool{false, true} {
		user := "alice"
		if stream {
			user = "alice-streaming"
		}
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			statuses := sendN(t, s, user, "qwen3", 10, stream)
			want := []int{200, 200, 200, 200, 200, 429, 429, 429, 429, 429}
			if fmt.Sprint(statuses) != fmt.Sprint(want) {
				t.Fatalf("statuses %v, want %v", statuses, want)
			}
		})
	}

	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
	if r.status != 429 {
		t.Fatalf("alice's 11th qwen3 request: %d", r.status)
	}
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok || e["type"] != "rate_limit_exceeded" || !strings.Contains(fmt.Sprint(e["message"]), "qwen3") {
		t.Errorf("429 body does not name the model and error type: %s", r.body)
	}
	if ct := r.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("429 content-type %q", ct)
	}
	if ra, err := strconv.Atoi(r.header.Get("retry-after")); err != nil || ra <= 0 || ra > 3600 {
		t.Errorf("Retry-After %q, want seconds until the hour window resets", r.header.Get("retry-after"))
	}
	t.Logf("429: %s retry-after=%s ratelimit-limit=%q", r.body, r.header.Get("retry-after"), r.header.Get("x-ratelimit-limit"))

	if got := sendN(t, s, "bob", "qwen3", 1, false); got[0] != 200 {
		t.Errorf("bob's first qwen3 request: %d", got[0])
	}
	if got := sendN(t, s, "alice", "gpt-4", 1, false); got[0] != 200 {
		t.Errorf("alice's gpt-4 request: %d", got[0])
	}

	// No identity, no free pass: the request is rejected before its quota is checked, which
	// would otherwise name no user's counter.
	r = mustDo(t, "POST", s.url("/v1/chat/completions"), nil, chatBody("qwen3"))
	if r.status != 401 {
		t.Errorf("request without x-user-id: %d, want 401", r.status)
	} else if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "authentication_error" {
		t.Errorf("401 body: %s", r.body)
	}

	// Allowed responses tell the client what is left.
	r = mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "dave"}, chatBody("qwen3"))
	if r.status != 200 || r.header.Get("x-ratelimit-remaining") == "" {
		t.Errorf("allowed response: status %d, x-ratelimit-remaining %q", r.status, r.header.Get("x-ratelimit-remaining"))
	}

	// tollgate quota reads alice's window from the ratelimit service.
	out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "alice", "--model", "qwen3",
		"--ratelimit", addr(s.rateLimit))
	t.Logf("tollgate quota:\n%s", out)
	if !strings.Contains(out, "over limit") || !strings.Contains(out, "50/hour") {
		t.Errorf("tollgate quota does not show alice over her 50/hour qwen3 quota:\n%s", out)
	}
}

// sendN sends n chat requests one after another and returns their statuses. With a ratelimit
// service in the stack it waits after each admitted request until its charge has been
// answered: tollgate sends it when the response ends, as the client receives its last bytes, and
// a test that raced it would measure the race, not the quota.
func sendN(t testing.TB, s *stack, user, model string, n int, stream bool) []int {
	t.Helper()
	body := chatBody(model)
	if stream {
		body = fmt.Sprintf(`{"model":%q,"stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`, model)
	}
	var statuses []int
	for i := 0; i < n; i++ {
		before := s.rateLimitCalls(t)
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user}, body)
		statuses = append(statuses, r.status)
		if r.status == 200 && s.charges {
			// tollgate checked the request, and charges it.
			s.awaitRateLimitCalls(t, before+2)
		}
	}
	return statuses
}

// rateLimitCalls returns how many calls tollgate has made to the ratelimit service so far and
// had answered (or given up on): its quota checks plus its charges.
func (s *stack) rateLimitCalls(t testing.TB) int {
	t.Helper()
	if !s.charges {
		return 0
	}
	metrics := s.extProcMetrics(t)
	return metricSum(t, metrics, "tollgate_quota_checks_total") + metricSum(t, metrics, "tollgate_quota_charges_total")
}

// extProcMetrics returns the ext_proc server's /metrics text: tollgate serve's, or the
// standalone server's.
func (s *stack) extProcMetrics(t testing.TB) string {
	t.Helper()
	url := s.metricsURL("/metrics")
	if s.extProcMetricsPort != 0 {
		url = fmt.Sprintf("http://%s/metrics", addr(s.extProcMetricsPort))
	}
	return string(mustDo(t, "GET", url, nil, "").body)
}

// metricSum sums every series of a counter in Prometheus text.
func metricSum(t testing.TB, metrics, name string) int {
	t.Helper()
	total := 0
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		total += int(v)
	}
	return total
}

// awaitRateLimitCalls waits until want calls to the ratelimit service were answered (see
// rateLimitCalls).
func (s *stack) awaitRateLimitCalls(t testing.TB, want int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "charge answered", func() error {
		if got := s.rateLimitCalls(t); got < want {
			return fmt.Errorf("%d checks and charges answered, want %d", got, want)
		}
		return nil
	})
}

const featuresPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
backends:
  - {name: sim, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
  - {name: gpt-4, backend: sim}
  - {name: gpt-3.5-turbo, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
  - {name: weighted, cel: "input_tokens * 2 + output_tokens"}
tiers:
  - {name: gold, users: [carol]}
quotas:
  - name: qwen3-hourly
    model: qwen3
    cost: tokens
    limit: 50
    per: hour
    overrides:
      - {tier: gold, limit: 100}
      - {user: alice, limit: 30}
  - {name: gpt-4-hourly, model: gpt-4, cost: tokens, limit: 1000, per: hour}
  - {name: gpt-4-daily, model: gpt-4, cost: weighted, limit: 40, per: day}
  - {name: turbo-trial, model: gpt-3.5-turbo, cost: tokens, limit: 12, per: hour, shadow: true}
`

// TestQuotaPolicyFeatures: overrides per user and per tier, two windows on one model (the lower
// one, on a CEL cost, decides), and a shadow quota that counts but never rejects.
func TestQuotaPolicyFeatures(t *testing.T) {
	s := quotaStack(t, featuresPolicy)
	cases := []struct {
		user, model string
		n           int
		want        string
	}{
		// default 50: 12,24,36,48 pass, the 5th is admitted at 48 and charged to 60.
		{"bob", "qwen3", 6, "[200 200 200 200 200 429]"},
		// alice's own override 30: 12,24 then 36 → the 4th is rejected.
		{"alice", "qwen3", 4, "[200 200 200 429]"},
		// carol's tier gold: 100 → 9 pass (charged to 108), the 10th is rejected.
		{"carol", "qwen3", 10, "[200 200 200 200 200 200 200 200 200 429]"},
		// the daily window of the weighted cost (6*2+6 = 18 per request, 40 per day) is hit long
		// before the hourly 1000: 18, 36, 54 → the 4th is rejected.
		{"bob", "gpt-4", 4, "[200 200 200 429]"},
		// shadow quota: 12 per hour, spent after one request, never enforced.
		{"bob", "gpt-3.5-turbo", 4, "[200 200 200 200]"},
	}
	for _, c := range cases {
		if got := fmt.Sprint(sendN(t, s, c.user, c.model, c.n, false)); got != c.want {
			t.Errorf("%s on %s: %s, want %s", c.user, c.model, got, c.want)
		}
	}
	out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "bob", "--ratelimit", addr(s.rateLimit))
	t.Logf("tollgate quota --user bob:\n%s", out)
	for _, want := range []string{"shadow: over limit, not enforced", "gpt-4-daily", "gpt-4-hourly", "1000/hour"} {
		if !strings.Contains(out, want) {
			t.Errorf("tollgate quota output lacks %q", want)
		}
	}
}

// TestQuotaEditsApplyLive: raising a limit in the policy file lets a user through again, and
// lowering it rejects them, with no restart of anything.
func TestQuotaEditsApplyLive(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	if got := fmt.Sprint(sendN(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("before the edit: %s", got)
	}
	s.writePolicy(t, strings.Replace(seedPolicy, "limit: 50, per: hour", "limit: 500, per: hour", 1))
	testutil.Eventually(t, 20*time.Second, "raised limit lets alice through", func() error {
		if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 200 {
			return fmt.Errorf("status %d", got)
		}
		return nil
	})
	s.writePolicy(t, strings.Replace(seedPolicy, "limit: 50, per: hour", "limit: 20, per: hour", 1))
	testutil.Eventually(t, 20*time.Second, "lowered limit rejects alice", func() error {
		if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 429 {
			return fmt.Errorf("status %d", got)
		}
		return nil
	})
}

// TestQuotaAtExactlyTheLimit pins down the edge docs/policy.md documents: a request is
// admitted while something remains, so a user at 49 of 50 gets one more (charged to 61) and a
// user at exactly 50 of 50 gets 429.
func TestQuotaAtExactlyTheLimit(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	send := func(outputTokens string) int {
		t.Helper()
		before := s.rateLimitCalls(t)
		header := map[string]string{"x-user-id": "edge"}
		if outputTokens != "" {
			header["x-llmsim-output-tokens"] = outputTokens
		}
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), header, chatBody("qwen3"))
		if r.status == 200 {
			s.awaitRateLimitCalls(t, before+2)
		}
		return r.status
	}
	if got := send("44"); got != 200 { // 6 + 44 = exactly the limit of 50
		t.Fatalf("first request: %d", got)
	}
	if got := spentOn(t, s, "edge", "qwen3", "qwen3-llm_total_token-per-hour"); got != 50 {
		t.Fatalf("spent %d after the first request, want 50", got)
	}
	if got := send(""); got != 429 {
		t.Fatalf("at exactly 50 of 50: %d, want 429 (nothing is left)", got)
	}
	user := map[string]string{"x-user-id": "edge-49", "x-llmsim-output-tokens": "43"} // 6 + 43 = 49
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), user, chatBody("qwen3")); r.status != 200 {
		t.Fatalf("first request of edge-49: %d", r.status)
	}
	awaitCounter(t, addr(s.redisPort), "edge-49", 49)
	if got := sendBackToBack(t, s, "edge-49", "qwen3", 2, false); fmt.Sprint(got) != "[200 429]" {
		t.Fatalf("at 49 of 50: %v, want one more request, then 429", got)
	}
	awaitCounter(t, addr(s.redisPort), "edge-49", 61)
}
