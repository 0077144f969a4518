//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestRedisDownFailOpen: with the default failure mode, requests keep flowing while Redis is
// down, tollgate counts them as admitted without a decision, and enforcement resumes once Redis is
// back (empty: counters of a Redis without persistence start over).
func TestRedisDownFailOpen(t *testing.T) {
	s, redis := redisStack(t, strings.Replace(seedPolicy, "timeout: 1s", "timeout: 200ms", 1))
	if got := fmt.Sprint(sendN(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("before the outage: %s", got)
	}
	redis.stop()
	// Sent back to back: a charge made while Redis is down may stay in tollgate's backlog until
	// it is back, so there is no answer to wait for.
	for i, status := range sendBackToBack(t, s, "alice", "qwen3", 3, false) {
		if status != 200 {
			t.Errorf("request %d during the outage: %d, want 200 (fail open)", i+1, status)
		}
	}
	if v := failedOpenChecks(t, s); v < 3 {
		t.Errorf("tollgate counted %d fail-open admissions, want >= 3", v)
	}

	restartRedis(t, redis)
	testutil.Eventually(t, 20*time.Second, "enforcement resumes after Redis returns", func() error {
		if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 429 {
			return fmt.Errorf("status %d", got)
		}
		return nil
	})
}

// TestRedisDownFailClosed: with failureMode closed, requests get a JSON 503 while Redis is down.
func TestRedisDownFailClosed(t *testing.T) {
	policy := strings.Replace(seedPolicy, "timeout: 1s}", "timeout: 200ms, failureMode: closed}", 1)
	s, redis := redisStack(t, policy)
	if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 200 {
		t.Fatalf("before the outage: %d", got)
	}
	redis.stop()
	start := time.Now()
	r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "alice"}, chatBody("qwen3"))
	t.Logf("fail-closed answer after %s", time.Since(start).Round(time.Millisecond))
	if r.status != 503 {
		t.Fatalf("status %d during the outage, want 503: %s", r.status, r.body)
	}
	if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "service_unavailable" {
		t.Errorf("503 body: %s", r.body)
	}
	restartRedis(t, redis)
	testutil.Eventually(t, 20*time.Second, "requests pass again after Redis returns", func() error {
		if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 200 {
			return fmt.Errorf("status %d", got)
		}
		return nil
	})
}

// redisStack is quotaStack with a handle on its Redis.
func redisStack(t testing.TB, policy string) (*stack, *process) {
	t.Helper()
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, policy)
	s.startTollgate(t)
	port := s.redisPort
	redisAddr, redis := startRedisOn(t, port)
	s.startRateLimit(t, redisAddr)
	s.startEnvoy(t)
	redis.port = port
	return s, redis
}

func restartRedis(t testing.TB, old *process) {
	t.Helper()
	startRedisOn(t, old.port)
}

// statValue reads one counter from Envoy's /stats text (summed if several names end with it).
func statValue(stats, suffix string) int {
	total := 0
	for _, line := range strings.Split(stats, "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok || !strings.HasSuffix(name, suffix) {
			continue
		}
		var v int
		if _, err := fmt.Sscan(value, &v); err == nil {
			total += v
		}
	}
	return total
}

// failedOpenChecks is how many requests tollgate admitted because their quota check failed.
func failedOpenChecks(t testing.TB, s *stack) int {
	t.Helper()
	// The series is absent until the first such admission.
	v, _ := promSample(s.extProcMetrics(t), `tollgate_quota_checks_total{result="failed_open"}`)
	return int(v)
}
