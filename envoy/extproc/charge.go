package extproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
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
	chargeSent   = "sent"
	chargeFailed = "failed"
)

// Charging limits.
const (
	// chargeQueueSize bounds charges waiting for a worker. A full queue makes the ending
	// exchange wait (its response is already out): backpressure instead of dropping charges.
	chargeQueueSize = 4096
	// chargeWorkers is the number of calls in flight to the ratelimit service at once.
	chargeWorkers = 4
	// chargeBatchDescriptors bounds the descriptors of one call.
	chargeBatchDescriptors = 256
	// chargeLinger is how long a charge waits for others to share its call. The service's
	// cost is mostly per call, so at a few hundred requests a second this divides it by
	// several; no client waits for a charge, and the counters are this much later.
	chargeLinger = 10 * time.Millisecond
	// chargeAttemptTimeout bounds one call; the service answers in about a millisecond.
	chargeAttemptTimeout = 2 * time.Second
	// chargeAttempts is how often a charge is tried while the service is unreachable.
	chargeAttempts = 4
	// chargeRetryBase is the first pause between attempts; it doubles each time.
	chargeRetryBase = 100 * time.Millisecond
)

// Quota is one counter the requests for a model are charged to.
type Quota struct {
	// Name identifies the quota in logs.
	Name string
	// Cost names the Config.Costs entry whose value is charged.
	Cost string
	// Entries are the descriptor entries before the user's: with the user's appended, the
	// counter the request is checked against and charged to.
	Entries []DescriptorEntry
}

// DescriptorEntry is one key/value pair of a rate limit descriptor.
type DescriptorEntry struct{ Key, Value string }

// charge is one finished request's bill: one RateLimitRequest with a descriptor per quota,
// each carrying its own hits_addend.
type charge struct {
	target  string // host:port of the ratelimit service
	request *rlsv3.RateLimitRequest
	basis   string
	model   string
}

// charger sends charges to the ratelimit service from a few workers, retrying while the
// service is unreachable.
type charger struct {
	logger  *slog.Logger
	metrics *Metrics
	queue   chan charge
	batches chan []charge // from the collector to the senders; unbuffered
	workers sync.WaitGroup

	state  sync.RWMutex // guards closed; senders hold it for reading
	closed bool

	conns *rlsConns
}

func newCharger(logger *slog.Logger, metrics *Metrics, conns *rlsConns) *charger {
	c := &charger{
		logger:  logger,
		metrics: metrics,
		queue:   make(chan charge, chargeQueueSize),
		batches: make(chan []charge),
		conns:   conns,
	}
	c.workers.Add(1 + chargeWorkers)
	go c.collect()
	for range chargeWorkers {
		go c.work()
	}
	return c
}

// enqueue hands a charge to the workers, waiting for room when the queue is full. After close
// it is sent right away instead, so a request that ends during shutdown is still charged.
func (c *charger) enqueue(ch charge) {
	c.state.RLock()
	if !c.closed {
		c.queue <- ch // close waits for the write lock, so the queue is still open here
		c.state.RUnlock()
		return
	}
	c.state.RUnlock()
	c.send([]charge{ch})
}

// collect groups queued charges into calls. One collector sees every charge, so a batch holds
// all that arrived while it lingered; while every sender is busy, the next batch keeps growing.
func (c *charger) collect() {
	defer c.workers.Done()
	defer close(c.batches)
	var carried *charge
	for {
		var first charge
		if carried != nil {
			first, carried = *carried, nil
		} else {
			ch, ok := <-c.queue
			if !ok {
				return
			}
			first = ch
		}
		var batch []charge
		batch, carried = takeBatch(c.queue, first, chargeRoute, chargeSize, chargeBatchDescriptors, chargeLinger)
		c.batches <- batch
	}
}

func (c *charger) work() {
	defer c.workers.Done()
	for batch := range c.batches {
		c.send(batch)
	}
}

func chargeRoute(ch charge) (string, string) { return ch.target, ch.request.GetDomain() }
func chargeSize(ch charge) int               { return len(ch.request.GetDescriptors()) }

// send delivers a batch of charges in one call, retrying unreachable-service errors with a
// doubling pause. The batch shares one fate: every charge in it is counted sent or failed.
func (c *charger) send(batch []charge) {
	first := batch[0]
	request := first.request
	if len(batch) > 1 {
		request = &rlsv3.RateLimitRequest{Domain: first.request.GetDomain()}
		for _, ch := range batch {
			request.Descriptors = append(request.Descriptors, ch.request.GetDescriptors()...)
		}
	}
	conn, err := c.conns.get(first.target)
	pause := chargeRetryBase
	for attempt := 1; err == nil; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), chargeAttemptTimeout)
		_, err = rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, request)
		cancel()
		if err == nil || attempt == chargeAttempts || !retryable(err) {
			break
		}
		time.Sleep(pause)
		pause *= 2
	}
	result := chargeSent
	if err != nil {
		result = chargeFailed
		for _, ch := range batch {
			c.logger.Error("quota charge not delivered; these tokens are not counted",
				"model", ch.model, "basis", ch.basis, "ratelimit", ch.target, "descriptors", describe(ch.request), "error", err)
		}
	}
	for _, ch := range batch {
		c.metrics.charges.WithLabelValues(ch.basis, result).Inc()
	}
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return true
	default:
		return false
	}
}

// close stops taking queued charges and waits until every queued one is sent (or ctx ends);
// charges already handed over are not lost to a clean shutdown.
func (c *charger) close(ctx context.Context) error {
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
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.New("charges still being sent when shutdown gave up")
	}
	return err
}

// chargeRequest builds the bill for one user's request on model: one descriptor per quota
// with a non-zero cost. It returns nil when nothing is to be charged.
func chargeRequest(cfg *Config, model, user string, costs map[string]int64) *rlsv3.RateLimitRequest {
	var descriptors []*ratelimitv3.RateLimitDescriptor
	for _, q := range cfg.Quotas[model] {
		hits, ok := costs[q.Cost]
		if !ok || hits <= 0 {
			continue // a zero addend would only check, and an unknown cost is never guessed
		}
		descriptors = append(descriptors, &ratelimitv3.RateLimitDescriptor{
			Entries:    descriptorEntries(cfg, q, user),
			HitsAddend: wrapperspb.UInt64(uint64(hits)),
		})
	}
	if len(descriptors) == 0 {
		return nil
	}
	return &rlsv3.RateLimitRequest{Domain: cfg.RateLimitDomain, Descriptors: descriptors}
}

// describe renders a request's descriptors for a log line.
func describe(req *rlsv3.RateLimitRequest) []string {
	out := make([]string, 0, len(req.GetDescriptors()))
	for _, d := range req.GetDescriptors() {
		var b strings.Builder
		for i, e := range d.GetEntries() {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(e.GetKey() + "=" + e.GetValue())
		}
		fmt.Fprintf(&b, " +%d", d.GetHitsAddend().GetValue())
		out = append(out, b.String())
	}
	return out
}
