package translate_test

import (
	"fmt"
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// TestCheckAndChargeShareADescriptor: for every quota of every golden policy, Envoy's
// request-time check spends nothing and builds the descriptor that ModelQuotas gives the ext_proc
// server for its charge (the same Redis counter), and UserQuotas names that same descriptor.
func TestCheckAndChargeShareADescriptor(t *testing.T) {
	for _, in := range []string{"testdata/in/seed.yaml", "testdata/in/tiers.yaml", "testdata/in/https-backends.yaml"} {
		p, _, err := policies.Load(in, testEnv)
		if err != nil {
			t.Fatal(err)
		}
		out, err := translate.Translate(p)
		if err != nil {
			t.Fatal(err)
		}
		perRoute := map[string]*ratelimitv3.RateLimitPerRoute{}
		for _, r := range out.Routes[0].VirtualHosts[0].Routes {
			a, ok := r.TypedPerFilterConfig[envoy.FilterRateLimit]
			if !ok {
				continue
			}
			rl := &ratelimitv3.RateLimitPerRoute{}
			if err := a.UnmarshalTo(rl); err != nil {
				t.Fatal(err)
			}
			perRoute[r.Name] = rl
		}
		byModel := translate.ModelQuotas(p)
		for _, q := range p.Quotas {
			rl := perRoute[envoy.ModelRoute(q.Model)]
			if rl == nil {
				t.Fatalf("%s: route of %s has no rate limits", in, q.Model)
			}
			var checks []string
			for _, limit := range rl.RateLimits {
				if !strings.Contains(fmt.Sprint(limit.Actions), q.Name) {
					continue
				}
				if limit.ApplyOnStreamDone || limit.HitsAddend.GetNumber() == nil || limit.HitsAddend.GetNumber().GetValue() != 0 {
					t.Errorf("%s %s: Envoy must only check (hits 0 at request time), has %v", in, q.Name, limit)
				}
				var entries []string
				for _, a := range limit.Actions {
					if g := a.GetGenericKey(); g != nil {
						entries = append(entries, g.DescriptorKey+"="+g.DescriptorValue)
					} else if h := a.GetRequestHeaders(); h != nil {
						entries = append(entries, h.DescriptorKey+"=<"+h.HeaderName+">")
					}
				}
				checks = append(checks, strings.Join(entries, ","))
			}
			var charged []string
			for _, mq := range byModel[q.Model] {
				if mq.Quota.Name != q.Name {
					continue
				}
				var entries []string
				for _, e := range mq.Entries {
					entries = append(entries, e.Key+"="+e.Value)
				}
				charged = append(charged, strings.Join(append(entries, translate.DescriptorUser+"=<"+p.Identity.Header+">"), ","))
			}
			if len(checks) != 1 || len(charged) != 1 || checks[0] != charged[0] {
				t.Fatalf("%s %s: want one check and one charge with equal descriptors, got\ncheck  %v\ncharge %v", in, q.Name, checks, charged)
			}
			uqs := translate.UserQuotas(p, "alice", q.Model)
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
