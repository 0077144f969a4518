package main

import (
	"strings"
	"testing"
	"time"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/translate"
)

func rateLimitConfig(quotasByModel map[string][]string) []*rlsconfv3.RateLimitConfig {
	cfg := &rlsconfv3.RateLimitConfig{Name: "tollgate", Domain: "tollgate"}
	for _, model := range []string{"gpt-4", "qwen3"} {
		quotas, ok := quotasByModel[model]
		if !ok {
			continue
		}
		m := &rlsconfv3.RateLimitDescriptor{Key: translate.DescriptorModel, Value: model}
		for _, q := range quotas {
			m.Descriptors = append(m.Descriptors, &rlsconfv3.RateLimitDescriptor{
				Key: translate.DescriptorQuota, Value: q,
				Descriptors: []*rlsconfv3.RateLimitDescriptor{{Key: translate.DescriptorUser, RateLimit: &rlsconfv3.RateLimitPolicy{
					Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: 50,
				}}},
			})
		}
		cfg.Descriptors = append(cfg.Descriptors, m)
	}
	return []*rlsconfv3.RateLimitConfig{cfg}
}

func quotaKeys(configs []*rlsconfv3.RateLimitConfig) string {
	var keys []string
	for _, n := range translate.QuotaNodes(configs) {
		keys = append(keys, n.Model+"/"+n.Node.GetValue())
	}
	return strings.Join(keys, " ")
}

// TestRemovedQuotasStayCountedForAWhile: a quota removed by a reload stays in the ratelimit
// service's config until every request started before the reload has ended (the old policy's
// request timeout plus a margin), so their charges still count; after that it goes. A quota that
// comes back is not doubled.
func TestRemovedQuotasStayCountedForAWhile(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	const grace = 5 * time.Minute
	var r quotaRetirement

	out, r := r.plan(t0, grace, rateLimitConfig(map[string][]string{"qwen3": {"q-hour"}, "gpt-4": {"g-hour"}}))
	if got := quotaKeys(out); got != "gpt-4/g-hour qwen3/q-hour" {
		t.Fatalf("first publish: %s", got)
	}

	// qwen3 is removed from the policy: its quota stays, its model node too.
	out, r = r.plan(t0.Add(time.Minute), grace, rateLimitConfig(map[string][]string{"gpt-4": {"g-hour"}}))
	if got := quotaKeys(out); got != "gpt-4/g-hour qwen3/q-hour" {
		t.Fatalf("right after removing qwen3: %s", got)
	}
	if s := r.summary(); len(s) != 1 || !strings.Contains(s[0], "q-hour on qwen3") {
		t.Errorf("status summary %q", s)
	}

	// Another edit within the grace period keeps it, without moving its deadline.
	out, r = r.plan(t0.Add(5*time.Minute), grace, rateLimitConfig(map[string][]string{"gpt-4": {"g-hour", "g-day"}}))
	if got := quotaKeys(out); got != "gpt-4/g-day gpt-4/g-hour qwen3/q-hour" {
		t.Fatalf("edit within the grace period: %s", got)
	}

	// After the old request timeout and the margin, the next reload drops it.
	out, r = r.plan(t0.Add(time.Minute+grace+retireMargin+time.Second), grace, rateLimitConfig(map[string][]string{"gpt-4": {"g-hour"}}))
	if got := quotaKeys(out); got != "gpt-4/g-day gpt-4/g-hour" {
		t.Fatalf("after the grace period: %s (g-day was just removed and must stay)", got)
	}
	if got := quotaKeys(out); strings.Contains(got, "qwen3") {
		t.Fatalf("expired quota still published: %s", got)
	}

	// A removed quota that comes back is there once.
	out, _ = r.plan(t0.Add(10*time.Minute), grace, rateLimitConfig(map[string][]string{"gpt-4": {"g-day", "g-hour"}}))
	if got := quotaKeys(out); got != "gpt-4/g-day gpt-4/g-hour" {
		t.Fatalf("quota back in the policy: %s", got)
	}
}
