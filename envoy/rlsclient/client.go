// Package rlsclient is tollgate's one client of the ratelimit service
// (envoy.service.ratelimit.v3.RateLimitService): the quota checks the ext_proc server makes
// before a request goes upstream, the charges it sends when a request ends, and the reads of
// `tollgate quota`. Everything is one descriptor type with its own hits (0: check only, the
// service spends nothing).
//
// Checks and charges that queue up while the service is busy share one ShouldRateLimit call
// (the service's cost is mostly per call); the service answers one status per descriptor, in
// order, and each caller gets its own. A charge also waits briefly for others to join its call
// and is retried while the service is unreachable; a check is tried once, within its timeout,
// since a request is waiting on it. The client reports outcomes to its callers only: it keeps
// no metrics of its own.
package rlsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Sizes and timings.
const (
	// queueSize bounds the checks, charges and refunds waiting for the collector. A full queue
	// makes the caller wait: backpressure rather than a dropped charge.
	queueSize = 4096
	// senders is the number of calls in flight at once, for checks, charges and refunds each.
	senders = 4
	// maxDescriptors bounds the descriptors of one call.
	maxDescriptors = 256
	// linger is how long a charge or refund waits for others to share its call. The service's
	// cost is mostly per call, so at a few hundred requests a second this divides it by
	// several. No client waits for it: a check of the same counter sends it at once.
	linger = 10 * time.Millisecond
	// chargeTimeout is how long a charge call is waited for before it is unconfirmed; the
	// service answers in about a millisecond.
	chargeTimeout = 2 * time.Second
	// lateCallTimeout bounds a reserving check whose caller gave up waiting, and a charge
	// call past chargeTimeout. The upstream service waits for Redis without a deadline and
	// counts what it was sent once Redis is back (or fails it, when its Redis client is
	// replaced), so a call sent during a Redis outage has its outcome late: the call stays
	// open to learn it — to take a reservation back, or to send a charge again — for outages
	// up to this long.
	lateCallTimeout = time.Minute
)

// Options configure a client.
type Options struct {
	// Logger receives what the client gives up on; nil discards.
	Logger *slog.Logger
	// Refunder takes hits back from the service's counters. Without one, Admit only checks
	// and nothing is reserved.
	Refunder Refunder
	// Spool is the file that keeps charges and refunds the service or Redis did not take,
	// across restarts. Empty: they are kept in memory only, and lost when the process ends.
	Spool string
	// OnBacklog, if set, is told how many charges and refunds wait for the service or Redis
	// whenever that changes.
	OnBacklog func(n int)
	// Local, when set, is a ratelimit service in this process: calls for the addresses it
	// Serves go to it directly instead of over gRPC, with the same outcomes.
	Local LocalService
}

// LocalService is a ratelimit service running in this process (rls.Local).
type LocalService interface {
	// Serves reports whether a call for the service at target (host:port) reaches it.
	Serves(target string) bool
	ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)
}

// Client talks to ratelimit services, one connection per address. It is safe for concurrent
// use; Close it when done.
type Client struct {
	logger   *slog.Logger
	refunder Refunder
	local    LocalService
	conns    conns
	pending  pending
	checks   *batcher
	charges  *batcher
	refunds  *batcher
	backlog  *backlog
	// failing holds the counters whose last check failed (see failing).
	failing failing
	carried carried
}

// New returns a client with its workers running. It fails only when the spool cannot be
// read or written.
func New(opts Options) (*Client, error) {
	c := &Client{logger: opts.Logger, refunder: opts.Refunder, local: opts.Local}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	backlog, err := newBacklog(c.logger, opts.Spool, c.deliver, retryable, opts.OnBacklog)
	if err != nil {
		return nil, err
	}
	c.backlog = backlog
	c.checks = newBatcher(batcherConfig{queue: queueSize, senders: senders, maxDescriptors: maxDescriptors}, c.sendChecks)
	c.charges = newBatcher(batcherConfig{queue: queueSize, senders: senders, maxDescriptors: maxDescriptors, linger: linger}, c.sendCharges)
	c.refunds = newBatcher(batcherConfig{queue: queueSize, senders: senders, maxDescriptors: maxDescriptors, linger: linger}, c.sendRefunds)
	return c, nil
}

// Check asks the service at target about ds in domain and returns its statuses, in the order
// of ds. Within timeout (or until ctx ends) it waits for this client's charges and refunds to
// the same counters, for room in the queue, and for the answer.
func (c *Client) Check(ctx context.Context, target, domain string, ds []Descriptor, timeout time.Duration) ([]Status, error) {
	return c.check(ctx, target, domain, ds, counterKeys(domain, ds), timeout, nil)
}

// check is Check, for the counters keys (ds's). When late is set, the call is not abandoned
// with its caller: it gets up to lateCallTimeout, and a successful answer that comes after the
// caller gave up goes to late, which can then undo what the call did.
func (c *Client) check(ctx context.Context, target, domain string, ds []Descriptor, keys []string, timeout time.Duration, late func([]Status)) ([]Status, error) {
	if err := checkRequest(domain, ds); err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.pending.wait(ctx, keys, c.flush); err != nil {
		return nil, fmt.Errorf("waiting for earlier charges to the same counters: %w", err)
	}
	type answer struct {
		statuses []Status
		err      error
	}
	answers := make(chan answer, 1) // a sender never waits for the caller
	var mu sync.Mutex
	gaveUp := false
	cl := &call{target: target, domain: domain, descriptors: ds, timeout: timeout,
		done: func(s []Status, err error) {
			mu.Lock()
			abandoned := gaveUp
			if !abandoned {
				answers <- answer{s, err}
			}
			mu.Unlock()
			if abandoned && err == nil && late != nil {
				late(s)
			}
		}}
	cl.keepOpen = late != nil
	if err := c.checks.add(ctx, cl); err != nil {
		return nil, err
	}
	select {
	case a := <-answers:
		return a.statuses, a.err
	case <-ctx.Done():
		mu.Lock()
		gaveUp = true
		mu.Unlock()
		select {
		case a := <-answers: // it came just now
			if a.err == nil && late != nil {
				late(a.statuses)
			}
		default:
		}
		return nil, ctx.Err()
	}
}

// Charge adds each descriptor's hits to its counter in the service at target, in the
// background: it returns once the charge is queued (waiting while the queue is full). A charge
// the service does not take is kept and sent again until it does (see Options.Spool). done, if
// not nil, gets the outcome once the service took the charge, or it was given up.
func (c *Client) Charge(target, domain string, ds []Descriptor, done func(error)) {
	if err := checkRequest(domain, ds); err != nil || len(ds) == 0 {
		if done != nil {
			done(err)
		}
		return
	}
	keys := counterKeys(domain, ds)
	applied := c.track(keys, done)
	cl := &call{target: target, domain: domain, descriptors: ds, keys: keys, timeout: chargeTimeout,
		done: func(_ []Status, err error) { applied(err) }}
	_ = c.charges.add(context.Background(), cl) // never fails without a deadline
}

// refund takes hits back, in the background, like Charge.
func (c *Client) refund(refunds []Refund, done func(error)) {
	keys := make([]string, len(refunds))
	for i, r := range refunds {
		keys[i] = counterKey(r.Domain, r.Entries)
	}
	applied := c.track(keys, done)
	cl := &call{refunds: refunds, timeout: chargeTimeout, done: func(_ []Status, err error) { applied(err) }}
	_ = c.refunds.add(context.Background(), cl)
}

// track registers a change to keys until it is applied or given up, and returns the function
// that reports that.
func (c *Client) track(keys []string, done func(error)) func(error) {
	ch := c.pending.add(keys)
	return func(err error) {
		c.pending.done(ch)
		if done != nil {
			done(err)
		}
	}
}

// flush sends the charges and refunds lingering for company, and tries the backlog again.
func (c *Client) flush() {
	c.charges.flush()
	c.refunds.flush()
	c.backlog.poke()
}

// Backlog is the number of charges and refunds waiting for the service or Redis to come back.
func (c *Client) Backlog() int { return c.backlog.size() }

// Close sends what is still queued, then releases the connections. What the service does not
// take by then stays in the spool for the next run. Checks and charges made after Close are
// sent at once, unbatched. It gives up waiting when ctx ends.
func (c *Client) Close(ctx context.Context) error {
	err := errors.Join(c.checks.close(ctx), c.charges.close(ctx), c.refunds.close(ctx))
	c.backlog.close()
	c.conns.close()
	return err
}

// checkRequest reports a call the service could not count.
func checkRequest(domain string, ds []Descriptor) error {
	if domain == "" {
		return errors.New("rate limit call: the domain must not be empty")
	}
	for i, d := range ds {
		if err := d.validate(); err != nil {
			return fmt.Errorf("rate limit call: descriptor %d (%s): %w", i, d, err)
		}
	}
	return nil
}

func counterKeys(domain string, ds []Descriptor) []string {
	keys := make([]string, len(ds))
	for i, d := range ds {
		keys[i] = counterKey(domain, d.Entries)
	}
	return keys
}

// sendChecks makes one call for a batch of checks and hands every caller its own statuses.
// The sender waits for the longest timeout of its callers; a call kept open past that (one
// of them wants to learn what a reservation did) is answered in the background, so a service
// that hangs holds no sender.
func (c *Client) sendChecks(batch []*call) {
	wait, callTimeout := batch[0].timeout, batch[0].timeout
	for _, cl := range batch {
		wait = max(wait, cl.timeout)
		if cl.keepOpen {
			callTimeout = lateCallTimeout
		}
	}
	callTimeout = max(callTimeout, wait)
	type answer struct {
		statuses []Status
		err      error
	}
	hand := func(a answer) {
		statuses := a.statuses
		for _, cl := range batch {
			if a.err != nil {
				cl.done(nil, a.err)
				continue
			}
			n := len(cl.descriptors)
			cl.done(statuses[:n:n], nil)
			statuses = statuses[n:]
		}
	}
	ds := descriptorsOf(batch)
	a, inTime := await(wait, func() answer {
		statuses, err := c.shouldRateLimit(batch[0].target, batch[0].domain, ds, callTimeout)
		return answer{statuses, err}
	}, hand)
	if inTime {
		hand(a)
	}
}

// await runs call on a goroutine of its own and waits up to wait for its result. It reports
// whether the result came in time; a call still running then goes on, and its result goes to
// later.
func await[T any](wait time.Duration, call func() T, later func(T)) (T, bool) {
	result := make(chan T, 1)
	go func() { result <- call() }()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case r := <-result:
		return r, true
	case <-timer.C:
		go func() { later(<-result) }()
		var zero T
		return zero, false
	}
}

// sendCharges makes one call for a batch of charges. What the service did not take goes to
// the backlog, to be sent again.
func (c *Client) sendCharges(batch []*call) {
	asEntry := func(cl *call) *entry {
		return &entry{Target: cl.target, Domain: cl.domain, Charges: cl.descriptors}
	}
	var send, held []*call
	for _, cl := range batch {
		if c.failing.any(cl.keys) {
			held = append(held, cl)
		} else {
			send = append(send, cl)
		}
	}
	if len(held) > 0 {
		c.settleBatch(held, status.Error(codes.Unavailable, errFailing.Error()), asEntry)
	}
	if len(send) > 0 {
		c.settleBatch(send, c.chargeCall(send[0].target, send[0].domain, descriptorsOf(send)), asEntry)
	}
}

// chargeCall makes one charge call and waits chargeTimeout for its answer. The upstream
// service waits for Redis without a deadline, so a call it has not answered by then may still
// count, or may still fail: a Redis that comes back counts it, while a Redis client closed
// under it (a Sentinel failover replaces the primary's) fails it. So the call is not
// abandoned: it stays open for up to lateCallTimeout, and if the service then reports that it
// did not count it, its charges go to the backlog. Meanwhile the caller is told the charge is
// unconfirmed, and the sender is free for the next call.
func (c *Client) chargeCall(target, domain string, ds []Descriptor) error {
	err, inTime := await(chargeTimeout, func() error {
		_, err := c.shouldRateLimit(target, domain, ds, lateCallTimeout)
		return err
	}, func(err error) {
		switch {
		case err == nil:
		case retryable(err):
			c.logger.Warn("a charge not confirmed in time was not counted by the ratelimit service; sending it again",
				"ratelimit", target, "domain", domain, "error", err)
			c.backlog.add([]*entry{{Target: target, Domain: domain, Charges: ds}})
		default:
			c.logger.Error("a charge was never confirmed by the ratelimit service; whether it counted is unknown, so it is not sent again",
				"ratelimit", target, "domain", domain, "descriptors", len(ds), "error", err)
		}
	})
	if !inTime {
		return status.Errorf(codes.DeadlineExceeded, "ratelimit service at %s, domain %q: no answer within %s", target, domain, chargeTimeout)
	}
	return err
}

// sendRefunds takes back the hits of a batch of refunds in one round trip to Redis.
func (c *Client) sendRefunds(batch []*call) {
	var refunds []Refund
	for _, cl := range batch {
		refunds = append(refunds, cl.refunds...)
	}
	err := c.refundNow(refunds)
	c.settleBatch(batch, err, func(cl *call) *entry { return &entry{Refunds: cl.refunds} })
}

// settleBatch reports a batch's outcome, or hands it to the backlog when err left it unapplied.
func (c *Client) settleBatch(batch []*call, err error, asEntry func(*call) *entry) {
	if status.Code(err) == codes.DeadlineExceeded {
		err = fmt.Errorf("%w: %w", ErrUnconfirmed, err)
	}
	if err != nil && retryable(err) {
		entries := make([]*entry, len(batch))
		for i, cl := range batch {
			e := asEntry(cl)
			done := cl.done
			e.done = func(err error) { done(nil, err) }
			entries[i] = e
		}
		c.backlog.add(entries)
		return
	}
	for _, cl := range batch {
		cl.done(nil, err)
	}
}

// deliver is one backlog attempt for entries of one kind.
func (c *Client) deliver(entries []*entry) error {
	if len(entries[0].Refunds) > 0 {
		var refunds []Refund
		for _, e := range entries {
			refunds = append(refunds, e.Refunds...)
		}
		return c.refundNow(refunds)
	}
	var ds []Descriptor
	for _, e := range entries {
		ds = append(ds, e.Charges...)
	}
	target, domain := entries[0].Target, entries[0].Domain
	if keys := counterKeys(domain, ds); c.failing.any(keys) {
		// Check the same counters, counting nothing: a held charge is sent only once the
		// service answers for them again.
		probe := make([]Descriptor, len(ds))
		for i, d := range ds {
			probe[i] = Descriptor{Entries: d.Entries}
		}
		if _, err := c.shouldRateLimit(target, domain, probe, chargeTimeout); err != nil {
			return status.Errorf(codes.Unavailable, "%s: %v", errFailing, err)
		}
		c.failing.mark(keys, false)
	}
	return c.chargeCall(target, domain, ds)
}

// errFailing is why a charge is held: the last check of its counters failed (see failing).
var errFailing = errors.New("the ratelimit service did not answer the last check of these counters; their charges are held until it does")

func (c *Client) refundNow(refunds []Refund) error {
	if c.refunder == nil {
		return errors.New("no access to the counters to take hits back")
	}
	ctx, cancel := context.WithTimeout(context.Background(), chargeTimeout)
	defer cancel()
	return c.refunder.Refund(ctx, refunds)
}

func descriptorsOf(batch []*call) []Descriptor {
	if len(batch) == 1 {
		return batch[0].descriptors
	}
	var ds []Descriptor
	for _, cl := range batch {
		ds = append(ds, cl.descriptors...)
	}
	return ds
}

// shouldRateLimit makes one ShouldRateLimit call.
func (c *Client) shouldRateLimit(target, domain string, ds []Descriptor, timeout time.Duration) ([]Status, error) {
	req := &rlsv3.RateLimitRequest{Domain: domain, Descriptors: make([]*ratelimitv3.RateLimitDescriptor, len(ds))}
	for i, d := range ds {
		req.Descriptors[i] = d.proto()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := c.call(ctx, target, req)
	if err != nil {
		return nil, fmt.Errorf("ratelimit service at %s, domain %q: %w", target, domain, err)
	}
	if len(resp.GetStatuses()) != len(ds) {
		return nil, fmt.Errorf("ratelimit service at %s, domain %q: it answered %d statuses for %d descriptors", target, domain, len(resp.GetStatuses()), len(ds))
	}
	out := make([]Status, len(ds))
	for i, s := range resp.GetStatuses() {
		out[i] = statusFromProto(s)
	}
	return out, nil
}

// call sends req to the service at target: directly when it runs in this process, else over
// gRPC.
func (c *Client) call(ctx context.Context, target string, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if c.local != nil && c.local.Serves(target) {
		return callLocal(ctx, c.local, req)
	}
	conn, err := c.conns.get(target)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ratelimit service at %s: %v", target, err)
	}
	return rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, req)
}

// callLocal calls a service in this process with a gRPC call's outcomes: the upstream
// service waits for Redis without a deadline, so the call runs on a goroutine of its own and
// one that outlives ctx is DeadlineExceeded (unconfirmed: it may still count); an error the
// service returns is Unknown, as its gRPC server would send it.
func callLocal(ctx context.Context, svc LocalService, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	type answer struct {
		resp *rlsv3.RateLimitResponse
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := svc.ShouldRateLimit(ctx, req)
		done <- answer{resp, err}
	}()
	select {
	case a := <-done:
		if _, isStatus := status.FromError(a.err); a.err != nil && !isStatus {
			a.err = status.Error(codes.Unknown, a.err.Error())
		}
		return a.resp, a.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// ErrUnconfirmed is the outcome of a charge the service took but did not answer in time. It is
// not sent again unless the service later reports that it did not count it (see chargeCall):
// sending it again at once could count it twice, since the upstream service, when it waits for
// Redis, counts it once Redis is back.
var ErrUnconfirmed = errors.New("the ratelimit service took the charge but did not confirm it in time; it counts it once it can, or it is sent again if it reports that it could not")

// retryable reports errors after which nothing was applied, so sending again cannot count
// twice: the service was not reached, or it reported that it could not count (its Redis is
// away, or it has not loaded its limits yet; the upstream service reports both as Unknown), or
// the Refunder's Redis did not answer. A call that timed out may still be applied once a
// stalled service resumes, so it is not sent again; neither is one refused as invalid.
func retryable(err error) bool {
	s, isStatus := status.FromError(err)
	if !isStatus {
		return true // the Refunder's Redis
	}
	switch s.Code() {
	case codes.Unavailable, codes.Unknown, codes.ResourceExhausted, codes.Aborted:
		return true
	default:
		return false
	}
}

// conns keeps one client connection per service address.
type conns struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (c *conns) get(target string) (*grpc.ClientConn, error) {
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

func (c *conns) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for target, conn := range c.conns {
		_ = conn.Close()
		delete(c.conns, target)
	}
}

// CheckOnce asks the service at target about ds in domain with a client of its own, for a
// single question such as a readiness probe or `tollgate quota`. It gives up when ctx ends
// (within 5 s without a deadline).
func CheckOnce(ctx context.Context, target, domain string, ds []Descriptor) ([]Status, error) {
	c, err := New(Options{})
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close(context.Background()) }()
	timeout := 5 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}
	return c.Check(ctx, target, domain, ds, timeout)
}

// Bounds are the client's queue bounds, fixed at build time, for status pages.
type Bounds struct {
	// Queue is how many checks, charges and refunds (each) may wait for a call; a caller that
	// finds the queue full waits for room: backpressure, never a dropped charge.
	Queue int `json:"queue"`
	// CallsInFlight is how many calls each of checks, charges and refunds has in flight.
	CallsInFlight int `json:"calls_in_flight"`
	// Backlog is how many undelivered charges and refunds are kept for retry while the
	// service or Redis is away; beyond it the oldest are given up, logged and counted.
	Backlog int `json:"backlog"`
}

// ClientBounds reports the bounds every Client has.
func ClientBounds() Bounds {
	return Bounds{Queue: queueSize, CallsInFlight: senders, Backlog: backlogMax}
}
