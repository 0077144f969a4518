package rlsclient_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
)

// recordingRefunder is a Refunder that keeps what it is asked to take back.
type recordingRefunder struct {
	mu  sync.Mutex
	got []rlsclient.Refund
}

func (r *recordingRefunder) Refund(_ context.Context, refunds []rlsclient.Refund) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, refunds...)
	return nil
}

// refunds renders every refund taken as "domain key=value,... UNIT -hits", in order.
func (r *recordingRefunder) refunds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.got))
	for i, f := range r.got {
		d := rlsclient.Descriptor{Entries: f.Entries}
		out[i] = fmt.Sprintf("%s %s %s -%d", f.Domain, d, f.Unit, f.Hits)
	}
	return out
}

// newClientWith is newClient with a Refunder; nil gives a client without one.
func newClientWith(t *testing.T, refunder rlsclient.Refunder) *rlsclient.Client {
	t.Helper()
	if refunder == nil {
		return newClient(t)
	}
	c, err := rlsclient.New(rlsclient.Options{Refunder: refunder})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func mustFit(model, quota, user string, hits uint64) rlsclient.Descriptor {
	d := counter(model, quota, user, hits)
	d.MustFit = true
	return d
}

// allCalls is every call the fake received: it files a call under checks or charges by its
// first descriptor alone, and an admission may start with either.
func allCalls(f *rlsclienttest.Fake) []*rlsv3.RateLimitRequest {
	return append(f.CheckCalls(), f.ChargeCalls()...)
}

// onlyCall is the one call the fake received, rendered "key=value,... +hits" per descriptor,
// in the order sent. Every descriptor must carry an explicit addend.
func onlyCall(t *testing.T, f *rlsclienttest.Fake) []string {
	t.Helper()
	calls := allCalls(f)
	if len(calls) != 1 {
		t.Fatalf("the service got %d calls, want 1: %v", len(calls), calls)
	}
	for i, d := range calls[0].GetDescriptors() {
		if d.GetHitsAddend() == nil {
			t.Errorf("descriptor %d has no explicit hits_addend (the service would count 1)", i)
		}
	}
	return rlsclienttest.Describe(calls[0])
}

// waitDone returns a done func and a function that waits for it (failing after 5 s) and
// returns its error.
func waitDone(t *testing.T) (func(error), func() error) {
	t.Helper()
	ch := make(chan error, 1)
	return func(err error) { ch <- err }, func() error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("done was not called within 5 s")
			return nil
		}
	}
}

func hitsOf(res []rlsclient.Reservation) []uint64 {
	out := make([]uint64, len(res))
	for i, r := range res {
		out[i] = r.Hits()
	}
	return out
}

// The fake's answers: every descriptor within its limit, or over it (rlsclienttest.Fake.Over).
var (
	fakeLimit = rlsclient.Limit{Name: rlsclienttest.LimitName, PerWindow: rlsclienttest.PerWindow, Unit: "HOUR", Window: time.Hour}
	fakeOK    = rlsclient.Status{Limit: fakeLimit, Remaining: rlsclienttest.Remaining, ResetIn: rlsclienttest.ResetIn}
	fakeOver  = rlsclient.Status{OverLimit: true, Limit: fakeLimit, ResetIn: rlsclienttest.ResetIn}
)

// TestAdmitSendsMustFitAlone: the exact descriptors each admission sends, the status each
// descriptor gets back and what each reserves, with and without a Refunder. A MustFit
// descriptor with hits is sent once, with its hits and no check before it, and counted even
// without a Refunder; a normal descriptor is checked, then reserved only with a Refunder. bob's
// counters are over their limit, so a status given to the wrong descriptor shows.
func TestAdmitSendsMustFitAlone(t *testing.T) {
	tokens := counter("qwen3", "tokens", "alice", 30)   // normal, with hits
	requests := mustFit("qwen3", "requests", "bob", 1)  // MustFit, over its limit
	checkOnly := counter("qwen3", "hourly", "carol", 0) // normal, a check
	mustFitZero := mustFit("qwen3", "requests", "dave", 0)
	const (
		tokensCheck = "model=qwen3,quota=tokens,user=alice +0"
		tokensHits  = "model=qwen3,quota=tokens,user=alice +30"
		requestsHit = "model=qwen3,quota=requests,user=bob +1"
		carolCheck  = "model=qwen3,quota=hourly,user=carol +0"
	)
	tests := []struct {
		name         string
		refunder     bool
		ds           []rlsclient.Descriptor
		wantSent     []string
		wantStatuses []rlsclient.Status
		wantHits     []uint64
	}{
		{"must fit only, refunder", true, []rlsclient.Descriptor{requests},
			[]string{requestsHit}, []rlsclient.Status{fakeOver}, []uint64{1}},
		{"must fit only, no refunder", false, []rlsclient.Descriptor{requests},
			[]string{requestsHit}, []rlsclient.Status{fakeOver}, []uint64{1}},
		{"must fit without hits is a check", true, []rlsclient.Descriptor{mustFitZero},
			[]string{"model=qwen3,quota=requests,user=dave +0"}, []rlsclient.Status{fakeOK}, []uint64{0}},
		{"normal only, refunder", true, []rlsclient.Descriptor{tokens},
			[]string{tokensCheck, tokensHits}, []rlsclient.Status{fakeOK}, []uint64{30}},
		{"normal only, no refunder", false, []rlsclient.Descriptor{tokens},
			[]string{tokensCheck}, []rlsclient.Status{fakeOK}, []uint64{0}},
		{"mixed, refunder", true, []rlsclient.Descriptor{tokens, requests, checkOnly},
			[]string{tokensCheck, tokensHits, requestsHit, carolCheck},
			[]rlsclient.Status{fakeOK, fakeOver, fakeOK}, []uint64{30, 1, 0}},
		{"mixed, no refunder", false, []rlsclient.Descriptor{tokens, requests, checkOnly},
			[]string{tokensCheck, requestsHit, carolCheck},
			[]rlsclient.Status{fakeOK, fakeOver, fakeOK}, []uint64{0, 1, 0}},
		{"mixed, must fit first, refunder", true, []rlsclient.Descriptor{requests, tokens},
			[]string{requestsHit, tokensCheck, tokensHits},
			[]rlsclient.Status{fakeOver, fakeOK}, []uint64{1, 30}},
		{"mixed, must fit first, no refunder", false, []rlsclient.Descriptor{requests, tokens},
			[]string{requestsHit, tokensCheck},
			[]rlsclient.Status{fakeOver, fakeOK}, []uint64{1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			fake.Over("bob")
			var refunder rlsclient.Refunder
			if tt.refunder {
				refunder = &recordingRefunder{}
			}
			c := newClientWith(t, refunder)
			statuses, res, err := c.Admit(context.Background(), fake.Addr, "tollgate", tt.ds, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := onlyCall(t, fake); fmt.Sprint(got) != fmt.Sprint(tt.wantSent) {
				t.Errorf("sent\n  %q\nwant\n  %q", got, tt.wantSent)
			}
			if fmt.Sprint(statuses) != fmt.Sprint(tt.wantStatuses) {
				t.Errorf("statuses\n  %+v\nwant\n  %+v", statuses, tt.wantStatuses)
			}
			if got := hitsOf(res); fmt.Sprint(got) != fmt.Sprint(tt.wantHits) {
				t.Errorf("reserved hits %v, want %v", got, tt.wantHits)
			}
		})
	}
}

// positional answers every call with n statuses told apart by their position k: Remaining
// 100+k, and the unit units[k], so a status or a refund shows which descriptor of the call it
// came from. A call of another length is an error (the client checks the count).
func positional(t *testing.T, n int) (addr string, units []string) {
	t.Helper()
	all := []rlsv3.RateLimitResponse_RateLimit_Unit{
		rlsv3.RateLimitResponse_RateLimit_SECOND, rlsv3.RateLimitResponse_RateLimit_MINUTE,
		rlsv3.RateLimitResponse_RateLimit_HOUR, rlsv3.RateLimitResponse_RateLimit_DAY,
		rlsv3.RateLimitResponse_RateLimit_WEEK, rlsv3.RateLimitResponse_RateLimit_MONTH,
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for k := range n {
		resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{
			Code:               rlsv3.RateLimitResponse_OK,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: "q", RequestsPerUnit: 1000, Unit: all[k]},
			LimitRemaining:     uint32(100 + k),
			DurationUntilReset: durationpb.New(30 * time.Second),
		})
		units = append(units, all[k].String())
	}
	return startCanned(t, resp), units
}

// TestAdmitPairsStatusesByPosition: the fake answers every counter of one user alike, so it
// cannot tell a check's status from the reservation's after it. Here every status of the call
// differs, which shows the status each descriptor gets is the right one of the call: the
// check's for a normal descriptor (the counter before the request), the counted one's for a
// MustFit descriptor (the counter after its hits). Release shows which status each
// reservation took its window from.
func TestAdmitPairsStatusesByPosition(t *testing.T) {
	tokens := counter("qwen3", "tokens", "alice", 30)
	requests := mustFit("qwen3", "requests", "alice", 2)
	checkOnly := counter("qwen3", "hourly", "alice", 0)
	ds := []rlsclient.Descriptor{tokens, requests, checkOnly}

	t.Run("refunder", func(t *testing.T) {
		// Sent: tokens +0, tokens +30, requests +2, hourly +0.
		addr, units := positional(t, 4)
		refunder := &recordingRefunder{}
		c := newClientWith(t, refunder)
		statuses, res, err := c.Admit(context.Background(), addr, "tollgate", ds, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := remainingOf(statuses); fmt.Sprint(got) != "[100 102 103]" {
			t.Errorf("statuses from call positions (Remaining-100) %v, want [100 102 103]", got)
		}
		if got := hitsOf(res); fmt.Sprint(got) != "[30 2 0]" {
			t.Errorf("reserved hits %v, want [30 2 0]", got)
		}
		done, wait := waitDone(t)
		c.Release(res, done)
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		want := []string{
			"tollgate model=qwen3,quota=tokens,user=alice " + units[1] + " -30",
			"tollgate model=qwen3,quota=requests,user=alice " + units[2] + " -2",
		}
		if got := refunder.refunds(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("refunds\n  %q\nwant\n  %q", got, want)
		}
	})

	t.Run("no refunder", func(t *testing.T) {
		// Sent: tokens +0, requests +2, hourly +0.
		addr, _ := positional(t, 3)
		c := newClient(t)
		statuses, res, err := c.Admit(context.Background(), addr, "tollgate", ds, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := remainingOf(statuses); fmt.Sprint(got) != "[100 101 102]" {
			t.Errorf("statuses from call positions %v, want [100 101 102]", got)
		}
		if got := hitsOf(res); fmt.Sprint(got) != "[0 2 0]" {
			t.Errorf("reserved hits %v, want [0 2 0]", got)
		}
	})
}

func remainingOf(statuses []rlsclient.Status) []uint64 {
	out := make([]uint64, len(statuses))
	for i, s := range statuses {
		out[i] = s.Remaining
	}
	return out
}

// TestReleaseMustFit: releasing a refused request's MustFit reservation takes back exactly its
// hits when the client has a Refunder, and charges nothing. Without one nothing can be taken
// back: Release reports success at once and leaves nothing waiting.
func TestReleaseMustFit(t *testing.T) {
	ds := []rlsclient.Descriptor{mustFit("qwen3", "requests", "alice", 3)}

	t.Run("refunder", func(t *testing.T) {
		fake := rlsclienttest.Start(t)
		refunder := &recordingRefunder{}
		c := newClientWith(t, refunder)
		_, res, err := c.Admit(context.Background(), fake.Addr, "tollgate", ds, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		done, wait := waitDone(t)
		c.Release(res, done)
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		want := []string{"tollgate model=qwen3,quota=requests,user=alice HOUR -3"}
		if got := refunder.refunds(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("refunds %q, want %q", got, want)
		}
		if n := len(allCalls(fake)); n != 1 {
			t.Errorf("the service got %d calls, want only the admission's", n)
		}
	})

	t.Run("no refunder", func(t *testing.T) {
		fake := rlsclienttest.Start(t)
		c := newClient(t)
		_, res, err := c.Admit(context.Background(), fake.Addr, "tollgate", ds, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := hitsOf(res); fmt.Sprint(got) != "[3]" {
			t.Fatalf("reserved hits %v, want [3]: the hits were counted", got)
		}
		done, wait := waitDone(t)
		c.Release(res, done)
		if err := wait(); err != nil {
			t.Errorf("release without a refunder: %v", err)
		}
		if n := c.Backlog(); n != 0 {
			t.Errorf("backlog %d after release without a refunder, want 0", n)
		}
		if n := len(allCalls(fake)); n != 1 {
			t.Errorf("the service got %d calls, want only the admission's", n)
		}
	})
}

// TestSettleAsReserved: a request that cost exactly what it reserved changes nothing; one
// that cost more is charged the difference, and with a Refunder one that cost less gets the
// difference back.
func TestSettleAsReserved(t *testing.T) {
	ds := []rlsclient.Descriptor{counter("qwen3", "tokens", "alice", 30), mustFit("qwen3", "requests", "alice", 1)}
	for _, withRefunder := range []bool{true, false} {
		t.Run(fmt.Sprintf("refunder=%v", withRefunder), func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			refunder := &recordingRefunder{}
			var r rlsclient.Refunder
			if withRefunder {
				r = refunder
			}
			c := newClientWith(t, r)
			_, res, err := c.Admit(context.Background(), fake.Addr, "tollgate", ds, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			reserved := hitsOf(res)
			if reserved[1] != 1 {
				t.Fatalf("the MustFit descriptor reserved %d, want 1", reserved[1])
			}
			before := len(allCalls(fake))
			done, wait := waitDone(t)
			c.Settle(res, reserved, done)
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			if n := len(allCalls(fake)) - before; n != 0 {
				t.Errorf("settling as reserved made %d calls, want none", n)
			}
			if got := refunder.refunds(); len(got) != 0 {
				t.Errorf("settling as reserved refunded %q", got)
			}

			// The MustFit counter: 4 more than reserved is charged 4.
			done, wait = waitDone(t)
			c.Settle(res[1:], []uint64{5}, done)
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			if got, want := fake.Charges(), "model=qwen3,quota=requests,user=alice +4"; !slices.Contains(got, want) {
				t.Errorf("charges %q lack %q", got, want)
			}
			if got := refunder.refunds(); len(got) != 0 {
				t.Errorf("a dearer request refunded %q", got)
			}
		})
	}
}

// TestAdmitWhileDegradedStillCountsMustFit: once a reserving call fails, Admit only checks
// normal descriptors, but still counts a MustFit descriptor's hits (and, with a Refunder, can
// take them back); the next successful call ends that state.
func TestAdmitWhileDegradedStillCountsMustFit(t *testing.T) {
	fake := rlsclienttest.Start(t)
	refunder := &recordingRefunder{}
	c := newClientWith(t, refunder)
	ds := []rlsclient.Descriptor{counter("qwen3", "tokens", "alice", 30), mustFit("qwen3", "requests", "alice", 1)}
	if _, _, err := c.Admit(context.Background(), rlsclienttest.DeadAddr(t), "tollgate", ds, 2*time.Second); err == nil {
		t.Fatal("an admission at a dead address succeeded")
	}

	_, res, err := c.Admit(context.Background(), fake.Addr, "tollgate", ds, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"model=qwen3,quota=tokens,user=alice +0", "model=qwen3,quota=requests,user=alice +1"}
	if got := onlyCall(t, fake); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("degraded: sent %q, want %q", got, want)
	}
	if got := hitsOf(res); fmt.Sprint(got) != "[0 1]" {
		t.Errorf("degraded: reserved hits %v, want [0 1]", got)
	}
	done, wait := waitDone(t)
	c.Release(res, done)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if got, want := refunder.refunds(), []string{"tollgate model=qwen3,quota=requests,user=alice HOUR -1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("refunds %q, want %q", got, want)
	}

	// The degraded admission succeeded: the next one reserves again.
	before := len(allCalls(fake))
	if _, _, err := c.Admit(context.Background(), fake.Addr, "tollgate", ds, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	calls := fake.CheckCalls() // both admissions start with a check
	if len(allCalls(fake)) != before+1 {
		t.Fatalf("%d calls, want %d", len(calls), before+1)
	}
	want = []string{"model=qwen3,quota=tokens,user=alice +0", "model=qwen3,quota=tokens,user=alice +30", "model=qwen3,quota=requests,user=alice +1"}
	if got := rlsclienttest.Describe(calls[len(calls)-1]); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after recovery: sent %q, want %q", got, want)
	}
}
