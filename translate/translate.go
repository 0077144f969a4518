// Package translate turns a valid policy into everything tollgate serves: Envoy listeners,
// routes and clusters, the ratelimit service's RateLimitConfig, and the ext_proc server's
// configuration. It is pure and
// deterministic — no I/O, no clock, no logging — so the same policy always yields the same bytes
// (and the same xDS version), whatever the order of its lists.
package translate

import (
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/policies"
)

// Output is the full configuration derived from one policy.
type Output struct {
	Listeners        []*listenerv3.Listener
	Routes           []*routev3.RouteConfiguration
	Clusters         []*clusterv3.Cluster
	RateLimitConfigs []*rlsconfv3.RateLimitConfig
	// ExtProc is the ext_proc server's configuration. It holds the backends' upstream keys,
	// which are never published over xDS.
	ExtProc *extproc.Config
}

// Translate builds the resources for a policy that policies.Parse accepted. It does not
// re-validate; an error means the policy slipped past validation in a way that cannot be served.
func Translate(in *policies.Policy) (*Output, error) {
	p := newInput(in)

	l, err := listener(p)
	if err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	rc, err := routeConfig(p)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	clusters, err := clusters(p)
	if err != nil {
		return nil, fmt.Errorf("clusters: %w", err)
	}
	extProc, err := extProcConfig(p)
	if err != nil {
		return nil, fmt.Errorf("ext_proc config: %w", err)
	}
	out := &Output{
		Listeners: []*listenerv3.Listener{l},
		Routes:    []*routev3.RouteConfiguration{rc},
		Clusters:  clusters,
		ExtProc:   extProc,
	}
	if len(p.Quotas) > 0 {
		rl, err := rateLimitConfig(p)
		if err != nil {
			return nil, fmt.Errorf("ratelimit config: %w", err)
		}
		out.RateLimitConfigs = []*rlsconfv3.RateLimitConfig{rl}
	}
	return out, nil
}

// clusters: every backend that a model uses, plus tollgate's ext_proc and ratelimit services.
// The ratelimit cluster exists even without quotas, so adding the first quota is a route change
// only.
func clusters(p *input) ([]*clusterv3.Cluster, error) {
	used := map[string]bool{}
	for _, m := range p.Models {
		used[m.Backend] = true
	}
	var out []*clusterv3.Cluster
	for _, b := range p.Backends {
		if !used[b.Name] {
			continue
		}
		c, err := backendCluster(b)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	extProc, err := extProcCluster(p.ExtProc, p.Listener.MaxConcurrentRequests)
	if err != nil {
		return nil, err
	}
	out = append(out, extProc)
	if usesJWT(p) && p.Identity.JWT.JWKSURI != "" {
		jwks, err := jwksCluster(p)
		if err != nil {
			return nil, err
		}
		out = append(out, jwks)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// input is the policy as translation reads it: every named list in name order, so the output
// never depends on the order the operator wrote them in, plus the lookups translation needs
// (built once, so translation stays linear in the size of the policy).
type input struct {
	*policies.Policy
	// quotasByModel holds, in name order, the quotas that count each model's requests: its
	// own and those of every model.
	quotasByModel map[string][]policies.Quota
	// modelsWithQuotas lists, in name order, the models that have quotas.
	modelsWithQuotas []string
	// usersOf lists each tier's users.
	usersOf map[string][]string
}

func newInput(in *policies.Policy) *input {
	p := *in
	p.Backends = sortedBy(in.Backends, func(b policies.Backend) string { return b.Name })
	p.Models = sortedBy(in.Models, func(m policies.Model) string { return m.Name })
	p.Costs = sortedBy(in.Costs, func(c policies.Cost) string { return c.Name })
	p.Quotas = sortedBy(in.Quotas, func(q policies.Quota) string { return q.Name })
	v := &input{Policy: &p, quotasByModel: map[string][]policies.Quota{}, usersOf: map[string][]string{}}
	for _, q := range p.Quotas {
		for _, m := range p.Models {
			if q.Model != "" && q.Model != m.Name {
				continue
			}
			if len(v.quotasByModel[m.Name]) == 0 {
				v.modelsWithQuotas = append(v.modelsWithQuotas, m.Name)
			}
			v.quotasByModel[m.Name] = append(v.quotasByModel[m.Name], q)
		}
	}
	sort.Strings(v.modelsWithQuotas)
	for _, t := range p.Tiers {
		v.usersOf[t.Name] = t.Users
	}
	return v
}

// sortedBy returns a sorted copy of items, ordered by the key of each.
func sortedBy[T any](items []T, key func(T) string) []T {
	out := append([]T(nil), items...)
	sort.SliceStable(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}
