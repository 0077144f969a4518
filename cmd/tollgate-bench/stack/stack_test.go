package stack

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

func TestGatewayPolicyIsValid(t *testing.T) {
	g := &Gateway{simPort: 9000, ports: gatewayPorts{listener: 9001, extProc: 9002, rateLimit: 9003}}
	p, err := policies.Parse("policy.yaml", []byte(g.Policy(PolicyOptions{Models: []string{"added-0"}})), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.RateLimit.FailureMode != policies.FailureModeClosed {
		t.Errorf("failure mode %q: an overloaded ratelimit path would pass requests unchecked", p.RateLimit.FailureMode)
	}
	if len(p.Models) != 2 || len(p.Quotas) != 1 || p.Quotas[0].Limit.Count != MaxLimit {
		t.Errorf("models %d, quotas %+v: want qwen3 plus the added model, one quota at the maximum", len(p.Models), p.Quotas)
	}
	limited, err := policies.Parse("policy.yaml", []byte(g.Policy(PolicyOptions{Limit: 77})), nil)
	if err != nil {
		t.Fatal(err)
	}
	if limited.Quotas[0].Limit.Count != 77 {
		t.Errorf("limit %d, want 77", limited.Quotas[0].Limit.Count)
	}
	extProcOnly, err := policies.Parse("policy.yaml", []byte(g.Policy(PolicyOptions{NoQuotas: true})), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(extProcOnly.Quotas) != 0 || len(extProcOnly.Costs) != 1 {
		t.Errorf("quotas %+v, costs %+v: want no quota and the cost still computed", extProcOnly.Quotas, extProcOnly.Costs)
	}
}

// The floor's bootstrap must be one Envoy accepts; checked with the real binary when present.
func TestPlainBootstrapValidates(t *testing.T) {
	bin := testutil.Envoy(t)
	path := filepath.Join(t.TempDir(), "plain.yaml")
	if err := os.WriteFile(path, []byte(PlainBootstrap(18080, 19001, 18000)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--mode", "validate", "-c", path, "--disable-hot-restart").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate: %v\n%s", err, out)
	}
}
