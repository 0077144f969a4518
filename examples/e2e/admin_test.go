//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// The quota admin API on the real stack: reset and grants on the counters in Redis.

const adminToken = "tg-e2e-admin-7c3f9a1e5b2d8c4f"

// adminStack is quotaStack with the quota admin API on; it returns the API's URL.
func adminStack(t testing.TB, policy string) (*stack, string) {
	t.Helper()
	t.Setenv("TOLLGATE_ADMIN_TOKEN", adminToken)
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, policy)
	adminAddr := addr(testutil.FreePort(t))
	s.startTollgateWith(t, "--quota-admin", adminAddr)
	s.startRateLimit(t, s.startRedis(t))
	s.startEnvoy(t)
	return s, "http://" + adminAddr
}

// quotaChange runs `tollgate quota ACTION` against the admin API and returns its output.
func quotaChange(t testing.TB, adminURL string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bins.tollgate, append(append([]string{"quota"}, args...), "--admin", adminURL)...)
	cmd.Env = append(os.Environ(), "TOLLGATE_ADMIN_TOKEN="+adminToken)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tollgate quota %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestQuotaAdmin: the admin API refuses calls without the token (401) or with another (403);
// a reset lets a refused user through at once; a grant admits exactly the granted tokens more,
// in this window only; every change writes an audit line that never shows the token.
func TestQuotaAdmin(t *testing.T) {
	s, adminURL := adminStack(t, seedPolicy)
	const quota = "qwen3-llm_total_token-per-hour"
	read := adminURL + "/admin/v1/quotas?user=alice"
	if r := mustDo(t, "GET", read, nil, ""); r.status != 401 {
		t.Errorf("without a token: %d %s", r.status, r.body)
	}
	if r := mustDo(t, "GET", read, map[string]string{"authorization": "Bearer wrong"}, ""); r.status != 403 {
		t.Errorf("with a wrong token: %d %s", r.status, r.body)
	}
	if r := mustDo(t, "POST", adminURL+"/admin/v1/quotas/reset", nil, `{"user":"alice","quota":"`+quota+`"}`); r.status != 401 {
		t.Errorf("a reset without a token: %d %s", r.status, r.body)
	}

	// Reset: alice is refused at 60 of 50, and admitted at once after the reset.
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("alice: %s", got)
	}
	awaitCounter(t, addr(s.redisPort), "alice", 60)
	if out := quotaChange(t, adminURL, "reset", "--user", "alice", "--quota", quota); !strings.Contains(out, "used of alice's "+quota+": 60 -> 0 tokens") {
		t.Errorf("reset: %s", out)
	}
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 1, false)); got != "[200]" {
		t.Errorf("alice after the reset: %s", got)
	}
	awaitCounter(t, addr(s.redisPort), "alice", 12)
	r := mustDo(t, "GET", read, map[string]string{"authorization": "Bearer " + adminToken}, "")
	if r.status != 200 || !strings.Contains(string(r.body), `"used":12`) {
		t.Errorf("admin read of alice: %d %s", r.status, r.body)
	}

	// Grant: bob at 60 of 50 gets 12 more: the limit is 62 for this window, so exactly one more
	// request (which crosses it, as any request may) and then 429.
	if got := fmt.Sprint(sendBackToBack(t, s, "bob", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("bob: %s", got)
	}
	awaitCounter(t, addr(s.redisPort), "bob", 60)
	if out := quotaChange(t, adminURL, "grant", "--user", "bob", "--quota", quota, "--amount", "12"); !strings.Contains(out, "limit of bob's "+quota+": 50 -> 62 tokens") {
		t.Errorf("grant: %s", out)
	}
	got := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "bob"}, chatBody("qwen3"))
	if got.status != 200 || got.header.Get("x-ratelimit-limit-tokens") != "62" || got.header.Get("x-ratelimit-remaining-tokens") != "2" {
		t.Fatalf("bob after the grant: %d, limit %q remaining %q", got.status, got.header.Get("x-ratelimit-limit-tokens"), got.header.Get("x-ratelimit-remaining-tokens"))
	}
	awaitCounter(t, addr(s.redisPort), "bob", 72)
	if got := fmt.Sprint(sendBackToBack(t, s, "bob", "qwen3", 1, false)); got != "[429]" {
		t.Errorf("bob past the grant: %s", got)
	}
	// Another user has no grant.
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 4, false)); got != "[200 200 200 200]" {
		t.Errorf("alice: %s", got)
	}

	log := s.tollgate.logText()
	audit := grepLines(log, "quota changed")
	if strings.Count(audit, "\n")+1 != 2 || !strings.Contains(audit, "action=reset") || !strings.Contains(audit, "action=grant") ||
		!strings.Contains(audit, "before=60 after=0") || !strings.Contains(audit, "before=50 after=62") {
		t.Errorf("audit lines:\n%s", audit)
	}
	if strings.Contains(log, adminToken) {
		t.Error("the admin token appears in tollgate's log")
	}
}

// TestGrantEndsWithTheWindow: a grant on a calendar day quota applies until local midnight;
// from the next day on the user has the plain limit again (and a fresh counter).
func TestGrantEndsWithTheWindow(t *testing.T) {
	// The clock starts with tollgate, before Envoy: the margin covers a slow start.
	t.Setenv("TOLLGATE_CLOCK", "2026-05-01T23:59:48+02:00")
	s, adminURL := adminStack(t, headerPolicy(`models:
  - {name: qwen3, backend: sim}
quotas:
  - {name: daily, model: qwen3, cost: requests, limit: 1, per: calendar-day, timezone: Europe/Berlin}
`))
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 2, false)); got != "[200 429]" {
		t.Fatalf("alice: %s", got)
	}
	quotaChange(t, adminURL, "grant", "--user", "alice", "--quota", "daily", "--amount", "5")
	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
	if r.status != 200 || r.header.Get("x-ratelimit-limit-requests") != "6" {
		t.Fatalf("after the grant: %d, limit %q", r.status, r.header.Get("x-ratelimit-limit-requests"))
	}
	testutil.Eventually(t, 20*time.Second, "2 May in Berlin", func() error {
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
		if r.status != 200 || r.header.Get("x-ratelimit-limit-requests") != "1" {
			return fmt.Errorf("status %d, limit %q", r.status, r.header.Get("x-ratelimit-limit-requests"))
		}
		return nil
	})
}
