package rlsclient

import (
	"context"
	"errors"
	"sync"
	"time"
)

// call is one caller's part of a shared call: descriptors for one service and domain (or
// refunds, which go to Redis), and where the answer goes.
type call struct {
	target, domain string
	descriptors    []Descriptor
	// keys are the descriptors' counters (counterKeys), for a charge.
	keys    []string
	refunds []Refund
	// timeout bounds one attempt of the call that carries this one (the first's counts).
	timeout time.Duration
	// keepOpen keeps the call that carries this check open past timeout, for up to
	// lateCallTimeout, to learn what it did (see Client.check).
	keepOpen bool
	// done gets the statuses of this call's descriptors, in order, or the call's error. It is
	// called once, from a sender goroutine, and must not block.
	done func([]Status, error)
}

// size is what the call adds to a batch.
func (c *call) size() int { return len(c.descriptors) + len(c.refunds) }

// batcher groups calls that queue up into shared ShouldRateLimit calls. One collector sees
// every call, so a batch holds all that arrived while it formed (or lingered); while every
// sender is busy, the queue keeps growing and the next batch takes it. A batch never mixes
// services or domains and holds at most maxDescriptors descriptors.
type batcher struct {
	queue          chan *call
	batches        chan []*call  // from the collector to the senders; unbuffered
	flushes        chan struct{} // ends a linger at once: someone waits for what it holds
	maxDescriptors int
	linger         time.Duration
	send           func([]*call)
	workers        sync.WaitGroup

	state  sync.RWMutex // guards closed; add holds it for reading
	closed bool
}

// batcherConfig sizes a batcher.
type batcherConfig struct {
	queue          int           // calls waiting for the collector; beyond it add waits
	senders        int           // calls in flight to the service at once
	maxDescriptors int           // descriptors in one call
	linger         time.Duration // how long a batch waits for company once the queue is empty
}

func newBatcher(cfg batcherConfig, send func([]*call)) *batcher {
	b := &batcher{
		queue:          make(chan *call, cfg.queue),
		batches:        make(chan []*call),
		flushes:        make(chan struct{}, 1),
		maxDescriptors: cfg.maxDescriptors,
		linger:         cfg.linger,
		send:           send,
	}
	b.workers.Add(1 + cfg.senders)
	go b.collect()
	for range cfg.senders {
		go b.work()
	}
	return b
}

// add queues c, waiting for room while the queue is full or until ctx ends. After close it
// sends c at once instead, so a call made during shutdown is still delivered.
func (b *batcher) add(ctx context.Context, c *call) error {
	b.state.RLock()
	if b.closed {
		b.state.RUnlock()
		b.send([]*call{c})
		return nil
	}
	defer b.state.RUnlock()
	select {
	case b.queue <- c: // close waits for the write lock, so the queue is still open here
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batcher) collect() {
	defer b.workers.Done()
	defer close(b.batches)
	var carried *call
	for {
		first := carried
		if first == nil {
			var ok bool
			if first, ok = <-b.queue; !ok {
				return
			}
		}
		var batch []*call
		batch, carried = b.take(first)
		b.batches <- batch
	}
}

func (b *batcher) work() {
	defer b.workers.Done()
	for batch := range b.batches {
		b.send(batch)
	}
}

// take returns first and the queued calls that join it, up to maxDescriptors in all. Once
// the queue is empty it waits up to linger for more (0: not at all). A queued call for
// another service or domain is returned as carried, to start the next batch.
func (b *batcher) take(first *call) (batch []*call, carried *call) {
	batch = []*call{first}
	n := first.size()
	var deadline <-chan time.Time
	if b.linger > 0 {
		timer := time.NewTimer(b.linger)
		defer timer.Stop()
		deadline = timer.C
	}
	for n < b.maxDescriptors {
		var next *call
		var ok bool
		select {
		case next, ok = <-b.queue:
		default:
			if deadline == nil {
				return batch, nil
			}
			select {
			case next, ok = <-b.queue:
			case <-deadline:
				return batch, nil
			case <-b.flushes:
				return batch, nil
			}
		}
		if !ok {
			return batch, nil
		}
		if next.target != first.target || next.domain != first.domain {
			return batch, next
		}
		batch = append(batch, next)
		n += next.size()
	}
	return batch, nil
}

// flush ends the current linger, if any: a caller waits for what is queued.
func (b *batcher) flush() {
	select {
	case b.flushes <- struct{}{}:
	default:
	}
}

// close stops taking queued calls and waits until every queued one is sent, or ctx ends.
func (b *batcher) close(ctx context.Context) error {
	b.state.Lock()
	if b.closed {
		b.state.Unlock()
		return nil
	}
	b.closed = true
	close(b.queue)
	b.state.Unlock()
	done := make(chan struct{})
	go func() {
		b.workers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("calls to the ratelimit service still queued when shutdown gave up")
	}
}
