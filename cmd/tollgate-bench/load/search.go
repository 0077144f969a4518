package load

import (
	"fmt"
	"math"
	"time"
)

// Criteria say when a fixed-rate run counts as sustained.
type Criteria struct {
	// MinSuccess is the smallest acceptable fraction of 2xx answers (0.999: 99.9%).
	MinSuccess float64
	// MaxP99 is the largest acceptable 99th percentile latency: past it, queues are growing.
	MaxP99 time.Duration
	// MinDelivered is the smallest acceptable fraction of the offered rate that must be both
	// sent and answered successfully; below it the system (or the load generator) fell behind.
	MinDelivered float64
}

// Sustained reports whether r meets c, and if not, why.
func (c Criteria) Sustained(r Result) (bool, string) {
	switch {
	case r.Requests == 0:
		return false, "no requests completed"
	case r.Success < c.MinSuccess:
		return false, fmt.Sprintf("success %.3f%% < %.3f%%", 100*r.Success, 100*c.MinSuccess)
	case r.P99 > c.MaxP99:
		return false, fmt.Sprintf("p99 %s > %s", ms(r.P99), ms(c.MaxP99))
	case r.Sent < c.MinDelivered*r.Offered:
		return false, fmt.Sprintf("sent %.0f/s < %.0f%% of offered", r.Sent, 100*c.MinDelivered)
	case r.Throughput < c.MinDelivered*r.Offered:
		return false, fmt.Sprintf("answered %.0f/s < %.0f%% of offered", r.Throughput, 100*c.MinDelivered)
	}
	return true, ""
}

// Search finds the highest sustained rate: it multiplies the rate by Growth after every
// sustained step until one fails (or MaxRate is reached), then bisects between the last
// sustained and the first failed rate Refine times. A failed step is run once more before it
// counts, so one burst of noise on a shared machine does not end the search early. It does not
// run anything itself: the caller asks Next for a rate, runs it, and reports with Record, so
// the searches of several systems can take turns and share whatever noise the machine has.
type Search struct {
	Start, Growth, MaxRate float64
	Refine                 int
	Criteria               Criteria

	good, bad float64 // highest sustained, lowest failed rate so far (bad 0: none failed)
	refined   int
	next      float64
	retrying  bool // the step at next failed once and is being run again
	done      bool
	// Steps are every run recorded, in order.
	Steps []Step
}

// Step is one run of a search.
type Step struct {
	Result    Result
	Sustained bool
	Reason    string
}

// NewSearch starts a search at start requests per second.
func NewSearch(start, growth, maxRate float64, refine int, c Criteria) *Search {
	return &Search{Start: start, Growth: growth, MaxRate: maxRate, Refine: refine, Criteria: c, next: start}
}

// Next is the rate to run next; ok is false once the search is over.
func (s *Search) Next() (rate float64, ok bool) {
	if s.done {
		return 0, false
	}
	return s.next, true
}

// Record takes the result of running the rate Next returned.
func (s *Search) Record(r Result) {
	ok, reason := s.Criteria.Sustained(r)
	s.Steps = append(s.Steps, Step{Result: r, Sustained: ok, Reason: reason})
	rate := s.next
	if !ok && !s.retrying {
		s.retrying = true
		return
	}
	s.retrying = false
	if ok {
		s.good = math.Max(s.good, rate)
	} else if s.bad == 0 || rate < s.bad {
		s.bad = rate
	}
	switch {
	case s.bad == 0 && rate >= s.MaxRate:
		s.done = true
	case s.bad == 0:
		s.next = math.Min(rate*s.Growth, s.MaxRate)
	default:
		// Bisect; with no sustained rate yet (good 0) this heads down towards zero.
		if s.refined >= s.Refine {
			s.done = true
			return
		}
		s.refined++
		s.next = math.Round((s.good + s.bad) / 2)
		if s.next <= s.good || s.next >= s.bad {
			s.done = true
		}
	}
}

// Max is the highest sustained rate found (0 if none), with the step that showed it.
func (s *Search) Max() (float64, *Step) {
	var best *Step
	for i := range s.Steps {
		st := &s.Steps[i]
		if st.Sustained && (best == nil || st.Result.Offered > best.Result.Offered) {
			best = st
		}
	}
	if best == nil {
		return 0, nil
	}
	return best.Result.Offered, best
}
