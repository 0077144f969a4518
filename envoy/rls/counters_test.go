package rls

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mediocregopher/radix/v4"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// reservingStack is the real service with a client that reserves and refunds on its Redis.
type reservingStack struct {
	*stack
	counters *Counters
	client   *rlsclient.Client
	redis    radix.Client
}

func startReservingStack(t *testing.T) *reservingStack {
	t.Helper()
	st := startStack(t, false)
	counters, err := NewCounters(st.opts.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = counters.Close() })
	client, err := rlsclient.New(rlsclient.Options{Refunder: counters})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	target, err := parseRedisURL(st.opts.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	redis, err := radix.PoolConfig{Size: 1}.New(context.Background(), "tcp", target.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = redis.Close() })
	return &reservingStack{stack: st, counters: counters, client: client, redis: redis}
}

func qwen3Counter(user string, hits uint64) rlsclient.Descriptor {
	return rlsclient.Descriptor{Entries: []rlsclient.Entry{{Key: "route", Value: "qwen3"}, {Key: "user", Value: user}}, Hits: hits}
}

// count reads a user's counter of the current hour straight from Redis, at the key Counters
// computes.
func (s *reservingStack) count(t *testing.T, user string) int64 {
	t.Helper()
	key, err := s.counters.Key(testDomain, qwen3Counter(user, 0).Entries, "HOUR", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var v string
	if err := s.redis.Do(context.Background(), radix.Cmd(&v, "GET", key)); err != nil {
		t.Fatal(err)
	}
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// settled waits for a settle's outcome.
func settled(t *testing.T, settle func(done func(error))) {
	t.Helper()
	errs := make(chan error, 1)
	settle(func(err error) { errs <- err })
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

func (s *reservingStack) admit(t *testing.T, user string, hits uint64) (rlsclient.Status, []rlsclient.Reservation) {
	t.Helper()
	statuses, res, err := s.client.Admit(context.Background(), s.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3Counter(user, hits)}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return statuses[0], res
}

// TestCountersKeyIsTheServicesKey: the counter the service increments for a charge is the key
// Counters computes from the upstream cache-key code, and a refund takes hits back from it:
// never below zero, and never for a counter that does not exist.
func TestCountersKeyIsTheServicesKey(t *testing.T) {
	s := startReservingStack(t)
	if code := charge(t, s.conn, "keyed", 7); code.String() != "OK" {
		t.Fatalf("charge: %s", code)
	}
	if n := s.count(t, "keyed"); n != 7 {
		t.Fatalf("the counter at Counters' key holds %d, want the 7 the service counted", n)
	}
	at := time.Now()
	refund := func(user string, hits uint64) {
		t.Helper()
		if err := s.counters.Refund(context.Background(), []rlsclient.Refund{{Domain: testDomain, Entries: qwen3Counter(user, 0).Entries, Unit: "HOUR", At: at, Hits: hits}}); err != nil {
			t.Fatal(err)
		}
	}
	refund("keyed", 5)
	if n := s.count(t, "keyed"); n != 2 {
		t.Fatalf("after refunding 5 of 7: %d, want 2", n)
	}
	refund("keyed", 5)
	if n := s.count(t, "keyed"); n != 0 {
		t.Fatalf("after refunding more than is left: %d, want 0", n)
	}
	refund("nobody", 5)
	var exists int
	key, _ := s.counters.Key(testDomain, qwen3Counter("nobody", 0).Entries, "HOUR", at)
	if err := s.redis.Do(context.Background(), radix.Cmd(&exists, "EXISTS", key)); err != nil || exists != 0 {
		t.Fatalf("a refund created a counter (EXISTS %d, %v)", exists, err)
	}
}

// TestReservationsSettleToTheRealCost: admission counts the worst case at once; settling
// charges or refunds the difference, so the counter ends at the real cost; a refused or failed
// request gives its reservation back.
func TestReservationsSettleToTheRealCost(t *testing.T) {
	s := startReservingStack(t)
	before, res := s.admit(t, "alice", 30)
	if before.OverLimit || before.Remaining != 50 {
		t.Fatalf("first admission saw %+v, want 50 remaining before it", before)
	}
	if n := s.count(t, "alice"); n != 30 {
		t.Fatalf("after reserving 30: counter %d", n)
	}
	settled(t, func(done func(error)) { s.client.Settle(res, []uint64{12}, done) })
	if n := s.count(t, "alice"); n != 12 {
		t.Fatalf("after settling 30 reserved to 12 spent: counter %d, want 12", n)
	}
	_, res = s.admit(t, "alice", 5)
	settled(t, func(done func(error)) { s.client.Settle(res, []uint64{20}, done) })
	if n := s.count(t, "alice"); n != 32 {
		t.Fatalf("after settling 5 reserved to 20 spent: counter %d, want 32", n)
	}
	_, res = s.admit(t, "alice", 40)
	settled(t, func(done func(error)) { s.client.Release(res, done) })
	if n := s.count(t, "alice"); n != 32 {
		t.Fatalf("after releasing a reservation: counter %d, want 32", n)
	}
	// What a check sees right after a settle includes it, though refunds wait for company.
	_, res = s.admit(t, "alice", 18)
	s.client.Settle(res, []uint64{1}, nil)
	st, err := s.client.Check(context.Background(), s.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3Counter("alice", 0)}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Remaining != 50-33 {
		t.Fatalf("a check right after a settle saw %d remaining, want %d", st[0].Remaining, 50-33)
	}
}

// TestConcurrentAdmissionsSeeEachOthersReservations: fifty requests at once with 1 unit left
// of 50: one is admitted, the others see its reservation and are refused, and once everything
// is settled the counter holds exactly what the admitted one cost.
func TestConcurrentAdmissionsSeeEachOthersReservations(t *testing.T) {
	s := startReservingStack(t)
	if code := charge(t, s.conn, "bob", 49); code.String() != "OK" {
		t.Fatalf("charge: %s", code)
	}
	const requests = 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses, res, err := s.client.Admit(context.Background(), s.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3Counter("bob", 12)}, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			done := make(chan error, 1)
			if statuses[0].OverLimit {
				s.client.Release(res, func(err error) { done <- err })
			} else {
				mu.Lock()
				admitted++
				mu.Unlock()
				s.client.Settle(res, []uint64{12}, func(err error) { done <- err })
			}
			if err := <-done; err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if admitted != 1 {
		t.Errorf("%d of %d requests admitted with 1 of 50 left, want 1", admitted, requests)
	}
	if n := s.count(t, "bob"); n != 49+12 {
		t.Errorf("counter %d after settling, want %d", n, 49+12)
	}
}

// TestCarryCopiesTheCounterIntoTheNextWindowOnce: what a counter held when its window ended is
// added to its counter in the next window, once, however many clients ask; the next window's
// own hits are kept, and a counter with nothing before it is left alone.
func TestCarryCopiesTheCounterIntoTheNextWindowOnce(t *testing.T) {
	s := startReservingStack(t)
	ctx := context.Background()
	entries := qwen3Counter("alice", 0).Entries
	boundary := time.Now().Truncate(time.Hour)
	key := func(at time.Time) string {
		k, err := s.counters.Key(testDomain, entries, "HOUR", at)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	get := func(k string) string {
		var v string
		if err := s.redis.Do(ctx, radix.Cmd(&v, "GET", k)); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before, after := key(boundary.Add(-time.Second)), key(boundary)
	if err := s.redis.Do(ctx, radix.Cmd(nil, "SET", before, "40")); err != nil {
		t.Fatal(err)
	}
	if err := s.redis.Do(ctx, radix.Cmd(nil, "SET", after, "5")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.counters.Carry(ctx, testDomain, entries, "HOUR", boundary); err != nil {
			t.Fatal(err)
		}
	}
	other, err := NewCounters(s.opts.RedisURL) // a second gateway
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close() }()
	if err := other.Carry(ctx, testDomain, entries, "HOUR", boundary); err != nil {
		t.Fatal(err)
	}
	if got := get(after); got != "45" {
		t.Errorf("counter after the boundary %q, want 45 (5 of its own + 40 carried once)", got)
	}
	var ttl int
	if err := s.redis.Do(ctx, radix.Cmd(&ttl, "TTL", after)); err != nil || ttl <= 0 || ttl > 3600 {
		t.Errorf("TTL of the carried counter %d (%v), want within the hour window", ttl, err)
	}
	bob := qwen3Counter("bob", 0).Entries
	if err := s.counters.Carry(ctx, testDomain, bob, "HOUR", boundary); err != nil {
		t.Fatal(err)
	}
	bobKey, err := s.counters.Key(testDomain, bob, "HOUR", boundary)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(bobKey); got != "" {
		t.Errorf("a counter with nothing to carry was created: %q", got)
	}
}

// TestGrantsAreReadBackUntilTheirWindowEnds: grants add up per counter, Grants reads them by
// the counter's key, a set count keeps the counter's expiry, and MarkOnce records once.
func TestGrantsAreReadBackUntilTheirWindowEnds(t *testing.T) {
	s := startReservingStack(t)
	ctx := context.Background()
	now := time.Now()
	alice := qwen3Counter("alice", 0).Entries
	for _, amount := range []uint64{5, 7} {
		if _, err := s.counters.AddGrant(ctx, testDomain, alice, "HOUR", now, amount); err != nil {
			t.Fatal(err)
		}
	}
	key, err := s.counters.Key(testDomain, alice, "HOUR", now)
	if err != nil {
		t.Fatal(err)
	}
	grants, err := s.counters.Grants(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(grants) != 1 || grants[key] != 12 {
		t.Errorf("grants %v, want %s: 12", grants, key)
	}
	// A grant of a window that ended is dropped from the index.
	if _, err := s.counters.AddGrant(ctx, testDomain, qwen3Counter("bob", 0).Entries, "SECOND", now.Add(-10*time.Second), 3); err != nil {
		t.Fatal(err)
	}
	if grants, err = s.counters.Grants(ctx); err != nil || len(grants) != 1 {
		t.Errorf("grants %v (%v), want alice's only", grants, err)
	}
	before, err := s.counters.SetCount(ctx, testDomain, alice, "HOUR", now, 30)
	if err != nil || before != 0 || s.count(t, "alice") != 30 {
		t.Errorf("set: before %d (%v), now %d, want 0 then 30", before, err, s.count(t, "alice"))
	}
	if before, err = s.counters.SetCount(ctx, testDomain, alice, "HOUR", now, 0); err != nil || before != 30 || s.count(t, "alice") != 0 {
		t.Errorf("reset: before %d (%v), now %d, want 30 then 0", before, err, s.count(t, "alice"))
	}
	first, err := s.counters.MarkOnce(ctx, "alert-x", time.Minute)
	again, err2 := s.counters.MarkOnce(ctx, "alert-x", time.Minute)
	if err != nil || err2 != nil || !first || again {
		t.Errorf("MarkOnce: %v %v (%v, %v), want true then false", first, again, err, err2)
	}
}
