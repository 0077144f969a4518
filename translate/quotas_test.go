package translate_test

import (
	"fmt"
	"testing"
	"time"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// TestQuotaDescriptorsNameConfiguredCounters: for every quota of every golden policy, the
// descriptor the ext_proc config gives the ext_proc server (checked and charged, with the user's entry
// appended) follows a path of the ratelimit service's descriptor tree down to a user leaf with
// a limit; a descriptor the tree does not know would be neither limited nor counted. UserQuotas
// names that same descriptor, and Envoy's routes carry no rate limits of their own.
func TestQuotaDescriptorsNameConfiguredCounters(t *testing.T) {
	for _, in := range []string{"testdata/in/seed.yaml", "testdata/in/tiers.yaml", "testdata/in/https-backends.yaml"} {
		p, _, err := policies.Load(in, testEnv)
		if err != nil {
			t.Fatal(err)
		}
		out, err := translate.Translate(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out.Routes[0].VirtualHosts[0].Routes {
			if len(r.GetRoute().GetRateLimits()) > 0 || len(r.TypedPerFilterConfig) > 1 {
				t.Errorf("%s: route %s has rate limits or filter configs of its own: %v", in, r.Name, r.TypedPerFilterConfig)
			}
		}
		tree := out.RateLimitConfigs[0]
		if tree.Domain != p.RateLimit.Domain {
			t.Fatalf("%s: ratelimit domain %q, want %q", in, tree.Domain, p.RateLimit.Domain)
		}
		// The counters the ext_proc server checks and charges are the ones the tree limits.
		for _, q := range p.Quotas {
			var entries []rlsclient.Entry
			for _, eq := range out.ExtProc.Quotas[q.Model] {
				if eq.Name == q.Name {
					entries = eq.Descriptor("alice", "", time.Now(), 0).Entries
				}
			}
			if entries == nil {
				t.Fatalf("%s: the ext_proc config misses %s on %s", in, q.Name, q.Model)
			}
			nodes := tree.Descriptors
			limited := false
			for i, e := range entries {
				// The service prefers a node with the entry's value, then one with no value,
				// which matches any value of its key (the default user).
				var exact, anyValue *rlsconfv3.RateLimitDescriptor
				for _, n := range nodes {
					switch {
					case n.Key == e.Key && n.Value == e.Value:
						exact = n
					case n.Key == e.Key && n.Value == "":
						anyValue = n
					}
				}
				next := exact
				if next == nil {
					next = anyValue
				}
				if next == nil {
					t.Fatalf("%s %s: descriptor %v leaves the ratelimit tree at %v", in, q.Name, entries, e)
				}
				limited = i == len(entries)-1 && next.RateLimit != nil
				nodes = next.Descriptors
			}
			if !limited {
				t.Errorf("%s %s: descriptor %v reaches no limit", in, q.Name, entries)
			}
			uqs := translate.UserQuotas(p, "alice", "", q.Model, time.Now())
			found := false
			for _, uq := range uqs {
				if uq.Quota.Name != q.Name {
					continue
				}
				found = true
				want := fmt.Sprintf("[{model %s} {quota %s} {user alice}]", q.Model, q.Name)
				if got := fmt.Sprint(uq.Entries); got != want {
					t.Errorf("%s: UserQuotas entries %s, want %s", in, got, want)
				}
			}
			if !found {
				t.Errorf("%s: UserQuotas(alice, %s) misses %s", in, q.Model, q.Name)
			}
		}
	}
}

// TestOverridesResolve: a user's own override beats their tier's, tier members get the tier's
// limit, everyone else the default.
func TestOverridesResolve(t *testing.T) {
	p, _, err := policies.Load("testdata/in/tiers.yaml", testEnv)
	if err != nil {
		t.Fatal(err)
	}
	out, err := translate.Translate(p)
	if err != nil {
		t.Fatal(err)
	}
	limits := map[string]uint32{}
	shadow := map[string]bool{}
	for _, m := range out.RateLimitConfigs[0].Descriptors {
		for _, q := range m.Descriptors {
			for _, u := range q.Descriptors {
				key := q.Value + "/" + u.Value
				limits[key] = u.RateLimit.RequestsPerUnit
				shadow[key] = u.ShadowMode
			}
		}
	}
	want := map[string]uint32{
		"qwen3-hourly/alice": 200, "qwen3-hourly/carol": 500, "qwen3-hourly/dave": 1000,
		"qwen3-hourly/": 50, "qwen3-daily/": 5000, "gpt-4-weighted-trial/": 100,
	}
	if fmt.Sprint(limits) != fmt.Sprint(want) {
		t.Errorf("limits %v, want %v", limits, want)
	}
	if !shadow["gpt-4-weighted-trial/"] || shadow["qwen3-hourly/"] {
		t.Errorf("shadow flags %v", shadow)
	}
	if _, ok := limits["qwen3-hourly/erin"]; ok {
		t.Errorf("erin's tier has no override on qwen3-hourly, yet she has a descriptor of her own")
	}
}
