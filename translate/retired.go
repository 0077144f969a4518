package translate

import (
	"sort"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/proto"
)

// QuotaNode is one quota's subtree of a ratelimit config: the quota descriptor with its user
// limits, and where it hangs (domain and model).
type QuotaNode struct {
	Domain, Model string
	Node          *rlsconfv3.RateLimitDescriptor
}

// Key identifies the counters a quota node governs.
func (n QuotaNode) Key() string { return n.Domain + "\x00" + n.Model + "\x00" + n.Node.GetValue() }

// QuotaNodes lists the quota subtrees of configs, in config order.
func QuotaNodes(configs []*rlsconfv3.RateLimitConfig) []QuotaNode {
	var out []QuotaNode
	for _, c := range configs {
		for _, m := range c.GetDescriptors() {
			for _, q := range m.GetDescriptors() {
				out = append(out, QuotaNode{Domain: c.GetDomain(), Model: m.GetValue(), Node: q})
			}
		}
	}
	return out
}

// WithQuotaNodes returns configs with extra quota subtrees added, each to its domain's config
// under its model, unless that model already has a quota of the same name. The input is not
// modified. Models and quotas stay sorted by name, as Translate orders them, so the result is
// as deterministic as its input.
func WithQuotaNodes(configs []*rlsconfv3.RateLimitConfig, extra []QuotaNode) []*rlsconfv3.RateLimitConfig {
	if len(extra) == 0 {
		return configs
	}
	out := make([]*rlsconfv3.RateLimitConfig, 0, len(configs)+1)
	byDomain := map[string]*rlsconfv3.RateLimitConfig{}
	for _, c := range configs {
		clone := proto.Clone(c).(*rlsconfv3.RateLimitConfig)
		out = append(out, clone)
		byDomain[clone.GetDomain()] = clone
	}
	have := map[string]bool{}
	for _, n := range QuotaNodes(out) {
		have[n.Key()] = true
	}
	for _, n := range extra {
		if have[n.Key()] {
			continue
		}
		have[n.Key()] = true
		cfg := byDomain[n.Domain]
		if cfg == nil {
			cfg = &rlsconfv3.RateLimitConfig{Name: n.Domain, Domain: n.Domain}
			byDomain[n.Domain] = cfg
			out = append(out, cfg)
		}
		var model *rlsconfv3.RateLimitDescriptor
		for _, m := range cfg.Descriptors {
			if m.GetValue() == n.Model {
				model = m
				break
			}
		}
		if model == nil {
			model = &rlsconfv3.RateLimitDescriptor{Key: DescriptorModel, Value: n.Model}
			cfg.Descriptors = append(cfg.Descriptors, model)
		}
		model.Descriptors = append(model.Descriptors, proto.Clone(n.Node).(*rlsconfv3.RateLimitDescriptor))
	}
	for _, cfg := range out {
		sort.SliceStable(cfg.Descriptors, func(i, j int) bool { return cfg.Descriptors[i].GetValue() < cfg.Descriptors[j].GetValue() })
		for _, m := range cfg.Descriptors {
			sort.SliceStable(m.Descriptors, func(i, j int) bool { return m.Descriptors[i].GetValue() < m.Descriptors[j].GetValue() })
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].GetDomain() < out[j].GetDomain() })
	return out
}
