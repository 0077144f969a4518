package extproc

import (
	"errors"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Charging. The server checks a user's quotas before a request goes upstream (quota.go); the
// charge for what the request actually cost is sent once, when the exchange ends — whichever
// way it ends. A response that completes is charged the usage the backend
// reported; one that breaks off (the client left, the stream was reset, a timeout) is charged
// what it had served so far, so leaving early never makes a request free. Only this server
// sees every one of those endings: Envoy's own "charge when the stream is done" reads a cost
// that is only published when the response completes.

// Bases of a charge, the values of tollgate_quota_charges_total{basis}.
const (
	basisUsage    = "usage"    // the usage the backend reported
	basisEstimate = "estimate" // estimated from the prompt and the output served
)

// Results of a charge, the values of tollgate_quota_charges_total{result}.
const (
	chargeSent    = "sent"
	chargeFailed  = "failed"  // given up: these tokens are not counted
	chargeSpooled = "spooled" // not taken by shutdown: kept in the spool for the next run
	// chargeUnconfirmed: the service took the charge but did not answer in time (it waits for
	// its Redis); it counts it later, or, if it reports it could not, the charge is sent again.
	chargeUnconfirmed = "unconfirmed"
)

// settleQuota charges the request's costs to every quota that counts it, once, when the exchange
// ends: what was reserved at admission is replaced by the actual cost (the difference charged
// or refunded), and a quota with nothing reserved is charged the cost in full. A cost that
// could not be computed keeps its reservation, and is never guessed otherwise. The client
// batches, retries and keeps what the service does not take; its verdict is logged and
// counted here.
func (ex *exchange) settleQuota(costs map[string]int64, basis string) {
	quotas := ex.quotas
	if ex.rls == nil || ex.cfg.RateLimitAddress == "" || len(quotas) == 0 {
		return
	}
	done := ex.chargeOutcome(basis)
	if len(ex.reservations) == len(quotas) {
		actual := make([]uint64, len(quotas))
		for i, q := range quotas {
			if cost, ok := costs[q.Cost]; ok && cost >= 0 {
				actual[i] = uint64(cost)
			} else {
				actual[i] = ex.reservations[i].Hits()
			}
		}
		if !ex.settleFirst {
			ex.rls.Settle(ex.reservations, actual, done)
			ex.reservations = nil
			return
		}
		// The reservation took the quota past its limit, so until the unused part is back,
		// another gateway would refuse the user's next request although room is left: a
		// client that sends it there the moment this answer ends must find it settled. Only
		// requests near a limit wait (for one round trip); the rest settle in the background.
		settled := make(chan struct{})
		ex.rls.SettleNow(ex.reservations, actual, func(err error) {
			done(err)
			close(settled)
		})
		ex.reservations = nil
		select {
		case <-settled:
		case <-time.After(ex.quotaTimeout()):
		}
		return
	}
	var descriptors []rlsclient.Descriptor
	for _, q := range quotas {
		hits, ok := costs[q.Cost]
		if !ok || hits <= 0 {
			continue // a zero addend would only check, and an unknown cost is never guessed
		}
		descriptors = append(descriptors, q.Descriptor(ex.user, ex.team, ex.admitted, uint64(hits)))
	}
	if len(descriptors) == 0 {
		return
	}
	ex.rls.Charge(ex.cfg.RateLimitAddress, ex.cfg.RateLimitDomain, descriptors, done)
}

// releaseQuota gives back what was reserved for a request that costs nothing: its answer was
// an error.
func (ex *exchange) releaseQuota() {
	if len(ex.reservations) == 0 {
		return
	}
	ex.rls.Release(ex.reservations, nil)
	ex.reservations = nil
}

// chargeOutcome logs and counts how a charge ended.
func (ex *exchange) chargeOutcome(basis string) func(error) {
	logger, metrics, model, user := ex.logger, ex.metrics, ex.model, ex.user
	return func(err error) {
		result := chargeSent
		switch {
		case errors.Is(err, rlsclient.ErrSpooled):
			result = chargeSpooled
			logger.Warn("quota charge kept in the spool for the next run",
				"model", model, "user", userForLog(user), "basis", basis)
		case errors.Is(err, rlsclient.ErrUnconfirmed):
			result = chargeUnconfirmed
			logger.Warn("quota charge not confirmed in time; the ratelimit service counts it once its Redis answers, or it is sent again if the service reports it could not",
				"model", model, "user", userForLog(user), "basis", basis)
		case err != nil:
			result = chargeFailed
			logger.Error("quota charge not delivered; these tokens are not counted",
				"model", model, "user", userForLog(user), "basis", basis, "error", err)
		}
		metrics.charges.WithLabelValues(basis, result).Inc()
	}
}
