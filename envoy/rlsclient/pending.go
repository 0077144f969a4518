package rlsclient

import (
	"context"
	"strings"
	"sync"
)

// pending tracks, per counter, the charges and refunds handed to the client that the service
// (or Redis) has not applied yet. A check of a counter waits for those handed over before it,
// so it sees everything that happened before it on this client: a client that sends its next
// request as soon as the last answer arrived is judged with that answer charged, although
// charges wait a moment to share a call.
type pending struct {
	mu       sync.Mutex
	counters map[string]map[*change]struct{}
}

// change is one outstanding charge or refund; applied is closed once it is applied (or given
// up for good).
type change struct {
	keys    []string
	applied chan struct{}
}

// counterKey identifies a counter of the service, whatever its window.
func counterKey(domain string, entries []Entry) string {
	var b strings.Builder
	b.WriteString(domain)
	for _, e := range entries {
		b.WriteByte(0)
		b.WriteString(e.Key)
		b.WriteByte(0)
		b.WriteString(e.Value)
	}
	return b.String()
}

// add registers a change to the counters keys.
func (p *pending) add(keys []string) *change {
	c := &change{keys: keys, applied: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counters == nil {
		p.counters = map[string]map[*change]struct{}{}
	}
	for _, k := range keys {
		set := p.counters[k]
		if set == nil {
			set = map[*change]struct{}{}
			p.counters[k] = set
		}
		set[c] = struct{}{}
	}
	return c
}

// done marks c applied.
func (p *pending) done(c *change) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range c.keys {
		set := p.counters[k]
		delete(set, c)
		if len(set) == 0 {
			delete(p.counters, k)
		}
	}
	close(c.applied)
}

// outstanding returns the changes to keys not applied yet.
func (p *pending) outstanding(keys []string) []*change {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*change
	for _, k := range keys {
		for c := range p.counters[k] {
			out = append(out, c)
		}
	}
	return out
}

// wait returns once every change to keys registered before the call is applied, or when ctx
// ends. It calls flush first when there is something to wait for, so that changes lingering
// for company go out at once.
func (p *pending) wait(ctx context.Context, keys []string, flush func()) error {
	changes := p.outstanding(keys)
	if len(changes) == 0 {
		return nil
	}
	flush()
	for _, c := range changes {
		select {
		case <-c.applied:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
