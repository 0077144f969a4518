// `tollgate run`: the readiness checks of its parts.

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// startPollInterval is how often readiness is polled.
const startPollInterval = 50 * time.Millisecond

// polling turns a probe into a wait: probe until it succeeds or ctx ends (then the probe's
// last answer says why).
func polling(probe func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error { return launch.Poll(ctx, startPollInterval, probe) }
}

func httpGet(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// readinessProbeUser is the user a readiness check asks about. The check spends nothing.
const readinessProbeUser = "tollgate-run-readiness-probe"

// limitsProbe returns a probe that succeeds once the ratelimit service at addr applies a limit
// to the policy's first quota, or nil when the policy has no quotas to wait for.
func limitsProbe(p *policies.Policy, addr string) func(context.Context) error {
	quotas := translate.UserQuotas(p, readinessProbeUser, readinessProbeUser, "", time.Now())
	if len(quotas) == 0 {
		return nil
	}
	d := rlsclient.Descriptor{Entries: quotas[0].Entries}
	domain := p.RateLimit.Domain
	target := launch.DialAddr(addr)
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		st, err := rlsclient.CheckOnce(ctx, target, domain, []rlsclient.Descriptor{d})
		if err != nil {
			return err
		}
		if !st[0].Limit.Matched() {
			return fmt.Errorf("no limit for %s yet", d)
		}
		return nil
	}
}
