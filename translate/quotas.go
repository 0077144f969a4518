package translate

import (
	"fmt"
	"sort"
	"strings"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
)

// Descriptor keys. A quota's counter in the ratelimit service is keyed by
// domain + model + quota name + user id (+ the window), all taken from names, so reordering the
// policy file never moves a user onto another counter.
const (
	DescriptorModel = "model"
	DescriptorQuota = "quota"
	DescriptorUser  = "user"
)

var units = map[string]rlsconfv3.RateLimitUnit{
	"second": rlsconfv3.RateLimitUnit_SECOND,
	"minute": rlsconfv3.RateLimitUnit_MINUTE,
	"hour":   rlsconfv3.RateLimitUnit_HOUR,
	"day":    rlsconfv3.RateLimitUnit_DAY,
	"week":   rlsconfv3.RateLimitUnit_WEEK,
	"month":  rlsconfv3.RateLimitUnit_MONTH,
	"year":   rlsconfv3.RateLimitUnit_YEAR,
}

// rateLimitConfig is the ratelimit service's view of every quota: one descriptor tree in the
// policy's domain, model → quota → user (any value: one counter per distinct user).
func rateLimitConfig(p *input) (*rlsconfv3.RateLimitConfig, error) {
	cfg := &rlsconfv3.RateLimitConfig{Name: p.RateLimit.Domain, Domain: p.RateLimit.Domain}
	for _, m := range p.modelsWithQuotas {
		modelNode := &rlsconfv3.RateLimitDescriptor{Key: DescriptorModel, Value: m}
		for _, q := range p.quotasByModel[m] {
			unit, ok := units[strings.ToLower(q.Per)]
			if !ok {
				return nil, fmt.Errorf("quota %q: unknown unit %q", q.Name, q.Per)
			}
			quotaNode := &rlsconfv3.RateLimitDescriptor{Key: DescriptorQuota, Value: q.Name}
			limits := userLimits(p, q)
			users := make([]string, 0, len(limits))
			for u := range limits {
				users = append(users, u)
			}
			sort.Strings(users)
			// A user with an override has a descriptor of their own; the service matches a
			// key with a value before the key alone. Either way the counter is keyed by the
			// request's entries, so adding an override never resets what a user has spent.
			for _, u := range users {
				quotaNode.Descriptors = append(quotaNode.Descriptors, userDescriptor(q, unit, u, limits[u]))
			}
			quotaNode.Descriptors = append(quotaNode.Descriptors, userDescriptor(q, unit, "", q.Limit))
			modelNode.Descriptors = append(modelNode.Descriptors, quotaNode)
		}
		cfg.Descriptors = append(cfg.Descriptors, modelNode)
	}
	return cfg, nil
}

// UserQuota is one quota as it applies to one user: the descriptor the ext_proc server checks
// and charges for that user's requests, which is the counter the ratelimit service keeps.
type UserQuota struct {
	Quota   policies.Quota
	Entries []rlsclient.Entry
}

// UserQuotas lists the quotas that apply to user, for one model or (model "") all of them,
// sorted by model then quota name, each with its counter's descriptor entries: the counters
// `tollgate quota` reads, the same the ext_proc server checks and charges.
func UserQuotas(in *policies.Policy, user, model string) []UserQuota {
	p := newInput(in)
	var out []UserQuota
	for _, m := range p.modelsWithQuotas {
		if model != "" && m != model {
			continue
		}
		for _, q := range p.quotasByModel[m] {
			entries := append(quotaEntries(q), rlsclient.Entry{Key: DescriptorUser, Value: user})
			out = append(out, UserQuota{Quota: q, Entries: entries})
		}
	}
	return out
}

// userLimits returns the users whose limit on q differs from the default: tier members get
// their tier's override, and a user's own override wins over it.
func userLimits(p *input, q policies.Quota) map[string]uint64 {
	tierLimit := map[string]uint64{}
	limits := map[string]uint64{}
	for _, o := range q.Overrides {
		if o.Tier != "" {
			tierLimit[o.Tier] = o.Limit
		}
	}
	for t, l := range tierLimit {
		for _, u := range p.usersOf[t] {
			limits[u] = l
		}
	}
	for _, o := range q.Overrides {
		if o.User != "" {
			limits[o.User] = o.Limit
		}
	}
	return limits
}

// userDescriptor is the leaf of a quota's tree: one user (or, with user "", every user).
func userDescriptor(q policies.Quota, unit rlsconfv3.RateLimitUnit, user string, limit uint64) *rlsconfv3.RateLimitDescriptor {
	return &rlsconfv3.RateLimitDescriptor{
		Key:   DescriptorUser,
		Value: user,
		// Validation keeps limits within uint32, the service's field size.
		RateLimit:  &rlsconfv3.RateLimitPolicy{Unit: unit, RequestsPerUnit: uint32(limit), Name: q.Name},
		ShadowMode: q.Shadow,
	}
}
