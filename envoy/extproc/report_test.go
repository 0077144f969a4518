package extproc

import (
	"encoding/json"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	"github.com/tollgate-dev/tollgate/policies"
)

// TestQuotaEndpoint: GET /v1/quota answers the caller's report as JSON without going upstream
// (an empty list without quotas, with a query string too); another method is a JSON 405; no
// identity is a 401 as for model calls.
func TestQuotaEndpoint(t *testing.T) {
	fake := rlsclienttest.Start(t)
	for _, c := range []struct {
		name   string
		cfg    *Config
		method string
		path   string
		user   bool
		status int
		quotas int
	}{
		{"no quotas", testConfig(t), "GET", "/v1/quota", true, 200, 0},
		{"one quota", quotaConfig(t, fake.Addr, userQuota("hourly", "llm_total_token")), "GET", "/v1/quota?user=bob", true, 200, 1},
		{"POST", testConfig(t), "POST", "/v1/quota", true, 405, 0},
		{"no identity", testConfig(t), "GET", "/v1/quota", false, 401, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.cfg)
			conn := h.open(t)
			kv := []string{":method", c.method, ":path", c.path, ":authority", "gateway"}
			if c.user {
				kv = append(kv, policies.DefaultIdentityHeader, "alice")
			}
			resp := conn.send(requestHeaders(true, kv...))
			if c.status != 200 {
				immediate(t, resp, c.status)
				return
			}
			ir := resp.GetImmediateResponse()
			if ir == nil || ir.GetStatus().GetCode() != 200 {
				t.Fatalf("want a 200 answer, got %v", resp)
			}
			var rep QuotaReport
			if err := json.Unmarshal(ir.GetBody(), &rep); err != nil {
				t.Fatalf("body %s: %v", ir.GetBody(), err)
			}
			if rep.User != "alice" || len(rep.Quotas) != c.quotas {
				t.Errorf("report %+v, want alice's with %d quotas", rep, c.quotas)
			}
		})
	}
}
