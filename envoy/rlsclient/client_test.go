package rlsclient_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// senders is the client's number of calls in flight, for checks and charges each.
const senders = 4

func counter(model, quota, user string, hits uint64) rlsclient.Descriptor {
	return rlsclient.Descriptor{
		Entries: []rlsclient.Entry{{Key: "model", Value: model}, {Key: "quota", Value: quota}, {Key: "user", Value: user}},
		Hits:    hits,
	}
}

func newClient(t *testing.T) *rlsclient.Client {
	t.Helper()
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestCheckSendsCheckOnlyDescriptors: a check carries an explicit addend of 0 per descriptor
// (without it the service would count one hit) and gets the service's statuses back in order.
func TestCheckSendsCheckOnlyDescriptors(t *testing.T) {
	fake := rlsclienttest.Start(t)
	fake.Over("bob")
	c := newClient(t)
	got, err := c.Check(context.Background(), fake.Addr, "tollgate",
		[]rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 0), counter("qwen3", "hourly", "bob", 0)}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	calls := fake.CheckCalls()
	if len(calls) != 1 || calls[0].GetDomain() != "tollgate" {
		t.Fatalf("calls = %v", calls)
	}
	for i, d := range calls[0].GetDescriptors() {
		if d.GetHitsAddend() == nil || d.GetHitsAddend().GetValue() != 0 {
			t.Errorf("descriptor %d hits_addend = %v, want an explicit 0", i, d.GetHitsAddend())
		}
	}
	want := []rlsclient.Status{
		{Limit: rlsclient.Limit{Name: "hourly", PerWindow: 50, Unit: "HOUR", Window: time.Hour}, Remaining: 40, ResetIn: 90 * time.Second},
		{OverLimit: true, Limit: rlsclient.Limit{Name: "hourly", PerWindow: 50, Unit: "HOUR", Window: time.Hour}, ResetIn: 90 * time.Second},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses %+v, want %+v", got, want)
	}
}

// TestCheckRejectsAMiscountedAnswer: a service that answers fewer statuses than it was asked
// about is an error, never a status shifted onto the wrong counter.
func TestCheckRejectsAMiscountedAnswer(t *testing.T) {
	addr := startCanned(t, &rlsv3.RateLimitResponse{
		Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK}},
	})
	c := newClient(t)
	_, err := c.Check(context.Background(), addr, "tollgate",
		[]rlsclient.Descriptor{counter("qwen3", "hourly", "a", 0), counter("qwen3", "hourly", "b", 0)}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "answered 1 statuses for 2 descriptors") {
		t.Errorf("err = %v", err)
	}
}

// TestCheckInputErrors: what the service could not count is refused before any call.
func TestCheckInputErrors(t *testing.T) {
	fake := rlsclienttest.Start(t)
	c := newClient(t)
	ctx := context.Background()
	tests := []struct {
		name   string
		domain string
		ds     []rlsclient.Descriptor
		want   string
	}{
		{"no domain", "", []rlsclient.Descriptor{counter("qwen3", "h", "a", 0)}, "domain must not be empty"},
		{"empty descriptor", "d", []rlsclient.Descriptor{{}}, "descriptor 0 (): it has no entries"},
		{"empty value", "d", []rlsclient.Descriptor{counter("qwen3", "h", "a", 0), counter("qwen3", "h", "", 0)},
			"descriptor 1 (model=qwen3,quota=h,user=): entry 2 needs both a key and a value"},
		{"empty key", "d", []rlsclient.Descriptor{{Entries: []rlsclient.Entry{{Value: "x"}}}}, "entry 0 needs both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Check(ctx, fake.Addr, tt.domain, tt.ds, time.Second)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("check: err = %v, want %q", err, tt.want)
			}
			var charged error
			done := make(chan struct{})
			c.Charge(fake.Addr, tt.domain, tt.ds, func(err error) { charged = err; close(done) })
			<-done
			if charged == nil || !strings.Contains(charged.Error(), tt.want) {
				t.Errorf("charge: err = %v, want %q", charged, tt.want)
			}
		})
	}
	got, err := c.Check(ctx, fake.Addr, "d", nil, time.Second)
	if err != nil || got != nil {
		t.Errorf("no descriptors: %v, %v; want nothing asked, nothing returned", got, err)
	}
	if n := len(fake.CheckCalls()) + len(fake.ChargeCalls()); n != 0 {
		t.Errorf("%d invalid or empty calls reached the service", n)
	}
}

// TestChecksQueuedWhileTheServiceIsBusyShareACall: checks that pile up while the senders wait
// on the service go out in a few calls, and every check gets its own descriptors' statuses.
func TestChecksQueuedWhileTheServiceIsBusyShareACall(t *testing.T) {
	fake := rlsclienttest.Start(t)
	fake.Gate = make(chan struct{})
	const checks = 200
	for i := range checks {
		if i%3 == 0 {
			fake.Over(fmt.Sprintf("user%03d", i))
		}
	}
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, checks)
	for i := range checks {
		user := fmt.Sprintf("user%03d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses, err := c.Check(context.Background(), fake.Addr, "tollgate",
				[]rlsclient.Descriptor{counter("qwen3", "hourly", user, 0), counter("qwen3", "weighted", user, 0)}, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			if len(statuses) != 2 {
				errs <- fmt.Errorf("%s: %d statuses, want 2", user, len(statuses))
				return
			}
			for _, s := range statuses {
				if s.OverLimit != fake.IsOver(user) {
					errs <- fmt.Errorf("%s: over limit %v, want %v", user, s.OverLimit, fake.IsOver(user))
				}
			}
		}()
	}
	// Let the checks queue up behind the held calls, then open the gate.
	time.Sleep(100 * time.Millisecond)
	close(fake.Gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls := len(fake.CheckCalls()); calls > 3*senders {
		t.Errorf("%d checks took %d calls, want at most %d", checks, calls, 3*senders)
	}
}

// outcomes counts what charges reported.
type outcomes struct {
	mu          sync.Mutex
	sent, fails int
	errs        []error
}

func (o *outcomes) done(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.fails++
		o.errs = append(o.errs, err)
		return
	}
	o.sent++
}

func (o *outcomes) counts() (sent, failed int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sent, o.fails
}

// TestCloseSendsQueuedCharges: charges queued when the client closes are sent before Close
// returns, and a charge made after Close is sent right away.
func TestCloseSendsQueuedCharges(t *testing.T) {
	fake := rlsclienttest.Start(t)
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var o outcomes
	for i := range 50 {
		c.Charge(fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", fmt.Sprintf("user%02d", i), 1)}, o.done)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(fake.Charges()); got != 50 {
		t.Fatalf("%d charges arrived before close returned, want 50", got)
	}
	c.Charge(fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "late", 1)}, o.done)
	if got := len(fake.Charges()); got != 51 {
		t.Fatalf("a charge after close was not sent right away (%d charges)", got)
	}
	if sent, failed := o.counts(); sent != 51 || failed != 0 {
		t.Errorf("outcomes: %d sent, %d failed; want 51 sent", sent, failed)
	}
}

// TestChargesQueuedWhileTheServiceIsBusyShareACall: charges that pile up while every sender
// waits on the service go out together, many per call, each descriptor with its own addend,
// and a charge for another domain never joins a call of the first.
func TestChargesQueuedWhileTheServiceIsBusyShareACall(t *testing.T) {
	fake := rlsclienttest.Start(t)
	fake.Gate = make(chan struct{})
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const charges = 300
	var want []string
	for i := range charges {
		domain, user := "tollgate", fmt.Sprintf("user%03d", i)
		if i == charges/2 {
			domain = "other"
		}
		c.Charge(fake.Addr, domain, []rlsclient.Descriptor{counter("qwen3", "hourly", user, uint64(i+1))}, nil)
		want = append(want, fmt.Sprintf("model=qwen3,quota=hourly,user=%s +%d", user, i+1))
	}
	close(fake.Gate)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	sort.Strings(want)
	if got := fake.Charges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("charged descriptors differ from those queued:\ngot  %q\nwant %q", got, want)
	}
	calls := fake.ChargeCalls()
	// Each sender's first call may leave with a single charge; everything queued behind them
	// fits in a few calls of up to 256 descriptors, plus the other domain's own.
	if len(calls) > 3*senders {
		t.Errorf("%d charges took %d calls, want at most %d", charges, len(calls), 3*senders)
	}
	for _, r := range calls {
		for _, d := range r.GetDescriptors() {
			isOther := d.GetEntries()[2].GetValue() == fmt.Sprintf("user%03d", charges/2)
			if isOther != (r.GetDomain() == "other") {
				t.Errorf("descriptor %v sent in a call for domain %q", d.GetEntries(), r.GetDomain())
			}
		}
	}
}

// TestChargesMomentsApartShareACall: an idle service still gets charges that come a few
// milliseconds apart in one call, since each waits a moment for company.
func TestChargesMomentsApartShareACall(t *testing.T) {
	fake := rlsclienttest.Start(t)
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const charges = 5
	for i := range charges {
		c.Charge(fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", fmt.Sprintf("user%d", i), 1)}, nil)
		time.Sleep(time.Millisecond)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(fake.Charges()); got != charges {
		t.Fatalf("%d charges arrived, want %d", got, charges)
	}
	if calls := len(fake.ChargeCalls()); calls >= charges {
		t.Errorf("%d charges 1 ms apart took %d calls; they should share", charges, calls)
	}
}

// TestUnreachableServiceChargeIsKept: a charge the service does not take waits in the backlog
// instead of being dropped; a client without a spool reports it lost when it closes.
func TestUnreachableServiceChargeIsKept(t *testing.T) {
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var o outcomes
	c.Charge(rlsclienttest.DeadAddr(t), "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, o.done)
	testutil.Eventually(t, 5*time.Second, "the backlog", func() error {
		if n := c.Backlog(); n != 1 {
			return fmt.Errorf("backlog %d, want 1", n)
		}
		return nil
	})
	if sent, failed := o.counts(); sent != 0 || failed != 0 {
		t.Fatalf("outcomes before close: %d sent, %d failed; want none yet", sent, failed)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sent, failed := o.counts(); sent != 0 || failed != 1 {
		t.Fatalf("outcomes: %d sent, %d failed; want 1 failed", sent, failed)
	}
	if !strings.Contains(o.errs[0].Error(), "stopped before the ratelimit service took") {
		t.Errorf("error %v does not say why the charge was lost", o.errs[0])
	}
}

// TestBacklogDeliversWhenTheServiceComesBack: charges made while the service is away are sent,
// once each, as soon as it answers again.
func TestBacklogDeliversWhenTheServiceComesBack(t *testing.T) {
	addr := rlsclienttest.DeadAddr(t)
	c, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var o outcomes
	for i := range 20 {
		c.Charge(addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", fmt.Sprintf("user%02d", i), uint64(i+1))}, o.done)
	}
	testutil.Eventually(t, 5*time.Second, "the backlog", func() error {
		if n := c.Backlog(); n != 20 {
			return fmt.Errorf("backlog %d, want 20", n)
		}
		return nil
	})
	fake := rlsclienttest.StartOn(t, addr)
	testutil.Eventually(t, 10*time.Second, "the deliveries", func() error {
		if sent, _ := o.counts(); sent != 20 {
			return fmt.Errorf("%d of 20 delivered", sent)
		}
		return nil
	})
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(fake.Charges()); got != 20 {
		t.Errorf("the service got %d charges, want each of the 20 once", got)
	}
}

// TestSpoolKeepsChargesAcrossRestarts: a client stopped while the service is away leaves its
// charges in the spool; the next client with that spool delivers them, once; one after that
// has nothing left to send. An entry whose delivery was under way when the spool was last
// written is not sent again: it may have counted.
func TestSpoolKeepsChargesAcrossRestarts(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "charges.spool")
	addr := rlsclienttest.DeadAddr(t)
	first, err := rlsclient.New(rlsclient.Options{Spool: spool})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		first.Charge(addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", fmt.Sprintf("user%d", i), 5)}, nil)
	}
	testutil.Eventually(t, 5*time.Second, "the backlog", func() error {
		if n := first.Backlog(); n != 3 {
			return fmt.Errorf("backlog %d, want 3", n)
		}
		return nil
	})
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// An attempt under way when the process died: its entry is marked tried, never confirmed.
	f, err := os.OpenFile(spool, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"add":{"id":99,"target":"` + addr + `","domain":"tollgate","charges":[{"Entries":[{"Key":"model","Value":"qwen3"},{"Key":"quota","Value":"hourly"},{"Key":"user","Value":"maybe"}],"Hits":7}]}}` + "\n" +
		`{"tried":[99]}` + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	fake := rlsclienttest.StartOn(t, addr)
	second, err := rlsclient.New(rlsclient.Options{Spool: spool})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the deliveries", func() error {
		if n := len(fake.Charges()); n != 3 {
			return fmt.Errorf("%d of 3 spooled charges delivered", n)
		}
		return nil
	})
	if err := second.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	third, err := rlsclient.New(rlsclient.Options{Spool: spool})
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"model=qwen3,quota=hourly,user=user0 +5", "model=qwen3,quota=hourly,user=user1 +5", "model=qwen3,quota=hourly,user=user2 +5"}
	if got := fake.Charges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("charges %q, want %q (each once, the unconfirmed one never)", got, want)
	}
}

// TestCheckSeesTheChargesBeforeIt: a charge handed over just before a check of the same
// counter reaches the service before the check, though charges wait for company; a check of
// another counter does not wait for it.
func TestCheckSeesTheChargesBeforeIt(t *testing.T) {
	fake := rlsclienttest.Start(t)
	c := newClient(t)
	for i := range 5 {
		c.Charge(fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 12)}, nil)
		if _, err := c.Check(context.Background(), fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "alice", 0)}, time.Second); err != nil {
			t.Fatal(err)
		}
		if n := len(fake.Charges()); n != i+1 {
			t.Fatalf("check %d reached the service after %d charges, want %d", i+1, n, i+1)
		}
	}
	c.Charge(fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "bob", 12)}, nil)
	if _, err := c.Check(context.Background(), fake.Addr, "tollgate", []rlsclient.Descriptor{counter("qwen3", "hourly", "carol", 0)}, time.Second); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Charges()); n != 5 {
		t.Errorf("a check of another counter flushed bob's charge (%d charges)", n)
	}
}

// startCanned runs a ratelimit service that answers every call with resp.
func startCanned(t *testing.T, resp *rlsv3.RateLimitResponse) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, canned{resp: resp})
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

type canned struct {
	rlsv3.UnimplementedRateLimitServiceServer
	resp *rlsv3.RateLimitResponse
}

func (c canned) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return c.resp, nil
}
