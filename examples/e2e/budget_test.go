//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// Budgets and pools on the real stack: money quotas from prices, team, all-model and global
// pools, request counts and calendar periods. llmsim reports 6 prompt and 6 completion tokens
// for every chat request.

// budgetStack runs the whole gateway on policy, with the quota section given, in header mode
// with a team header.
func budgetStack(t testing.TB, quotas string, simArgs ...string) *stack {
	t.Helper()
	// The team header is identity.teamHeader's default, x-team-id.
	return quotaStack(t, headerPolicy(`models:
  # Per million tokens: a qwen3 request costs 6*1000 + 6*2000 = 18000 µ$ ($0.018), a gpt-4
  # request 6*10000 + 6*30000 = 240000 µ$ ($0.24).
  - {name: qwen3, backend: sim, prices: {input: 1000, output: 2000}}
  - {name: gpt-4, backend: sim, prices: {input: 10000, output: 30000}}
costs:
  - {name: tokens, type: TotalToken}
quotas:
`)+quotas, simArgs...)
}

// ask sends one chat request for model as user of team ("" for none) and returns the answer.
func ask(t testing.TB, s *stack, user, team, model string) response {
	t.Helper()
	h := map[string]string{"x-user-id": user}
	if team != "" {
		h["x-team-id"] = team
	}
	return mustDo(t, "POST", s.url("/v1/chat/completions"), h, chatBody(model))
}

// asks sends one request per model in turn and returns the statuses.
func asks(t testing.TB, s *stack, user, team string, models ...string) string {
	t.Helper()
	var out []string
	for _, m := range models {
		out = append(out, fmt.Sprint(ask(t, s, user, team, m).status))
	}
	return strings.Join(out, " ")
}

// awaitKey waits until the one key of the stack's Redis matching pattern holds want.
func awaitKey(t testing.TB, s *stack, pattern string, want int) {
	t.Helper()
	awaitRedisKey(t, addr(s.redisPort), pattern, want)
}

// TestMoneyBudgetAcrossModels: one user spends a $0.50 monthly budget on two models with
// different prices; the counter holds the exact price of what was served, in millionths of a
// dollar, and the request after the budget is gone gets a 429 that names it.
func TestMoneyBudgetAcrossModels(t *testing.T) {
	s := budgetStack(t, `  - {name: monthly-budget, limit: "$0.50", per: calendar-month, timezone: Europe/Berlin}`)
	// 0.24 + 0.018 + 0.24 = 0.498 is under 0.50: the fourth request is admitted and crosses it.
	if got := asks(t, s, "alice", "", "gpt-4", "qwen3", "gpt-4", "qwen3"); got != "200 200 200 200" {
		t.Fatalf("spending the budget: %s", got)
	}
	awaitKey(t, s, "*_quota_monthly-budget_period_*_user_alice_*", 240000+18000+240000+18000)
	for _, model := range []string{"qwen3", "gpt-4"} {
		r := ask(t, s, "alice", "", model)
		if r.status != 429 {
			t.Fatalf("%s after the budget: %d %s", model, r.status, r.body)
		}
		msg := fmt.Sprint(r.json(t)["error"].(map[string]any)["message"])
		if !strings.HasPrefix(msg, "alice has spent the whole $0.50 budget of this month in Europe/Berlin (quota monthly-budget); the window resets at ") {
			t.Errorf("429 message %q does not name the budget, its amount and its period", msg)
		}
	}
	// Another user has a budget of their own.
	if got := asks(t, s, "bob", "", "gpt-4"); got != "200" {
		t.Errorf("bob: %s", got)
	}
	// tollgate quota shows the budget in dollars, used past the limit.
	out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "alice")
	if !strings.Contains(out, "$0.50/calendar-month") || !strings.Contains(out, ">=$0.50") {
		t.Errorf("tollgate quota:\n%s", out)
	}
	// alice's two gpt-4 answers and bob's one: 3 × $0.24.
	spend := grepLines(s.extProcMetrics(t), `tollgate_spend_total{currency="USD",gen_ai_request_model="gpt-4"`)
	var dollars float64
	if _, err := fmt.Sscan(spend[strings.LastIndex(spend, " ")+1:], &dollars); err != nil || dollars < 0.7199 || dollars > 0.7201 {
		t.Errorf("gpt-4 spend %q, want 0.72", spend)
	}
}

// TestTeamPool: alice and bob of team research share a 60-token pool while each has 36 of
// their own; alice hits her own cap first, bob then spends what is left of the pool, and a
// member of another team is not affected.
func TestTeamPool(t *testing.T) {
	s := budgetStack(t, `
  - {name: per-member, cost: tokens, limit: 36, per: hour}
  - {name: team-pool, scope: team, cost: tokens, limit: 60, per: hour}`)
	if got := asks(t, s, "alice", "research", "qwen3", "qwen3", "qwen3", "qwen3"); got != "200 200 200 429" {
		t.Fatalf("alice: %s, want her own 36 to stop her after 3", got)
	}
	if got := asks(t, s, "bob", "research", "qwen3", "gpt-4", "qwen3"); got != "200 200 429" {
		t.Fatalf("bob: %s, want the pool's last 24 then 429", got)
	}
	awaitKey(t, s, "*_quota_team-pool_team_research_*", 60)
	awaitKey(t, s, "*_quota_per-member_user_bob_*", 24)
	if got := asks(t, s, "carol", "ops", "qwen3"); got != "200" {
		t.Errorf("carol of another team: %s", got)
	}
	// A caller without a team is held by the user quota only.
	if got := asks(t, s, "dave", "", "qwen3", "qwen3", "qwen3", "qwen3"); got != "200 200 200 429" {
		t.Errorf("dave without a team: %s", got)
	}
}

// TestPoolAcrossModels: a quota without a model is one pool for all of them, so switching
// models does not dodge it.
func TestPoolAcrossModels(t *testing.T) {
	s := budgetStack(t, `  - {name: any-model, cost: tokens, limit: 24, per: hour}`)
	if got := asks(t, s, "alice", "", "qwen3", "gpt-4", "qwen3", "gpt-4"); got != "200 200 429 429" {
		t.Fatalf("statuses %s", got)
	}
	awaitKey(t, s, "*_quota_any-model_user_alice_*", 24)
}

// TestGlobalPool: a global quota stops every caller once it is spent.
func TestGlobalPool(t *testing.T) {
	s := budgetStack(t, `  - {name: provider-key, scope: global, cost: tokens, limit: 36, per: hour}`)
	var got []string
	for _, user := range []string{"alice", "bob", "carol", "dave", "erin"} {
		got = append(got, asks(t, s, user, "", "qwen3"))
	}
	if strings.Join(got, " ") != "200 200 200 429 429" {
		t.Fatalf("statuses %v", got)
	}
	awaitKey(t, s, "*_quota_provider-key_*", 36)
}

// TestRequestQuotaUnderABurst: 50 requests at once against 10 requests per hour: each is
// counted as it is admitted, so exactly 10 pass, and the refused ones are not counted.
func TestRequestQuotaUnderABurst(t *testing.T) {
	// A slow first token keeps every request of the burst in flight at once.
	s := budgetStack(t, `  - {name: ten-an-hour, model: qwen3, cost: requests, limit: 10, per: hour}`, "--ttft", "300ms")
	if admitted := burst(t, []*stack{s}, "burster", 50); admitted != 10 {
		t.Errorf("%d of 50 concurrent requests admitted, want exactly 10", admitted)
	}
	awaitKey(t, s, "*_quota_ten-an-hour_user_burster_*", 10)
}

// TestCalendarRollover: with tollgate's calendar clock started 12 seconds before midnight of
// 30 April in Berlin, a day quota and a month quota refuse until local midnight, say so in
// Retry-After, and admit again from 1 May on: new periods, new counters.
func TestCalendarRollover(t *testing.T) {
	// The clock starts with tollgate, before Envoy: the margin covers a slow start.
	t.Setenv("TOLLGATE_CLOCK", "2026-04-30T23:59:48+02:00")
	s := budgetStack(t, `
  - {name: daily, model: qwen3, cost: tokens, limit: 12, per: calendar-day, timezone: Europe/Berlin}
  - {name: monthly, model: gpt-4, cost: requests, limit: 1, per: calendar-month, timezone: Europe/Berlin}`)
	if got := asks(t, s, "alice", "", "qwen3", "gpt-4", "qwen3", "gpt-4"); got != "200 200 429 429" {
		t.Fatalf("before midnight: %s", got)
	}
	r := ask(t, s, "alice", "", "qwen3")
	if r.status != 429 {
		t.Fatalf("before midnight: %d", r.status)
	}
	// The stack took a few seconds to start; the clock started when tollgate did.
	if wait, err := strconv.Atoi(r.header.Get("retry-after")); err != nil || wait < 1 || wait > 12 {
		t.Errorf("Retry-After %q, want the seconds to local midnight (at most 12)", r.header.Get("retry-after"))
	}
	// Each model on its own: midnight may fall between two requests of one round.
	for _, model := range []string{"qwen3", "gpt-4"} {
		testutil.Eventually(t, 20*time.Second, model+" on the 1st of May in Berlin", func() error {
			if r := ask(t, s, "alice", "", model); r.status != 200 {
				return fmt.Errorf("status %d: %s", r.status, r.body)
			}
			return nil
		})
	}
	awaitKey(t, s, "*_quota_daily_period_2026-04-30_user_alice_*", 12)
	awaitKey(t, s, "*_quota_daily_period_2026-05-01_user_alice_*", 12)
	awaitKey(t, s, "*_quota_monthly_period_2026-05_user_alice_*", 1)
}

// TestCalendarDayAcrossDST: on 25 October 2026 Berlin's clocks go back an hour, so that day
// has 25 hours: at noon (after the change) the day quota resets in 12 hours, not 11 or 13, and
// its window is 90000 seconds long.
func TestCalendarDayAcrossDST(t *testing.T) {
	t.Setenv("TOLLGATE_CLOCK", "2026-10-25T12:00:00+01:00")
	s := budgetStack(t, `  - {name: daily, model: qwen3, cost: tokens, limit: 12, per: calendar-day, timezone: Europe/Berlin}`)
	if got := asks(t, s, "alice", "", "qwen3"); got != "200" {
		t.Fatalf("first request: %s", got)
	}
	r := ask(t, s, "alice", "", "qwen3")
	if r.status != 429 {
		t.Fatalf("second request: %d", r.status)
	}
	wait := r.header.Get("retry-after")
	if !strings.HasPrefix(wait, "431") && !strings.HasPrefix(wait, "432") { // 12 h = 43200 s, less the seconds since start
		t.Errorf("Retry-After %q, want about 43200 (12 hours to midnight)", wait)
	}
	if limit := r.header.Get("x-ratelimit-limit"); !strings.Contains(limit, "w=90000") {
		t.Errorf("x-ratelimit-limit %q, want a 25-hour window (w=90000)", limit)
	}
}

// TestCalendarCounterCarriedIntoTheServicesNewYear: the ratelimit service keeps a calendar
// quota's counter under its year-long window, aligned to the Unix epoch. With tollgate's
// calendar clock in a month that began before the service's current year did, what the month
// spent in the service's previous year is carried over: 40 of 48 tokens already spent leave
// room for one request of 12, not four.
func TestCalendarCounterCarriedIntoTheServicesNewYear(t *testing.T) {
	const year = 365 * 24 * 3600
	now := time.Now().Unix()
	boundary := now / year * year // the start of the service's current year window
	month := time.Unix(boundary, 0).UTC().AddDate(0, 0, -1)
	t.Setenv("TOLLGATE_CLOCK", time.Unix(boundary, 0).UTC().AddDate(0, 0, 1).Format(time.RFC3339))
	s := budgetStack(t, `  - {name: monthly, model: qwen3, cost: tokens, limit: 48, per: calendar-month}`)
	if month.Month() != time.Unix(boundary, 0).UTC().AddDate(0, 0, 1).Month() {
		t.Skipf("the service's year began on the first of a month (%s): nothing to carry", time.Unix(boundary, 0).UTC())
	}
	key := fmt.Sprintf("tollgate_model_qwen3_quota_monthly_period_%s_user_alice_%d", month.Format("2006-01"), boundary-year)
	if err := redisCommand(addr(s.redisPort), "SET", key, "40"); err != nil {
		t.Fatal(err)
	}
	if got := asks(t, s, "alice", "", "qwen3", "qwen3"); got != "200 429" {
		t.Fatalf("statuses %s, want the 40 spent before the service's new year counted", got)
	}
	awaitKey(t, s, fmt.Sprintf("*_quota_monthly_period_%s_user_alice_%d", month.Format("2006-01"), boundary), 52)
}

// redisCommand sends one command to the Redis at addr and expects a simple OK.
func redisCommand(addr string, args ...string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	cmd := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		cmd += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, cmd); err != nil {
		return err
	}
	reply, err := readLine(bufio.NewReader(c))
	if err != nil {
		return err
	}
	if reply != "+OK" {
		return fmt.Errorf("redis: %s", reply)
	}
	return nil
}

// TestMaxTokensPerRequest: a request asking for more output than its quota's or its tier's
// ceiling is refused with a 400 that says so, before anything is counted; one at the ceiling
// passes.
func TestMaxTokensPerRequest(t *testing.T) {
	s := budgetStack(t, `  - {name: hourly, cost: tokens, limit: 1000, per: hour, maxTokensPerRequest: 512}
tiers:
  - {name: trial, users: [trial-user], maxTokensPerRequest: 64}`)
	send := func(user, maxTokens string) response {
		body := fmt.Sprintf(`{"model":"qwen3","max_tokens":%s,"messages":[{"role":"user","content":"Hi"}]}`, maxTokens)
		return mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user}, body)
	}
	for _, c := range []struct {
		user, maxTokens string
		want            int
	}{
		{"alice", "513", 400}, {"alice", "512", 200}, {"trial-user", "65", 400}, {"trial-user", "64", 200},
	} {
		r := send(c.user, c.maxTokens)
		if r.status != c.want {
			t.Fatalf("%s asking %s: %d %s, want %d", c.user, c.maxTokens, r.status, r.body, c.want)
		}
		if c.want == 400 {
			e := r.json(t)["error"].(map[string]any)
			if e["code"] != "max_tokens_exceeded" || !strings.Contains(fmt.Sprint(e["message"]), "at most") {
				t.Errorf("400 body %s", r.body)
			}
		}
	}
	// Only the two admitted requests were counted: 12 tokens each.
	awaitKey(t, s, "*_quota_hourly_user_alice_*", 12)
	awaitKey(t, s, "*_quota_hourly_user_trial-user_*", 12)
}

// TestBudgetsExample runs examples/budgets/policy.yaml as its README does: API keys name the
// users and their team, four long qwen3 answers ($1.600003 each) spend alice's $5 and the fifth
// request is refused, bob of the same team is still served, and `tollgate quota` shows the team
// pool as the README does.
func TestBudgetsExample(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "budgets", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	policy := strings.NewReplacer(
		"listener: {port: 8080}", "listener: {{listener}}\nextProc: {{extproc}}\nrateLimit: {port: {{ratelimit_port}}, timeout: 1s}",
		"http://127.0.0.1:8000", "{{backend:sim}}",
	).Replace(string(example))
	s := quotaStack(t, policy)
	send := func(key, model string, outputTokens string) response {
		h := map[string]string{"authorization": "Bearer " + key}
		if outputTokens != "" {
			h["x-llmsim-output-tokens"] = outputTokens
		}
		return mustDo(t, "POST", s.url("/v1/chat/completions"), h, chatBody(model))
	}
	var got []string
	for range 5 {
		got = append(got, fmt.Sprint(send("sk-alice", "qwen3", "1000000").status))
	}
	if strings.Join(got, " ") != "200 200 200 200 429" {
		t.Fatalf("alice's long answers: %v", got)
	}
	if r := send("sk-alice", "gpt-4", ""); r.status != 429 || !strings.Contains(string(r.body), "user-monthly") {
		t.Fatalf("alice on another model: %d %s", r.status, r.body)
	}
	if r := send("sk-bob", "qwen3", ""); r.status != 200 {
		t.Fatalf("bob: %d %s", r.status, r.body)
	}
	// 4 × 1600003 + 12 (bob's request: 6 × 0.40 + 6 × 1.60 millionths).
	awaitKey(t, s, "*_quota_research-monthly_period_*_team_research_*", 4*1600003+12)
	out := runTollgate(t, "quota", "-f", s.policyPath, "--user", "bob")
	for _, want := range []string{"team research", "$20.00/calendar-month", "$6.400024", "$0.000012"} {
		if !strings.Contains(out, want) {
			t.Errorf("tollgate quota --user bob lacks %q:\n%s", want, out)
		}
	}
}
