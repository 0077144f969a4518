package main

import (
	"fmt"
	"sort"
	"time"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/translate"
)

// retireMargin is added to the longest a request may last when keeping a removed quota.
const retireMargin = time.Minute

// quotaRetirement keeps quotas that a reload removed in the ratelimit service's config for as
// long as a request started before the reload may still run. Such a request is charged when it
// ends, to the counters of the policy it started under, and the ratelimit service counts only
// descriptors its config knows: without this, a stream in flight when its model or quota was
// removed would end up charged nothing.
type quotaRetirement struct {
	published []translate.QuotaNode // quota nodes of the last published config, retired ones included
	retired   map[string]retiredQuota
}

type retiredQuota struct {
	node  translate.QuotaNode
	until time.Time
}

// plan returns the configs to publish — configs plus the quotas still within their grace
// period — and the state to keep once they are published. grace is how long a request may
// last under the policy being replaced.
func (q *quotaRetirement) plan(now time.Time, grace time.Duration, configs []*rlsconfv3.RateLimitConfig) ([]*rlsconfv3.RateLimitConfig, quotaRetirement) {
	current := map[string]bool{}
	for _, n := range translate.QuotaNodes(configs) {
		current[n.Key()] = true
	}
	next := quotaRetirement{retired: map[string]retiredQuota{}}
	for key, r := range q.retired {
		if !current[key] && now.Before(r.until) {
			next.retired[key] = r
		}
	}
	for _, n := range q.published {
		key := n.Key()
		if _, ok := next.retired[key]; ok || current[key] {
			continue
		}
		if _, expired := q.retired[key]; expired {
			continue
		}
		next.retired[key] = retiredQuota{node: n, until: now.Add(grace + retireMargin)}
	}
	extra := make([]translate.QuotaNode, 0, len(next.retired))
	for _, r := range next.retired {
		extra = append(extra, r.node)
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i].Key() < extra[j].Key() })
	out := translate.WithQuotaNodes(configs, extra)
	next.published = translate.QuotaNodes(out)
	return out, next
}

// summary lists the retired quotas for the status page.
func (q *quotaRetirement) summary() []string {
	out := make([]string, 0, len(q.retired))
	for _, r := range q.retired {
		out = append(out, fmt.Sprintf("%s on %s: removed, still counted until %s",
			r.node.Node.GetValue(), r.node.Model, r.until.UTC().Format(time.RFC3339)))
	}
	sort.Strings(out)
	return out
}
