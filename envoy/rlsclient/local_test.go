package rlsclient_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// inProcess is a service in this process that answers for one address.
type inProcess struct {
	addr   string
	answer func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)
}

func (p inProcess) Serves(target string) bool { return target == p.addr }

func (p inProcess) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return p.answer(ctx, req)
}

func newLocalClient(t *testing.T, local rlsclient.LocalService) *rlsclient.Client {
	t.Helper()
	c, err := rlsclient.New(rlsclient.Options{Local: local})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// Checks and charges for the address the local service answers for go to it, not over the
// network (nothing listens there); other addresses still use gRPC.
func TestLocalServiceTakesItsCalls(t *testing.T) {
	service := rlsclienttest.Start(t) // its methods answer in process; its port is for the gRPC call
	dead := rlsclienttest.DeadAddr(t)
	c := newLocalClient(t, inProcess{addr: dead, answer: service.ShouldRateLimit})

	got, err := c.Check(context.Background(), dead, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 0)}, time.Second)
	if err != nil {
		t.Fatalf("check through the local service: %v", err)
	}
	if len(got) != 1 || got[0].Remaining != 40 {
		t.Errorf("statuses %+v, want the service's 40 remaining", got)
	}
	var o outcomes
	c.Charge(dead, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, o.done)
	testutil.Eventually(t, 5*time.Second, "the charge taken", func() error {
		if sent, failed := o.counts(); sent != 1 || failed != 0 {
			return errors.New("not sent yet")
		}
		return nil
	})
	if n := len(service.ChargeCalls()); n != 1 {
		t.Errorf("the service took %d charge calls, want 1", n)
	}

	// Another address is a remote service, reached over gRPC.
	if _, err := c.Check(context.Background(), service.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "bob", 0)}, time.Second); err != nil {
		t.Fatalf("check over gRPC: %v", err)
	}
	if n := len(service.CheckCalls()); n != 2 {
		t.Errorf("the service answered %d checks, want 2 (one in process, one over gRPC)", n)
	}
}

// A local call fails as the gRPC call would: an error of the service is Unknown, and a call
// that outlives its timeout is abandoned with DeadlineExceeded while the service still works
// on it.
func TestLocalServiceFailsAsGRPCWould(t *testing.T) {
	const addr = "127.0.0.1:8081"
	failing := newLocalClient(t, inProcess{addr: addr, answer: func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		return nil, errors.New("redis: connection refused")
	}})
	_, err := failing.Check(context.Background(), addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 0)}, time.Second)
	if status.Code(err) != codes.Unknown {
		t.Errorf("a service error: %v (code %v), want Unknown", err, status.Code(err))
	}

	// A charge the service is stuck on is unconfirmed after the charge timeout, and never
	// sent again: the service may still count it.
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int32
	stuck := newLocalClient(t, inProcess{addr: addr, answer: func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		calls.Add(1)
		<-release // as the upstream service does while Redis does not answer
		return &rlsv3.RateLimitResponse{}, nil
	}})
	var o outcomes
	stuck.Charge(addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, o.done)
	testutil.Eventually(t, 10*time.Second, "the charge's outcome", func() error {
		if _, failed := o.counts(); failed != 1 {
			return errors.New("no outcome yet")
		}
		return nil
	})
	if !errors.Is(o.errs[0], rlsclient.ErrUnconfirmed) {
		t.Errorf("a charge the service is stuck on: %v, want ErrUnconfirmed", o.errs[0])
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the service was sent the charge %d times, want once", n)
	}
}

// A charge the service is stuck on, and then fails (its Redis client closed under it, as a
// Sentinel failover does), is sent again once; one it then counts is not.
func TestUnconfirmedChargeTheServiceFailsIsSentAgain(t *testing.T) {
	const addr = "127.0.0.1:8081"
	release := make(chan struct{})
	var calls atomic.Int32
	var resent atomic.Uint64
	c := newLocalClient(t, inProcess{addr: addr, answer: func(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		if calls.Add(1) == 1 {
			<-release
			return nil, errors.New("redis: client closed")
		}
		resent.Store(req.GetDescriptors()[0].GetHitsAddend().GetValue())
		return &rlsv3.RateLimitResponse{Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(req.GetDescriptors()))}, nil
	}})
	var o outcomes
	c.Charge(addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, o.done)
	testutil.Eventually(t, 10*time.Second, "the charge unconfirmed", func() error {
		if _, failed := o.counts(); failed != 1 {
			return errors.New("no outcome yet")
		}
		return nil
	})
	if calls.Load() != 1 {
		t.Fatalf("%d calls before the service answered the first, want 1", calls.Load())
	}
	close(release)
	testutil.Eventually(t, 10*time.Second, "the charge sent again", func() error {
		if n := calls.Load(); n != 2 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	if got := resent.Load(); got != 12 {
		t.Errorf("sent again with %d hits, want 12", got)
	}
	time.Sleep(300 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Errorf("%d calls in all, want 2: the charge counted, then nothing more", n)
	}
}

// While the service does not answer checks, charges are held, not sent into a call that may
// never end; once it answers again (a probe counting nothing), they are sent, once.
func TestChargesAreHeldWhileChecksFail(t *testing.T) {
	const addr = "127.0.0.1:8081"
	var down atomic.Bool
	down.Store(true)
	var charged, probes atomic.Int32
	c := newLocalClient(t, inProcess{addr: addr, answer: func(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		if down.Load() {
			return nil, errors.New("redis: no connection")
		}
		for _, d := range req.GetDescriptors() {
			if d.GetHitsAddend().GetValue() > 0 {
				charged.Add(int32(d.GetHitsAddend().GetValue()))
			} else {
				probes.Add(1)
			}
		}
		return &rlsv3.RateLimitResponse{Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(req.GetDescriptors()))}, nil
	}})
	if _, _, err := c.Admit(context.Background(), addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 5)}, time.Second); err == nil {
		t.Fatal("a check the service failed was answered")
	}
	var o outcomes
	c.Charge(addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, o.done)
	testutil.Eventually(t, 5*time.Second, "the charge held", func() error {
		if c.Backlog() != 1 {
			return fmt.Errorf("backlog %d", c.Backlog())
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // a few attempts of the backlog, each a failed probe
	if sent, failed := o.counts(); sent+failed != 0 || charged.Load() != 0 {
		t.Fatalf("while checks fail: %d sent, %d failed, %d hits charged; want the charge held", sent, failed, charged.Load())
	}
	down.Store(false)
	testutil.Eventually(t, 10*time.Second, "the held charge sent", func() error {
		if sent, _ := o.counts(); sent != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if charged.Load() != 12 || probes.Load() == 0 {
		t.Errorf("%d hits charged after %d probes, want 12 after a probe", charged.Load(), probes.Load())
	}
}

// nopRefunder takes nothing back; it makes a client reserve.
type nopRefunder struct{}

func (nopRefunder) Refund(context.Context, []rlsclient.Refund) error { return nil }

// Reserving checks the service hangs on (it waits for a Redis that is gone) are kept open to
// learn what they did, but hold no sender: once the service answers again, the next check is
// answered at once, however many hung before it.
func TestHungChecksHoldNoSender(t *testing.T) {
	const addr = "127.0.0.1:8081"
	var hang atomic.Bool
	hang.Store(true)
	release := make(chan struct{})
	defer close(release)
	c, err := rlsclient.New(rlsclient.Options{Refunder: nopRefunder{}, Local: inProcess{addr: addr,
		answer: func(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
			if hang.Load() {
				<-release
			}
			return &rlsv3.RateLimitResponse{Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(req.GetDescriptors()))}, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	ds := []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 5)}
	for i := range 8 { // more than the senders
		if _, _, err := c.Admit(context.Background(), addr, "tollgate", ds, 100*time.Millisecond); err == nil {
			t.Fatalf("check %d answered while the service hangs", i)
		}
	}
	hang.Store(false)
	if _, _, err := c.Admit(context.Background(), addr, "tollgate", ds, time.Second); err != nil {
		t.Errorf("the first check after the service recovered: %v", err)
	}
}

// Held per counter: while one counter's checks fail (the shard of a Redis Cluster that holds it
// is away), its charges are held and another counter's still go, and an answered check of
// another counter does not release them.
func TestChargesAreHeldPerCounter(t *testing.T) {
	const addr = "127.0.0.1:8081"
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	charged := map[string]uint64{}
	c := newLocalClient(t, inProcess{addr: addr, answer: func(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range req.GetDescriptors() {
			user := d.GetEntries()[2].GetValue()
			if user == "on-the-lost-shard" && down.Load() {
				return nil, errors.New("redis: connection refused")
			}
		}
		for _, d := range req.GetDescriptors() {
			charged[d.GetEntries()[2].GetValue()] += d.GetHitsAddend().GetValue()
		}
		return &rlsv3.RateLimitResponse{Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(req.GetDescriptors()))}, nil
	}})
	lost, fine := counter("qwen3", "hourly", "on-the-lost-shard", 12), counter("qwen3", "hourly", "elsewhere", 12)
	if _, _, err := c.Admit(context.Background(), addr, "tollgate", []rlsclient.Descriptor{{Entries: lost.Entries, Hits: 5}}, time.Second); err == nil {
		t.Fatal("a check the service failed was answered")
	}
	if _, _, err := c.Admit(context.Background(), addr, "tollgate", []rlsclient.Descriptor{{Entries: fine.Entries, Hits: 5}}, time.Second); err != nil {
		t.Fatal(err)
	}
	var o outcomes
	c.Charge(addr, "tollgate", []rlsclient.Descriptor{lost}, o.done)
	c.Charge(addr, "tollgate", []rlsclient.Descriptor{fine}, o.done)
	testutil.Eventually(t, 5*time.Second, "the other counter's charge sent", func() error {
		if sent, _ := o.counts(); sent != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	mu.Lock()
	got := fmt.Sprint(charged)
	mu.Unlock()
	if c.Backlog() != 1 || got != "map[elsewhere:12]" {
		t.Fatalf("backlog %d, charged %s; want the lost shard's charge held and the other's sent", c.Backlog(), got)
	}
	down.Store(false)
	testutil.Eventually(t, 10*time.Second, "the held charge sent", func() error {
		if sent, _ := o.counts(); sent != 2 {
			return errors.New("not yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if charged["on-the-lost-shard"] != 12 {
		t.Errorf("the lost shard's counter charged %d once it was back, want 12", charged["on-the-lost-shard"])
	}
}
