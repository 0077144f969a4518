package rlsclient

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Reservations. The service's counters only go up, and a check made before a request runs
// cannot know what the request will cost: with check-then-charge, every request in flight at
// once passes the same check, so a client that opens many connections spends many requests
// past its limit. Admit therefore counts each request's worst case on its counters as it is
// admitted, and Settle replaces that by the actual cost when the request ends: the difference
// is charged through the service when the request cost more, and taken back from the
// counter in Redis when it cost less (Refunder), the one change the service's API cannot make.

// Refund takes hits back from one counter in the window that contains At.
type Refund struct {
	Domain  string
	Entries []Entry
	// Unit is the unit of the limit the hits were counted under (SECOND ... YEAR): with At,
	// it names the window, and so the counter's key.
	Unit string
	At   time.Time
	Hits uint64
}

// Refunder takes hits back from the service's counters.
type Refunder interface {
	Refund(ctx context.Context, refunds []Refund) error
}

// Reservation is what an admission counted on one counter ahead of the request's real cost.
type Reservation struct {
	target, domain string
	entries        []Entry
	// hits were added to the counter in the window named by unit and at; unit is empty when
	// nothing was counted (no limit matched, or the client cannot refund).
	hits uint64
	unit string
	at   time.Time
}

// Hits is what was reserved.
func (r Reservation) Hits() uint64 { return r.hits }

// Admit asks the service about each descriptor's counter and counts its Hits on it, in one
// call: for each descriptor the call carries a check (hits 0) and then the reservation, so
// the status returned is the counter as it was before this request, and requests admitted
// at once each see the others' reservations (the service applies a call's descriptors in
// order). It waits first for this client's charges and refunds to the same counters.
//
// Without a Refunder nothing is reserved (a reservation could never be taken back): Admit
// then checks only. A MustFit descriptor is the exception: its hits are counted at once and
// its status is the counter after them, so concurrent requests cannot all pass one check. A
// refused request gives its reservations back with Release.
func (c *Client) Admit(ctx context.Context, target, domain string, ds []Descriptor, timeout time.Duration) ([]Status, []Reservation, error) {
	if err := checkRequest(domain, ds); err != nil {
		return nil, nil, err
	}
	if len(ds) == 0 {
		return nil, nil, nil
	}
	// While the service does not answer for these counters, requests are only checked: a
	// reservation it took without answering would be counted late, when its Redis is back.
	keys := counterKeys(domain, ds)
	reserve := c.refunder != nil && !c.failing.any(keys)
	call := make([]Descriptor, 0, 2*len(ds))
	for _, d := range ds {
		switch {
		case d.MustFit && d.Hits > 0:
			// Counted at once whatever the state: these hits are the request's whole cost.
			call = append(call, d)
		case reserve && d.Hits > 0:
			call = append(call, Descriptor{Entries: d.Entries, Override: d.Override}, d)
		default:
			call = append(call, Descriptor{Entries: d.Entries, Override: d.Override})
		}
	}
	sent := time.Now()
	// split pairs the statuses of the call with the request's descriptors: the status that
	// decides, and what was counted.
	split := func(statuses []Status) ([]Status, []Reservation) {
		decisive := make([]Status, len(ds))
		reservations := make([]Reservation, len(ds))
		i := 0
		for j, d := range ds {
			r := Reservation{target: target, domain: domain, entries: d.Entries}
			counted := d.Hits > 0 && (d.MustFit || reserve)
			if !d.MustFit || !counted {
				// A check went first: the counter before this request.
				decisive[j] = statuses[i]
				i++
			}
			if counted {
				s := statuses[i]
				i++
				if d.MustFit {
					decisive[j] = s
				}
				if s.Limit.Matched() {
					r.hits, r.at = d.Hits, windowTime(sent, s.ResetIn)
					if c.refunder != nil {
						// Without access to the counters nothing can be taken back.
						r.unit = s.Limit.Unit
					}
				}
			}
			reservations[j] = r
		}
		return decisive, reservations
	}
	// A reservation the service counted after its caller gave up is taken back.
	late := func(statuses []Status) {
		_, reservations := split(statuses)
		c.Release(reservations, nil)
	}
	if c.refunder == nil {
		late = nil
	}
	statuses, err := c.check(ctx, target, domain, call, keys, timeout, late)
	if c.failing.mark(keys, err != nil) && err == nil {
		c.backlog.poke() // charges held while the service did not answer can go now
	}
	if err != nil {
		return nil, nil, err
	}
	decisive, reservations := split(statuses)
	return decisive, reservations, nil
}

// windowTime is a time inside the window the service counted in: the service reports the time
// to the window's end in whole seconds from its own clock, read after the call was sent.
func windowTime(sent time.Time, resetIn time.Duration) time.Time {
	if resetIn < time.Second {
		return sent
	}
	return sent.Truncate(time.Second).Add(resetIn - time.Second)
}

// Settle replaces each reservation by the actual cost of the request on that counter (in
// the order of res): the difference is charged through the service when the request cost
// more, and refunded when it cost less. A reservation that counted nothing is charged the
// actual cost in full. done, if not nil, gets the joined outcome once everything is applied
// or given up.
func (c *Client) Settle(res []Reservation, actual []uint64, done func(error)) {
	var charges []Descriptor
	var refunds []Refund
	var target, domain string // a request's reservations share them
	for i, r := range res {
		target, domain = r.target, r.domain
		switch cost := actual[i]; {
		case cost > r.hits:
			charges = append(charges, Descriptor{Entries: r.entries, Hits: cost - r.hits})
		case cost < r.hits && r.unit != "":
			refunds = append(refunds, Refund{Domain: r.domain, Entries: r.entries, Unit: r.unit, At: r.at, Hits: r.hits - cost})
		}
	}
	outcomes := newJoin(2, done)
	if len(charges) > 0 {
		c.Charge(target, domain, charges, outcomes.one)
	} else {
		outcomes.one(nil)
	}
	if len(refunds) > 0 {
		c.refund(refunds, outcomes.one)
	} else {
		outcomes.one(nil)
	}
}

// SettleNow is Settle, sent at once rather than after lingering for company: for a caller
// that waits for done before it answers.
func (c *Client) SettleNow(res []Reservation, actual []uint64, done func(error)) {
	c.Settle(res, actual, done)
	c.flush()
}

// Release gives every reservation back: the request was refused.
func (c *Client) Release(res []Reservation, done func(error)) {
	c.Settle(res, make([]uint64, len(res)), done)
}

// join calls done once with the joined errors of n outcomes.
type join struct {
	mu   sync.Mutex
	left int
	errs []error
	done func(error)
}

func newJoin(n int, done func(error)) *join { return &join{left: n, done: done} }

func (j *join) one(err error) {
	j.mu.Lock()
	j.left--
	if err != nil {
		j.errs = append(j.errs, err)
	}
	last := j.left == 0
	j.mu.Unlock()
	if last && j.done != nil {
		j.done(errors.Join(j.errs...))
	}
}
