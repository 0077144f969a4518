package rlsclient

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Carrying counters across the service's windows. The service keys every counter by the
// window its limit's unit names, aligned to the Unix epoch. A counter that must outlive such
// a window (a calendar period, whose own boundary is in the descriptor) is copied into the
// next window when that one starts, by the Carrier; the copy is made once per counter and
// window, and this client remembers the ones it made so the next requests skip the round trip.

// Carrier copies a counter into the window that starts at boundary (rls.Counters does, in
// Redis). A Refunder that is also a Carrier is used for both.
type Carrier interface {
	Carry(ctx context.Context, domain string, entries []Entry, unit string, boundary time.Time) error
}

// ErrNoCounters says the client has no access to the service's counters (no Redis).
var ErrNoCounters = errors.New("no access to the ratelimit service's counters")

// maxCarried bounds the carries remembered; past it they are forgotten and, at worst, asked
// of Redis again (where the copy is made once anyway).
const maxCarried = 100_000

// carried remembers the counters carried into the current window.
type carried struct {
	mu       sync.Mutex
	boundary time.Time
	done     map[string]bool
}

// Carry makes sure the counter named by domain and entries holds, in the window of unit that
// started at boundary, what it held at the end of the window before. It returns at once when
// this client carried it already.
func (c *Client) Carry(ctx context.Context, domain string, entries []Entry, unit string, boundary time.Time) error {
	carrier, ok := c.refunder.(Carrier)
	if !ok {
		return ErrNoCounters
	}
	key := counterKey(domain, entries) + "\x00" + unit
	c.carried.mu.Lock()
	if !c.carried.boundary.Equal(boundary) || len(c.carried.done) >= maxCarried {
		c.carried.boundary, c.carried.done = boundary, map[string]bool{}
	}
	done := c.carried.done[key]
	c.carried.mu.Unlock()
	if done {
		return nil
	}
	if err := carrier.Carry(ctx, domain, entries, unit, boundary); err != nil {
		return err
	}
	c.carried.mu.Lock()
	if c.carried.boundary.Equal(boundary) {
		c.carried.done[key] = true
	}
	c.carried.mu.Unlock()
	return nil
}

// Counter names one of the service's counters: its descriptor entries and the unit of its
// limit.
type Counter struct {
	Entries []Entry
	Unit    string
}

// LimitedCounters names the counters of ds that the service applies a limit to (statuses holds
// its answer for ds, in order), with their indexes in ds: the ones worth reading.
func LimitedCounters(ds []Descriptor, statuses []Status) (counters []Counter, index []int) {
	for i, s := range statuses {
		if s.Limit.Matched() {
			counters = append(counters, Counter{Entries: ds[i].Entries, Unit: s.Limit.Unit})
			index = append(index, i)
		}
	}
	return counters, index
}

// CounterReader reads the service's counters as they are (rls.Counters does, in Redis): the
// service itself only says what remains of a limit, never how far past it a counter is.
type CounterReader interface {
	Counts(ctx context.Context, domain string, counters []Counter, at time.Time) ([]uint64, error)
}

// Counts reads counters through the client's Refunder, when it can read them.
func (c *Client) Counts(ctx context.Context, domain string, counters []Counter, at time.Time) ([]uint64, error) {
	r, ok := c.refunder.(CounterReader)
	if !ok {
		return nil, ErrNoCounters
	}
	return r.Counts(ctx, domain, counters, at)
}

// WindowStart is the start of the service's window of unit that contains t: windows are
// aligned to the Unix epoch.
func WindowStart(unit string, t time.Time) time.Time {
	w := int64(UnitWindow(unit).Seconds())
	if w <= 0 {
		return t
	}
	return time.Unix(t.Unix()/w*w, 0)
}
