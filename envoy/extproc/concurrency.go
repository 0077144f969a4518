package extproc

import (
	"fmt"
	"sync"
)

// inFlight counts each user's requests in flight on this server, for the per-user cap
// (Config.MaxConcurrentRequests). It is per server: a user spread over several gateways may
// have the cap in flight on each.
type inFlight struct {
	mu     sync.Mutex
	byUser map[string]int
}

// acquire counts one more request of user unless cap are already in flight.
func (f *inFlight) acquire(user string, cap int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byUser[user] >= cap {
		return false
	}
	if f.byUser == nil {
		f.byUser = map[string]int{}
	}
	f.byUser[user]++
	return true
}

// release counts one request of user less.
func (f *inFlight) release(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byUser[user]--; f.byUser[user] <= 0 {
		delete(f.byUser, user)
	}
}

// holdConcurrency counts the request against its user's cap, or returns the 429 to answer
// with when the user already has the cap in flight.
func (ex *exchange) holdConcurrency() *rejection {
	limit := ex.cfg.concurrencyCap(ex.user)
	if limit <= 0 || ex.inFlight == nil {
		return nil
	}
	if !ex.inFlight.acquire(ex.user, limit) {
		ex.checked(checkTooManyInFlight)
		ex.observeDuration("429")
		return &rejection{
			status:  429,
			outcome: outcomeRejected429,
			err: apiError{
				Message: fmt.Sprintf("Too many concurrent requests: at most %d may be in flight at once for this user. Retry when one has finished.", limit),
				Type:    errorTypeRateLimit,
				Code:    optional("too_many_concurrent_requests"),
			},
			headers: map[string]string{"retry-after": "1"},
			details: "tollgate_too_many_concurrent_requests",
		}
	}
	ex.holding = true
	return nil
}

// releaseConcurrency ends the request's count against its user's cap.
func (ex *exchange) releaseConcurrency() {
	if ex.holding {
		ex.inFlight.release(ex.user)
		ex.holding = false
	}
}
