// Package reload measures how long a policy edit takes to take effect through the real
// processes: from the moment the file is saved until Envoy routes a newly added model, and
// until the ratelimit service answers with a changed limit.
package reload

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// pollInterval is how often a condition is checked after a save: small against the latencies
// measured (tens of milliseconds), large enough not to load the machine.
const pollInterval = 2 * time.Millisecond

// editTimeout bounds one edit; a reload slower than this is a failure, not a data point.
const editTimeout = 10 * time.Second

// Envoy saves edits policies, each adding one model, and returns for each the time from the
// save until a request for the new model passes the gateway (200). The policy is put back
// afterwards.
func Envoy(ctx context.Context, g *stack.Gateway, edits int) ([]time.Duration, error) {
	defer restore(g)
	var models []string
	out := make([]time.Duration, 0, edits)
	for i := range edits {
		model := fmt.Sprintf("added-%d", i)
		models = append(models, model)
		saved := time.Now()
		if err := g.WritePolicy(g.Policy(stack.PolicyOptions{Models: models})); err != nil {
			return out, err
		}
		err := proc.Poll(ctx, editTimeout, pollInterval, "Envoy serving "+model, func() error {
			return g.Ask(model, "reload-probe")
		})
		if err != nil {
			return out, err
		}
		out = append(out, time.Since(saved))
	}
	return out, nil
}

// RateLimit saves edits policies, each with a new limit on qwen3, and returns for each the
// time from the save until the ratelimit service's check-only answer reports that limit.
func RateLimit(ctx context.Context, g *stack.Gateway, edits int) ([]time.Duration, error) {
	defer restore(g)
	client, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		return nil, err
	}
	defer func() { _ = client.Close(context.Background()) }()
	p, err := policies.Parse("policy.yaml", []byte(g.Policy(stack.PolicyOptions{})), nil)
	if err != nil {
		return nil, err
	}
	d := rlsclient.Descriptor{Entries: translate.UserQuotas(p, "reload-probe", "", "qwen3", time.Now())[0].Entries}
	out := make([]time.Duration, 0, edits)
	for i := range edits {
		limit := uint64(stack.MaxLimit - 1 - i)
		saved := time.Now()
		if err := g.WritePolicy(g.Policy(stack.PolicyOptions{Limit: limit})); err != nil {
			return out, err
		}
		err := proc.Poll(ctx, editTimeout, pollInterval, fmt.Sprintf("ratelimit service reporting limit %d", limit), func() error {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			st, err := client.Check(cctx, g.RateLimitAddr, p.RateLimit.Domain, []rlsclient.Descriptor{d}, time.Second)
			if err != nil {
				return err
			}
			if st[0].Limit.PerWindow != limit {
				return fmt.Errorf("limit still %d", st[0].Limit.PerWindow)
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		out = append(out, time.Since(saved))
	}
	return out, nil
}

func restore(g *stack.Gateway) { _ = g.WritePolicy(g.Policy(stack.PolicyOptions{})) }

// Percentile is the nearest-rank q-quantile (0 < q ≤ 1) of ds; 0 for none.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(rank, 0), len(s)-1)]
}
