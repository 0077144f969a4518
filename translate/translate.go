// Package translate turns a valid policy into everything tollgate serves: Envoy listeners,
// routes and clusters, and the ratelimit service's RateLimitConfig. It is pure and
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

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

// Output is the full configuration derived from one policy.
type Output struct {
	Listeners        []*listenerv3.Listener
	Routes           []*routev3.RouteConfiguration
	Clusters         []*clusterv3.Cluster
	RateLimitConfigs []*rlsconfv3.RateLimitConfig
}

// Translate builds the resources for a policy that policies.Parse accepted. It does not
// re-validate; an error means the policy slipped past validation in a way that cannot be served.
func Translate(in *policies.Policy) (*Output, error) {
	p := sorted(in)

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
	out := &Output{
		Listeners: []*listenerv3.Listener{l},
		Routes:    []*routev3.RouteConfiguration{rc},
		Clusters:  clusters,
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
func clusters(p *policies.Policy) ([]*clusterv3.Cluster, error) {
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
	extProc, err := grpcCluster(envoy.ClusterExtProc, p.ExtProc)
	if err != nil {
		return nil, err
	}
	rateLimit, err := grpcCluster(envoy.ClusterRateLimit, p.RateLimit.Endpoint)
	if err != nil {
		return nil, err
	}
	out = append(out, extProc, rateLimit)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// sorted returns a shallow copy of the policy whose named lists are in name order, so the output
// never depends on the order the operator wrote them in.
func sorted(in *policies.Policy) *policies.Policy {
	p := *in
	p.Backends = append([]policies.Backend(nil), in.Backends...)
	sort.Slice(p.Backends, func(i, j int) bool { return p.Backends[i].Name < p.Backends[j].Name })
	p.Models = append([]policies.Model(nil), in.Models...)
	sort.Slice(p.Models, func(i, j int) bool { return p.Models[i].Name < p.Models[j].Name })
	p.Costs = append([]policies.Cost(nil), in.Costs...)
	sort.Slice(p.Costs, func(i, j int) bool { return p.Costs[i].Name < p.Costs[j].Name })
	p.Quotas = append([]policies.Quota(nil), in.Quotas...)
	sort.Slice(p.Quotas, func(i, j int) bool { return p.Quotas[i].Name < p.Quotas[j].Name })
	return &p
}
