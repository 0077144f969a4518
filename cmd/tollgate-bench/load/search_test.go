package load

import (
	"testing"
	"time"
)

var criteria = Criteria{MinSuccess: 0.999, MaxP99: 50 * time.Millisecond, MinDelivered: 0.95}

// fakeSystem sustains any rate up to capacity and collapses above it.
func fakeSystem(capacity float64) func(rate float64) Result {
	return func(rate float64) Result {
		r := Result{Offered: rate, Sent: rate, Throughput: rate, Requests: uint64(rate), Success: 1, P99: 2 * time.Millisecond}
		if rate > capacity {
			r.Throughput = capacity
			r.P99 = 2 * time.Second
		}
		return r
	}
}

func runSearch(t *testing.T, s *Search, sys func(float64) Result) {
	t.Helper()
	for i := 0; ; i++ {
		rate, ok := s.Next()
		if !ok {
			return
		}
		if i > 100 {
			t.Fatal("search does not end")
		}
		s.Record(sys(rate))
	}
}

func TestSearchFindsCapacity(t *testing.T) {
	s := NewSearch(100, 2, 1e6, 6, criteria)
	runSearch(t, s, fakeSystem(1000))
	got, step := s.Max()
	// Doubling from 100 passes 800 and fails 1600; six bisections land within 1% of 1000.
	if got < 990 || got > 1000 {
		t.Fatalf("max = %.0f, want within [990, 1000]; steps %+v", got, s.Steps)
	}
	if step == nil || !step.Sustained {
		t.Fatalf("best step %+v is not a sustained one", step)
	}
}

func TestSearchStopsAtMaxRate(t *testing.T) {
	s := NewSearch(100, 2, 500, 3, criteria)
	runSearch(t, s, fakeSystem(1e9))
	if got, _ := s.Max(); got != 500 {
		t.Fatalf("max = %.0f, want the cap 500", got)
	}
}

func TestSearchBelowStart(t *testing.T) {
	s := NewSearch(100, 2, 1e6, 4, criteria)
	runSearch(t, s, fakeSystem(30))
	got, _ := s.Max()
	if got == 0 || got > 30 {
		t.Fatalf("max = %.0f, want a rate in (0, 30] after bisecting below the start", got)
	}
}

func TestSustainedReasons(t *testing.T) {
	good := Result{Offered: 100, Sent: 100, Throughput: 99, Requests: 1000, Success: 1, P99: time.Millisecond}
	if ok, why := criteria.Sustained(good); !ok {
		t.Fatalf("good run rejected: %s", why)
	}
	for name, r := range map[string]Result{
		"errors":   {Offered: 100, Sent: 100, Throughput: 99, Requests: 1000, Success: 0.99, P99: time.Millisecond},
		"slow":     {Offered: 100, Sent: 100, Throughput: 99, Requests: 1000, Success: 1, P99: time.Second},
		"behind":   {Offered: 100, Sent: 80, Throughput: 80, Requests: 1000, Success: 1, P99: time.Millisecond},
		"no reply": {Offered: 100},
	} {
		if ok, _ := criteria.Sustained(r); ok {
			t.Errorf("%s: run accepted as sustained: %+v", name, r)
		}
	}
}

// A step that fails once from noise is run again and does not end the search.
func TestSearchRetriesAFailedStepOnce(t *testing.T) {
	sys := fakeSystem(1000)
	failed := map[float64]bool{}
	flaky := func(rate float64) Result {
		if rate == 400 && !failed[rate] {
			failed[rate] = true
			return Result{Offered: rate, Sent: rate, Throughput: rate, Requests: 1, Success: 0.5, P99: time.Millisecond}
		}
		return sys(rate)
	}
	s := NewSearch(100, 2, 1e6, 6, criteria)
	runSearch(t, s, flaky)
	if got, _ := s.Max(); got < 990 {
		t.Fatalf("max = %.0f: one noisy failure at 400 ended the search", got)
	}
	attempts := 0
	for _, st := range s.Steps {
		if st.Result.Offered == 400 {
			attempts++
		}
	}
	if attempts != 2 {
		t.Fatalf("rate 400 ran %d times, want 2 (failed once, retried)", attempts)
	}
}
