package extproc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Quota checks. Once a request's model is known, and before it goes to the backend, the server
// asks the ratelimit service whether the user is already over one of the model's quotas: one
// descriptor per quota with hits 0, which spends nothing. Checks that arrive while the service
// is answering others go out together in one call, so under load the service's per-call cost
// is shared; an idle server sends each check alone, at once. The service answers one status per
// descriptor, in order, and each waiting exchange gets its own.

// Results of a check, the values of tollgate_quota_checks_total{result}.
const (
	checkOK          = "ok"            // under every quota
	checkOverLimit   = "over_limit"    // over one: answered 429
	checkFailedOpen  = "failed_open"   // the service did not answer; failure mode open admits
	checkFailedClose = "failed_closed" // the service did not answer; failure mode closed: 503
)

// Checking limits.
const (
	// checkQueueSize bounds checks waiting for a worker; beyond it an exchange waits.
	checkQueueSize = 4096
	// checkWorkers is the number of check calls in flight to the ratelimit service at once.
	checkWorkers = 4
	// checkBatchDescriptors bounds the descriptors of one check call.
	checkBatchDescriptors = 256
	// DefaultQuotaCheckTimeout bounds a check when Config.QuotaCheckTimeout is zero.
	DefaultQuotaCheckTimeout = 2 * time.Second
)

// rlsConns keeps one client connection per ratelimit service address, shared by checks and
// charges.
type rlsConns struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (c *rlsConns) get(target string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn, ok := c.conns[target]; ok {
		return conn, nil
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	c.conns[target] = conn
	return conn, nil
}

func (c *rlsConns) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for target, conn := range c.conns {
		_ = conn.Close()
		delete(c.conns, target)
	}
}

// takeBatch returns first and what joins it in one call: items queued behind it, up to max
// descriptors in all, that can share first's call (the same service and domain). It waits up
// to linger for more once the queue is empty (0: not at all). A queued item that cannot join is
// returned as carried, to start the next batch.
func takeBatch[T any](queue <-chan T, first T, route func(T) (target, domain string), size func(T) int, max int, linger time.Duration) (batch []T, carried *T) {
	batch = []T{first}
	target, domain := route(first)
	n := size(first)
	var deadline <-chan time.Time
	if linger > 0 {
		timer := time.NewTimer(linger)
		defer timer.Stop()
		deadline = timer.C
	}
	for n < max {
		var item T
		var ok bool
		select {
		case item, ok = <-queue:
		default:
			if deadline == nil {
				return batch, nil
			}
			select {
			case item, ok = <-queue:
			case <-deadline:
				return batch, nil
			}
		}
		if !ok {
			return batch, nil
		}
		if t, d := route(item); t != target || d != domain {
			return batch, &item
		}
		batch = append(batch, item)
		n += size(item)
	}
	return batch, nil
}

// quotaCheck is one exchange's question to the ratelimit service.
type quotaCheck struct {
	target  string
	request *rlsv3.RateLimitRequest
	timeout time.Duration
	answer  chan quotaAnswer // buffered: a worker never waits for the exchange
}

type quotaAnswer struct {
	statuses []*rlsv3.RateLimitResponse_DescriptorStatus
	err      error
}

func checkRoute(c *quotaCheck) (string, string) { return c.target, c.request.GetDomain() }
func checkSize(c *quotaCheck) int               { return len(c.request.GetDescriptors()) }

// checker sends quota checks from a few workers, batching those that queue up.
type checker struct {
	conns   *rlsConns
	queue   chan *quotaCheck
	workers sync.WaitGroup

	state  sync.RWMutex // guards closed; senders hold it for reading
	closed bool
}

func newChecker(conns *rlsConns) *checker {
	c := &checker{conns: conns, queue: make(chan *quotaCheck, checkQueueSize)}
	for range checkWorkers {
		c.workers.Add(1)
		go c.work()
	}
	return c
}

// check asks the service about req's descriptors and waits for the answer, for at most
// timeout once the call is made, or until ctx ends.
func (c *checker) check(ctx context.Context, target string, req *rlsv3.RateLimitRequest, timeout time.Duration) ([]*rlsv3.RateLimitResponse_DescriptorStatus, error) {
	q := &quotaCheck{target: target, request: req, timeout: timeout, answer: make(chan quotaAnswer, 1)}
	c.state.RLock()
	if c.closed {
		c.state.RUnlock()
		c.send([]*quotaCheck{q})
	} else {
		select {
		case c.queue <- q: // close waits for the write lock, so the queue is still open here
			c.state.RUnlock()
		case <-ctx.Done():
			c.state.RUnlock()
			return nil, ctx.Err()
		}
	}
	select {
	case a := <-q.answer:
		return a.statuses, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *checker) work() {
	defer c.workers.Done()
	var carried **quotaCheck
	for {
		var first *quotaCheck
		if carried != nil {
			first, carried = *carried, nil
		} else {
			var ok bool
			if first, ok = <-c.queue; !ok {
				return
			}
		}
		var batch []*quotaCheck
		batch, carried = takeBatch(c.queue, first, checkRoute, checkSize, checkBatchDescriptors, 0)
		c.send(batch)
	}
}

// send makes one call for a batch and hands every check its own statuses.
func (c *checker) send(batch []*quotaCheck) {
	first := batch[0]
	request := first.request
	if len(batch) > 1 {
		request = &rlsv3.RateLimitRequest{Domain: first.request.GetDomain()}
		for _, q := range batch {
			request.Descriptors = append(request.Descriptors, q.request.GetDescriptors()...)
		}
	}
	var statuses []*rlsv3.RateLimitResponse_DescriptorStatus
	conn, err := c.conns.get(first.target)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), first.timeout)
		var resp *rlsv3.RateLimitResponse
		resp, err = rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, request)
		cancel()
		statuses = resp.GetStatuses()
		if err == nil && len(statuses) != len(request.GetDescriptors()) {
			err = fmt.Errorf("the ratelimit service answered %d statuses for %d descriptors", len(statuses), len(request.GetDescriptors()))
		}
	}
	for _, q := range batch {
		if err != nil {
			q.answer <- quotaAnswer{err: err}
			continue
		}
		n := len(q.request.GetDescriptors())
		q.answer <- quotaAnswer{statuses: statuses[:n:n]}
		statuses = statuses[n:]
	}
}

// close stops the workers once every queued check is answered; later checks are sent at once.
func (c *checker) close(ctx context.Context) error {
	c.state.Lock()
	if c.closed {
		c.state.Unlock()
		return nil
	}
	c.closed = true
	close(c.queue)
	c.state.Unlock()
	done := make(chan struct{})
	go func() {
		c.workers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("quota checks still waiting when shutdown gave up")
	}
}

// checkRequest builds the question for one user's request on model: a descriptor per quota,
// each with hits 0. It returns nil when the model has no quotas.
func checkRequest(cfg *Config, model, user string) *rlsv3.RateLimitRequest {
	quotas := cfg.Quotas[model]
	if len(quotas) == 0 {
		return nil
	}
	descriptors := make([]*ratelimitv3.RateLimitDescriptor, 0, len(quotas))
	for _, q := range quotas {
		descriptors = append(descriptors, &ratelimitv3.RateLimitDescriptor{
			Entries:    descriptorEntries(cfg, q, user),
			HitsAddend: wrapperspb.UInt64(0),
		})
	}
	return &rlsv3.RateLimitRequest{Domain: cfg.RateLimitDomain, Descriptors: descriptors}
}

// descriptorEntries is the counter of one user on quota q: the quota's entries, then the user.
func descriptorEntries(cfg *Config, q Quota, user string) []*ratelimitv3.RateLimitDescriptor_Entry {
	entries := make([]*ratelimitv3.RateLimitDescriptor_Entry, 0, len(q.Entries)+1)
	for _, e := range q.Entries {
		entries = append(entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value})
	}
	return append(entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: cfg.UserDescriptorKey, Value: user})
}

// checkQuota asks whether the exchange's user is already over a quota of its model. It returns
// the rejection to answer with, or the x-ratelimit metadata of the quota closest to its limit
// (nil when the model has no quotas or the check failed open).
func (ex *exchange) checkQuota() (*rejection, map[string]*structpb.Value) {
	if ex.checker == nil || ex.cfg.RateLimitAddress == "" {
		return nil, nil
	}
	req := checkRequest(ex.cfg, ex.model, ex.user)
	if req == nil {
		return nil, nil
	}
	timeout := ex.cfg.QuotaCheckTimeout
	if timeout <= 0 {
		timeout = DefaultQuotaCheckTimeout
	}
	statuses, err := ex.checker.check(ex.ctx, ex.cfg.RateLimitAddress, req, timeout)
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

	// The status that decides: the first quota over its limit, else the one with the least
	// left, whose numbers the x-ratelimit headers carry.
	var decisive *rlsv3.RateLimitResponse_DescriptorStatus
	for _, s := range statuses {
		if s.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
			decisive = s
			break
		}
		if s.GetCurrentLimit() != nil && (decisive == nil || s.GetLimitRemaining() < decisive.GetLimitRemaining()) {
			decisive = s
		}
	}
	if decisive == nil {
		ex.metrics.quotaChecks.WithLabelValues(checkOK).Inc()
		return nil, nil
	}
	limit := rateLimitHeader(decisive.GetCurrentLimit())
	reset := strconv.FormatInt(int64(math.Ceil(decisive.GetDurationUntilReset().AsDuration().Seconds())), 10)
	if decisive.GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		ex.metrics.quotaChecks.WithLabelValues(checkOK).Inc()
		return nil, map[string]*structpb.Value{
			envoy.MetadataRateLimitLimit:     structpb.NewStringValue(limit),
			envoy.MetadataRateLimitRemaining: structpb.NewStringValue(strconv.FormatUint(uint64(decisive.GetLimitRemaining()), 10)),
			envoy.MetadataRateLimitReset:     structpb.NewStringValue(reset),
		}
	}
	ex.metrics.quotaChecks.WithLabelValues(checkOverLimit).Inc()
	ex.observeDuration("429")
	ex.logger.Debug("request over its token quota", "model", ex.model, "user", userForLog(ex.user), "limit", limit)
	return &rejection{
		status:  429,
		outcome: outcomeRejected429,
		err: apiError{
			Message: fmt.Sprintf("Token quota exceeded for model '%s' (limit and window: %s). Retry after the window resets in %s seconds.",
				ex.model, limit, reset),
			Type: errorTypeRateLimit,
			Code: optional(errorTypeRateLimit),
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

// windowSeconds is the length of a ratelimit service unit in seconds, as Envoy's ratelimit
// filter counts it in the same headers (a month 30 days, a year 365, as the service counts them).
func windowSeconds(unit rlsv3.RateLimitResponse_RateLimit_Unit) int64 {
	switch unit {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return 1
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return 60
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return 3600
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return 86400
	case rlsv3.RateLimitResponse_RateLimit_WEEK:
		return 7 * 86400
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 30 * 86400
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 365 * 86400
	default:
		return 0
	}
}

// rateLimitHeader renders a limit as x-ratelimit-limit does: the limit, then the limit with its
// window in seconds and the quota's name (`50, 50;w=3600;name="qwen3-hourly"`).
func rateLimitHeader(l *rlsv3.RateLimitResponse_RateLimit) string {
	h := fmt.Sprintf("%d, %d;w=%d", l.GetRequestsPerUnit(), l.GetRequestsPerUnit(), windowSeconds(l.GetUnit()))
	if l.GetName() != "" {
		h += ";name=" + strconv.Quote(l.GetName())
	}
	return h
}
