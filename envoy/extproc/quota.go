package extproc

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Admission. Once a request's model is known, and before it goes to the backend, the server
// asks the ratelimit service whether any quota that counts the request (the model's, those of
// every model; the user's, the team's, the global ones) is spent and, in the same call,
// reserves the request's worst case on each (rlsclient.Admit); a request quota counts the
// request at once instead. The reservation is settled when the exchange ends (charge.go). The
// ratelimit client batches the calls that queue up while the service is busy; each exchange
// gets its own statuses.

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

// quotaTimeout bounds one quota check, and a wait for a settlement.
func (ex *exchange) quotaTimeout() time.Duration {
	if ex.cfg.QuotaCheckTimeout <= 0 {
		return DefaultQuotaCheckTimeout
	}
	return ex.cfg.QuotaCheckTimeout
}

// admit decides whether the exchange's user may send the request on: whether every quota that
// counts it still has room, before this request, once the requests already admitted have
// reserved their worst case. It reserves this request's worst case (worst) on each quota in
// the same call, to be settled when the request ends. It returns the rejection to answer with,
// or the x-ratelimit metadata (nil when no quota counts the request or the check failed open).
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
	timeout := ex.quotaTimeout()
	ex.carryCalendarCounters(descriptors, timeout)
	withGrants(ex.grants, ex.counters, ex.cfg.RateLimitDomain, quotas, descriptors, ex.user, ex.team)
	asked := time.Now()
	statuses, reservations, err := ex.rls.Admit(ex.ctx, ex.cfg.RateLimitAddress, ex.cfg.RateLimitDomain, descriptors, timeout)
	ex.metrics.quotaCheckDuration.Observe(time.Since(asked).Seconds())
	if err != nil {
		if ex.ctx.Err() != nil {
			// The client is gone; nothing is answered and nothing reached the backend.
			return &rejection{status: 499, outcome: outcomeCancelled, details: "tollgate_client_gone"}, nil
		}
		if ex.cfg.QuotaFailOpen {
			ex.checked(checkFailedOpen)
			ex.logger.Warn("quota check failed; admitting the request (failure mode open)",
				"model", ex.model, "user", userForLog(ex.user), "error", err)
			return nil, nil
		}
		ex.checked(checkFailedClose)
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
			// Checks fail when Redis or the ratelimit service is down or saturated; both
			// usually come back within seconds.
			headers: map[string]string{"retry-after": "1"},
			details: "tollgate_quota_check_failed",
		}, nil
	}

	ex.checkAlerts(quotas, statuses, descriptors, ex.clock())
	decisive, over := decide(quotas, statuses, descriptors)
	if over {
		ex.rls.Release(reservations, nil)
	} else {
		ex.reservations = reservations
		for i, r := range reservations {
			if st := statuses[i]; st.Limit.Matched() && st.Remaining < r.Hits() {
				ex.settleFirst = true
			}
		}
	}
	if decisive < 0 {
		ex.checked(checkOK)
		return nil, nil
	}
	now := ex.clock()
	values := rateLimitValues(quotas, statuses, decisive, over, now)
	if !over {
		ex.checked(checkOK)
		fields := make(map[string]*structpb.Value, len(values))
		for k, v := range values {
			fields[k] = structpb.NewStringValue(v)
		}
		return nil, fields
	}
	q, st := quotas[decisive], statuses[decisive]
	ex.refusedBy = q.Name
	wait := q.resetIn(now, st.ResetIn)
	ex.checked(checkOverLimit)
	ex.metrics.refusals.WithLabelValues(q.Name).Inc()
	ex.observeDuration("429")
	ex.logger.Debug("request over its quota", "model", ex.model, "user", userForLog(ex.user), "quota", q.Name,
		"limit", values[envoy.MetadataRateLimitLimit])
	headers := map[string]string{"retry-after": values[envoy.MetadataRateLimitReset]}
	for _, h := range envoy.RateLimitHeaders() {
		if v, ok := values[h.MetadataKey]; ok {
			headers[h.Name] = v
		}
	}
	if wait > time.Minute {
		// OpenAI's and Anthropic's SDKs retry a 429 on their own unless told not to; a retry
		// within their backoff could never succeed.
		headers["x-should-retry"] = "false"
	}
	return &rejection{
		status:  429,
		outcome: outcomeRejected429,
		err: apiError{
			Message: ex.overLimitMessage(q, st.Limit, now, wait),
			Type:    errorTypeRateLimit,
			Code:    optional(errorTypeRateLimit),
		},
		headers: headers,
		details: "tollgate_quota_exceeded",
	}, nil
}

// checked records the result of the request's quota check: counted in
// tollgate_quota_checks_total and published for the usage log.
func (ex *exchange) checked(result string) {
	ex.decision = result
	ex.metrics.quotaChecks.WithLabelValues(result).Inc()
}

// decide picks the status that decides: the first enforced quota that is spent, else the
// enforced one with the smallest share of its limit left; -1 when no enforced quota has a
// limit. A shadow quota is counted (and reserved) like any other, but never changes what the
// client sees.
func decide(quotas []Quota, statuses []rlsclient.Status, descriptors []rlsclient.Descriptor) (decisive int, over bool) {
	decisive = -1
	for i := range statuses {
		s := &statuses[i]
		if quotas[i].Shadow || !s.Limit.Matched() {
			continue
		}
		if spent(*s, descriptors[i].MustFit) {
			return i, true
		}
		if decisive < 0 || leftShare(*s) < leftShare(statuses[decisive]) {
			decisive = i
		}
	}
	return decisive, false
}

// spent reports whether a status refuses the request: one taken before the request once
// nothing remains, one taken after counting it (MustFit) once the request did not fit.
func spent(s rlsclient.Status, mustFit bool) bool {
	return s.OverLimit || (s.Remaining == 0 && !mustFit)
}

// carryCalendarCounters makes sure the calendar quotas' counters hold what their periods
// spent: a calendar counter lives in the service's year-long window, and when that window
// started inside the current period, the counter of the window before is carried into it
// first. This happens once per counter and year; a failure is logged and the request goes
// on (the period's earlier spending is then missing from the check, never double counted).
func (ex *exchange) carryCalendarCounters(descriptors []rlsclient.Descriptor, timeout time.Duration) {
	var boundary time.Time
	for i, q := range ex.quotas {
		if q.Calendar == nil {
			continue
		}
		if boundary.IsZero() {
			boundary = rlsclient.WindowStart(CalendarServiceUnit, time.Now()) // the service's clock
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
