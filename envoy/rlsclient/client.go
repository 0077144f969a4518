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
	"sync"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Sizes and timings.
const (
	// queueSize bounds the checks, and the charges, waiting for the collector. A full queue
	// makes the caller wait: backpressure rather than a dropped charge.
	queueSize = 4096
	// senders is the number of calls in flight at once, for checks and for charges each.
	senders = 4
	// maxDescriptors bounds the descriptors of one call.
	maxDescriptors = 256
	// chargeLinger is how long a charge waits for others to share its call. The service's
	// cost is mostly per call, so at a few hundred requests a second this divides it by
	// several; no client waits for a charge, and the counters are this much later.
	chargeLinger = 10 * time.Millisecond
	// chargeAttemptTimeout bounds one charge call; the service answers in about a millisecond.
	chargeAttemptTimeout = 2 * time.Second
	// chargeAttempts is how often a charge is tried while the service is unreachable.
	chargeAttempts = 4
	// chargeRetryBase is the first pause between attempts; it doubles each time.
	chargeRetryBase = 100 * time.Millisecond
)

// Client talks to ratelimit services, one connection per address. It is safe for concurrent
// use; Close it when done.
type Client struct {
	conns   conns
	checks  *batcher
	charges *batcher
}

// New returns a client with its workers running.
func New() *Client {
	c := &Client{}
	c.checks = newBatcher(batcherConfig{queue: queueSize, senders: senders, maxDescriptors: maxDescriptors},
		func(batch []*call) { c.send(batch, 1) })
	c.charges = newBatcher(batcherConfig{queue: queueSize, senders: senders, maxDescriptors: maxDescriptors, linger: chargeLinger},
		func(batch []*call) { c.send(batch, chargeAttempts) })
	return c
}

// Check asks the service at target about ds in domain and returns its statuses, in the order
// of ds. It waits for room in the queue and for the answer until ctx ends, and the call itself
// for at most timeout.
func (c *Client) Check(ctx context.Context, target, domain string, ds []Descriptor, timeout time.Duration) ([]Status, error) {
	if err := checkRequest(domain, ds); err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, nil
	}
	type answer struct {
		statuses []Status
		err      error
	}
	answers := make(chan answer, 1) // a sender never waits for the caller
	cl := &call{target: target, domain: domain, descriptors: ds, timeout: timeout,
		done: func(s []Status, err error) { answers <- answer{s, err} }}
	if err := c.checks.add(ctx, cl); err != nil {
		return nil, err
	}
	select {
	case a := <-answers:
		return a.statuses, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Charge adds each descriptor's hits to its counter in the service at target, in the
// background: it returns once the charge is queued (waiting while the queue is full) and calls
// done, if not nil, with the outcome once the service answered or every attempt failed.
func (c *Client) Charge(target, domain string, ds []Descriptor, done func(error)) {
	if err := checkRequest(domain, ds); err != nil || len(ds) == 0 {
		if done != nil {
			done(err)
		}
		return
	}
	cl := &call{target: target, domain: domain, descriptors: ds, timeout: chargeAttemptTimeout,
		done: func(_ []Status, err error) {
			if done != nil {
				done(err)
			}
		}}
	_ = c.charges.add(context.Background(), cl) // never fails without a deadline
}

// Close sends the checks and charges still queued, then releases the connections. Checks and
// charges made after Close are sent at once, unbatched. It gives up waiting when ctx ends.
func (c *Client) Close(ctx context.Context) error {
	err := errors.Join(c.checks.close(ctx), c.charges.close(ctx))
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

// send makes one call for a batch, trying up to attempts times while the service is
// unreachable with a doubling pause, and hands every caller its own statuses. The batch shares
// one fate: every caller gets the same error.
func (c *Client) send(batch []*call, attempts int) {
	first := batch[0]
	req := &rlsv3.RateLimitRequest{Domain: first.domain}
	for _, cl := range batch {
		for _, d := range cl.descriptors {
			req.Descriptors = append(req.Descriptors, d.proto())
		}
	}
	var resp *rlsv3.RateLimitResponse
	conn, err := c.conns.get(first.target)
	pause := chargeRetryBase
	for attempt := 1; err == nil; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), first.timeout)
		resp, err = rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, req)
		cancel()
		if err == nil || attempt >= attempts || !retryable(err) {
			break
		}
		time.Sleep(pause)
		pause *= 2
	}
	statuses := resp.GetStatuses()
	if err == nil && len(statuses) != len(req.GetDescriptors()) {
		err = fmt.Errorf("the ratelimit service answered %d statuses for %d descriptors", len(statuses), len(req.GetDescriptors()))
	}
	if err != nil {
		err = fmt.Errorf("ratelimit service at %s, domain %q: %w", first.target, first.domain, err)
	}
	for _, cl := range batch {
		if err != nil {
			cl.done(nil, err)
			continue
		}
		n := len(cl.descriptors)
		out := make([]Status, n)
		for i, s := range statuses[:n] {
			out[i] = statusFromProto(s)
		}
		statuses = statuses[n:]
		cl.done(out, nil)
	}
}

// retryable reports errors of a service that may answer a moment later.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
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
