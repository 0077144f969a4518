package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Quota reports. A caller asks the gateway for their own quotas (GET QuotaPath, identified as
// for model calls, so nobody reads another's numbers); an operator asks the admin API for
// anyone's. Both read the same thing: the ratelimit service's check for each quota that counts
// the caller's requests (limit, what remains, the reset), and each counter as it is in Redis,
// so that what was used is exact, also past the limit, where the service only says "nothing
// remains".

// QuotaPath is where a caller reads their own quotas on the gateway's listener.
const QuotaPath = "/v1/quota"

// QuotaReport is what one caller has of each quota that counts their requests.
type QuotaReport struct {
	Object string        `json:"object"` // "quota"
	User   string        `json:"user"`
	Team   string        `json:"team,omitempty"`
	Quotas []QuotaStatus `json:"quotas"`
}

// QuotaStatus is one quota as it stands for one caller. Amounts are tokens or requests, or, in
// money quotas, units of the currency (Unit is then its code).
type QuotaStatus struct {
	Name   string `json:"name"`
	Model  string `json:"model,omitempty"` // absent: every model
	Scope  string `json:"scope"`           // user, team or global
	Unit   string `json:"unit"`            // tokens, requests, or a currency code
	Window string `json:"window"`          // hour, calendar-month in Europe/Berlin, ...
	Limit  any    `json:"limit"`
	Used   any    `json:"used"`
	// UsedExact is false when the counters could not be read: Used is then what the service's
	// check implies, at most the limit.
	UsedExact       bool      `json:"used_exact"`
	Remaining       any       `json:"remaining"`
	ResetsAt        time.Time `json:"resets_at"`
	ResetsInSeconds int64     `json:"resets_in_seconds"`
	Shadow          bool      `json:"shadow,omitempty"`
}

// errNoQuotaService says the configuration has no ratelimit service to ask.
var errNoQuotaService = errors.New("no quotas are configured")

// callerQuotas are the quotas that count some request of a caller of team (any model), once
// each, in name order.
func (c *Config) callerQuotas(team string) []Quota {
	var out []Quota
	seen := map[string]bool{}
	for _, qs := range c.Quotas {
		for _, q := range qs {
			if !seen[q.Name] && q.appliesTo(team) {
				seen[q.Name] = true
				out = append(out, q)
			}
		}
	}
	slices.SortFunc(out, func(a, b Quota) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// report reads what user (of team) has of every quota that counts their requests, at now on
// the calendar clock.
func report(ctx context.Context, cfg *Config, rls *rlsclient.Client, counters CounterStore, grants map[string]uint64, user, team string, now time.Time) (QuotaReport, error) {
	out := QuotaReport{Object: "quota", User: user, Team: team, Quotas: []QuotaStatus{}}
	quotas := cfg.callerQuotas(team)
	if len(quotas) == 0 {
		return out, nil
	}
	if rls == nil || cfg.RateLimitAddress == "" {
		return out, errNoQuotaService
	}
	descriptors := make([]rlsclient.Descriptor, len(quotas))
	for i, q := range quotas {
		descriptors[i] = q.Descriptor(user, team, now, 0)
	}
	withGrants(grants, counters, cfg.RateLimitDomain, quotas, descriptors, user, team)
	timeout := cfg.QuotaCheckTimeout
	if timeout <= 0 {
		timeout = DefaultQuotaCheckTimeout
	}
	statuses, err := rls.Check(ctx, cfg.RateLimitAddress, cfg.RateLimitDomain, descriptors, timeout)
	if err != nil {
		return out, err
	}
	read, known := rlsclient.LimitedCounters(descriptors, statuses)
	used, countErr := rls.Counts(ctx, cfg.RateLimitDomain, read, time.Now()) // the service's clock
	for j, i := range known {
		q, s := quotas[i], statuses[i]
		st := QuotaStatus{
			Name: q.Name, Model: q.Model, Scope: q.Scope.String(), Window: q.windowName(s.Limit),
			Shadow: q.Shadow,
		}
		reset := q.resetIn(now, s.ResetIn)
		st.ResetsAt = now.Add(reset).Truncate(time.Second).UTC()
		st.ResetsInSeconds = int64(math.Ceil(reset.Seconds()))
		n := s.Limit.PerWindow - s.Remaining
		if countErr == nil {
			n, st.UsedExact = used[j], true
		}
		st.Unit, st.Limit, st.Used, st.Remaining = cfg.amounts(q, s.Limit.PerWindow, n, s.Remaining)
		out.Quotas = append(out.Quotas, st)
	}
	return out, nil
}

// amounts renders a quota's limit, use and remainder in its unit: counts as they are, money in
// units of the currency.
func (c *Config) amounts(q Quota, limit, used, remaining uint64) (unit string, l, u, r any) {
	switch q.Unit {
	case UnitMoney:
		return c.Money.Currency, c.Money.amount(limit), c.Money.amount(used), c.Money.amount(remaining)
	case UnitRequests:
		return "requests", limit, used, remaining
	default:
		return "tokens", limit, used, remaining
	}
}

// windowName names the quota's window: the service's unit in lower case ("hour", "month" for
// its 30 days), or the calendar period with its zone.
func (q Quota) windowName(l rlsclient.Limit) string {
	if q.Calendar != nil {
		return q.Calendar.String()
	}
	return strings.ToLower(l.Unit)
}

// answerQuota answers GET QuotaPath with the caller's own quota report.
func (ex *exchange) answerQuota(method string) *extprocv3.ProcessingResponse {
	if method != "GET" {
		r := refusal(405, outcomeRejected405, errorTypeInvalidRequest, "method_not_allowed", "use GET "+QuotaPath)
		r.headers = map[string]string{"allow": "GET"}
		return ex.reject(*r)
	}
	rep, err := report(ex.ctx, ex.cfg, ex.rls, ex.counters, ex.grants, ex.user, ex.team, ex.clock())
	if err != nil {
		ex.logger.Warn("quota report failed", "user", userForLog(ex.user), "error", err)
		return ex.reject(rejection{
			status: 503, outcome: outcomeQuotaUnavailable,
			err:     apiError{Message: "The gateway could not read the quotas. Try again later.", Type: errorTypeUnavailable},
			details: "tollgate_quota_report_failed",
		})
	}
	body, _ := json.Marshal(rep) // strings, integers and finite numbers: it cannot fail
	ex.finish(outcomeQuotaRead)
	return jsonResponse(200, map[string]string{"cache-control": "no-store"}, body, "tollgate_quota_report")
}
