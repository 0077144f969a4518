package extproc

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Admission. Once a request's model is known, and before it goes to the backend, the server
// asks the ratelimit service whether the user is already over one of the model's quotas and,
// in the same call, reserves the request's worst case on each (rlsclient.Admit); the
// reservation is settled when the exchange ends (charge.go). The ratelimit client batches the
// calls that queue up while the service is busy; each exchange gets its own statuses.

// Results of a check, the values of tollgate_quota_checks_total{result}.
const (
	checkOK          = "ok"            // under every quota
	checkOverLimit   = "over_limit"    // over one: answered 429
	checkFailedOpen  = "failed_open"   // the service did not answer; failure mode open admits
	checkFailedClose = "failed_closed" // the service did not answer; failure mode closed: 503
	// checkTooManyInFlight: the user had their cap of requests in flight; answered 429.
	checkTooManyInFlight = "too_many_in_flight"
)

// DefaultQuotaCheckTimeout bounds a check when Config.QuotaCheckTimeout is zero.
const DefaultQuotaCheckTimeout = 2 * time.Second

// admit decides whether the exchange's user may send the request on: whether every quota of
// its model still has room, before this request, once the requests already admitted have
// reserved their worst case. It reserves this request's worst case (worst) on each quota in
// the same call, to be settled when the request ends. It returns the rejection to answer with,
// or the x-ratelimit metadata of the enforced quota closest to its limit (nil when the model
// has no quotas or the check failed open).
func (ex *exchange) admit(worst llmapi.Usage) (*rejection, map[string]*structpb.Value) {
	if r := ex.holdConcurrency(); r != nil {
		return r, nil
	}
	quotas := ex.quotas
	if ex.rls == nil || ex.cfg.RateLimitAddress == "" || len(quotas) == 0 {
		return nil, nil
	}
	ex.admitted = ex.clock()
	descriptors := make([]rlsclient.Descriptor, len(quotas))
	for i, q := range quotas {
		descriptors[i] = q.Descriptor(ex.user, ex.team, ex.admitted, ex.reserve(q, worst))
		// A request quota's cost is known before the request runs, so the request must fit:
		// concurrent requests then cannot all pass the same check.
		descriptors[i].MustFit = q.Unit == UnitRequests
	}
	timeout := ex.cfg.QuotaCheckTimeout
	if timeout <= 0 {
		timeout = DefaultQuotaCheckTimeout
	}
	ex.carryCalendarCounters(descriptors, timeout)
	statuses, reservations, err := ex.rls.Admit(ex.ctx, ex.cfg.RateLimitAddress, ex.cfg.RateLimitDomain, descriptors, timeout)
	if err != nil {
		if ex.ctx.Err() != nil {
			// The client is gone; nothing is answered and nothing reached the backend.
			return &rejection{status: 499, outcome: outcomeCancelled, details: "tollgate_client_gone"}, nil
		}
		if ex.cfg.QuotaFailOpen {
			ex.metrics.quotaChecks.WithLabelValues(checkFailedOpen).Inc()
			ex.logger.Warn("quota check failed; admitting the request (failure mode open)",
				"model", ex.model, "user", userForLog(ex.user), "error", err)
			return nil, nil
		}
		ex.metrics.quotaChecks.WithLabelValues(checkFailedClose).Inc()
		ex.observeDuration("503")
		ex.logger.Warn("quota check failed; refusing the request (failure mode closed)",
			"model", ex.model, "user", userForLog(ex.user), "error", err)
		return &rejection{
			status:  503,
			outcome: outcomeQuotaUnavailable,
			err: apiError{
				Message: "The gateway could not check the token quota. Try again later.",
				Type:    errorTypeUnavailable,
			},
			details: "tollgate_quota_check_failed",
		}, nil
	}

	// The status that decides: the first enforced quota over its limit, else the enforced one
	// with the smallest share of its limit left, whose numbers the x-ratelimit headers carry. A shadow quota is
	// counted (and reserved) like any other, but never changes what the client sees.
	decisive, over := -1, false
	for i := range statuses {
		s := &statuses[i]
		if quotas[i].Shadow || !s.Limit.Matched() {
			continue
		}
		// A status taken before the request says the quota is spent once nothing remains; one
		// taken after counting the request (MustFit) only once the request did not fit.
		if s.OverLimit || (s.Remaining == 0 && !descriptors[i].MustFit) {
			decisive, over = i, true
			break
		}
		if decisive < 0 || leftShare(*s) < leftShare(statuses[decisive]) {
			decisive = i
		}
	}
	if over {
		ex.rls.Release(reservations, nil)
	} else {
		ex.reservations = reservations
	}
	if decisive < 0 {
		ex.metrics.quotaChecks.WithLabelValues(checkOK).Inc()
		return nil, nil
	}
	q, s := quotas[decisive], statuses[decisive]
	now := ex.clock()
	limit := rateLimitHeader(s.Limit, q.window(now, s.Limit.Window))
	reset := strconv.FormatInt(int64(math.Ceil(q.resetIn(now, s.ResetIn).Seconds())), 10)
	if !over {
		ex.metrics.quotaChecks.WithLabelValues(checkOK).Inc()
		return nil, map[string]*structpb.Value{
			envoy.MetadataRateLimitLimit:     structpb.NewStringValue(limit),
			envoy.MetadataRateLimitRemaining: structpb.NewStringValue(strconv.FormatUint(s.Remaining, 10)),
			envoy.MetadataRateLimitReset:     structpb.NewStringValue(reset),
		}
	}
	ex.metrics.quotaChecks.WithLabelValues(checkOverLimit).Inc()
	ex.observeDuration("429")
	ex.logger.Debug("request over its quota", "model", ex.model, "user", userForLog(ex.user), "quota", q.Name, "limit", limit)
	return &rejection{
		status:  429,
		outcome: outcomeRejected429,
		err: apiError{
			Message: ex.overLimitMessage(q, s.Limit, limit, reset),
			Type:    errorTypeRateLimit,
			Code:    optional(errorTypeRateLimit),
		},
		headers: map[string]string{
			"retry-after":           reset,
			"x-ratelimit-limit":     limit,
			"x-ratelimit-remaining": "0",
			"x-ratelimit-reset":     reset,
		},
		details: "tollgate_quota_exceeded",
	}, nil
}

// overLimitMessage says which quota refused the request and when it resets. limit is the
// x-ratelimit-limit rendering, reset the seconds to the window's end.
func (ex *exchange) overLimitMessage(q Quota, l rlsclient.Limit, limit, reset string) string {
	if q.Unit == UnitTokens && q.Scope == ScopeUser && q.Calendar == nil {
		return fmt.Sprintf("Token quota exceeded for model '%s' (limit and window: %s). Retry after the window resets in %s seconds.",
			ex.model, limit, reset)
	}
	var amount string
	switch q.Unit {
	case UnitMoney:
		amount = strconv.FormatUint(l.PerWindow, 10)
		if ex.cfg.Money.Format != nil {
			amount = ex.cfg.Money.Format(l.PerWindow)
		}
	case UnitRequests:
		amount = fmt.Sprintf("%d requests", l.PerWindow)
	default:
		amount = fmt.Sprintf("%d tokens", l.PerWindow)
	}
	whose := "per user"
	switch q.Scope {
	case ScopeTeam:
		whose = fmt.Sprintf("for team '%s'", ex.team)
	case ScopeGlobal:
		whose = "for all callers"
	}
	window := "per " + strings.ToLower(l.Unit)
	if q.Calendar != nil {
		_, _, end := q.Calendar.Period(ex.clock())
		window = fmt.Sprintf("per %s, until %s", q.Calendar, end.Format("2006-01-02 15:04 MST"))
	}
	return fmt.Sprintf("Quota '%s' exceeded for model '%s': %s %s %s. Retry after the window resets in %s seconds.",
		q.Name, ex.model, amount, whose, window, reset)
}

// leftShare is the share of a status's limit that is left, so that quotas counted in different
// units (tokens, requests, money) compare.
func leftShare(s rlsclient.Status) float64 {
	if s.Limit.PerWindow == 0 {
		return 0
	}
	return float64(s.Remaining) / float64(s.Limit.PerWindow)
}

// carryCalendarCounters makes sure the calendar quotas' counters hold what their periods
// spent: a calendar counter lives in the service's year-long window, and when that window
// started inside the current period, the counter of the window before is carried into it
// first. This happens once per counter and year; a failure is logged and the request goes
// on (the period's earlier spending is then missing from the check, never double counted).
func (ex *exchange) carryCalendarCounters(descriptors []rlsclient.Descriptor, timeout time.Duration) {
	boundary := rlsclient.WindowStart(CalendarServiceUnit, time.Now()) // the service's clock
	for i, q := range ex.quotas {
		if q.Calendar == nil {
			continue
		}
		if _, start, _ := q.Calendar.Period(ex.admitted); !boundary.After(start) {
			continue
		}
		ctx, cancel := context.WithTimeout(ex.ctx, timeout)
		err := ex.rls.Carry(ctx, ex.cfg.RateLimitDomain, descriptors[i].Entries, CalendarServiceUnit, boundary)
		cancel()
		if err != nil {
			ex.logger.Warn("could not carry a calendar quota's counter into the ratelimit service's new window; "+
				"the period's earlier spending is not counted for now", "quota", q.Name, "user", userForLog(ex.user), "error", err)
		}
	}
}

// reserve is what quota q counts for the request ahead of its real cost: the cost of its
// worst case, or nothing when the cost cannot be computed (the request is then only checked
// on q, and charged in full when it ends).
func (ex *exchange) reserve(q Quota, worst llmapi.Usage) uint64 {
	cost, ok := ex.cfg.cost(q.Cost)
	if !ok {
		return 0
	}
	hits, err := ex.costValue(cost, worst)
	if err != nil || hits <= 0 {
		return 0
	}
	return uint64(hits)
}

// rateLimitHeader renders a limit as x-ratelimit-limit does: the limit, then the limit with its
// window in seconds and the quota's name (`50, 50;w=3600;name="qwen3-hourly"`). A month is 30
// days and a year 365, as the service counts them; a calendar period is its current length.
func rateLimitHeader(l rlsclient.Limit, window time.Duration) string {
	h := fmt.Sprintf("%d, %d;w=%d", l.PerWindow, l.PerWindow, int64(window.Seconds()))
	if l.Name != "" {
		h += ";name=" + strconv.Quote(l.Name)
	}
	return h
}
