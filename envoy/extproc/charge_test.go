package extproc

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeRateLimit records the charges it receives. It stands in for the ratelimit service in
// this package's tests only; the end-to-end tests charge the real one.
type fakeRateLimit struct {
	rlsv3.UnimplementedRateLimitServiceServer
	addr string

	// gate, when set, holds every call until it is closed: a busy service.
	gate chan struct{}

	// over names users whose checks are answered OVER_LIMIT.
	over map[string]bool

	mu       sync.Mutex
	requests []*rlsv3.RateLimitRequest // charges
	checks   []*rlsv3.RateLimitRequest
}

func startFakeRateLimit(t testing.TB) *fakeRateLimit {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRateLimit{addr: lis.Addr().String()}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, f)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return f
}

func (f *fakeRateLimit) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for _, d := range req.GetDescriptors() {
		status := &rlsv3.RateLimitResponse_DescriptorStatus{
			Code:               rlsv3.RateLimitResponse_OK,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: "hourly", RequestsPerUnit: 50, Unit: rlsv3.RateLimitResponse_RateLimit_HOUR},
			LimitRemaining:     40,
			DurationUntilReset: durationpb.New(90 * time.Second),
		}
		entries := d.GetEntries()
		if f.over[entries[len(entries)-1].GetValue()] {
			status.Code, status.LimitRemaining = rlsv3.RateLimitResponse_OVER_LIMIT, 0
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		resp.Statuses = append(resp.Statuses, status)
	}
	// A call either checks (every addend 0) or charges, never both.
	if d := req.GetDescriptors(); len(d) > 0 && d[0].GetHitsAddend().GetValue() == 0 {
		f.checks = append(f.checks, req)
	} else {
		f.requests = append(f.requests, req)
	}
	return resp, nil
}

// charges renders every received descriptor as "key=value,...: +hits", sorted.
func (f *fakeRateLimit) charges() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.requests {
		out = append(out, describe(r)...)
	}
	sort.Strings(out)
	return out
}

// chargedConfig is testConfig with two quotas on qwen3 charged to fake.
func chargedConfig(t testing.TB, fake *fakeRateLimit) *Config {
	cfg := testConfig(t)
	cfg.RateLimitAddress = fake.addr
	cfg.RateLimitDomain = "tollgate"
	cfg.UserDescriptorKey = "user"
	cfg.Quotas = map[string][]Quota{"qwen3": {
		{Name: "hourly", Cost: "llm_total_token", Entries: []DescriptorEntry{{"model", "qwen3"}, {"quota", "hourly"}}},
		{Name: "weighted", Cost: "custom_cost", Entries: []DescriptorEntry{{"model", "qwen3"}, {"quota", "weighted"}}},
	}}
	return cfg
}

func waitForCharges(t testing.TB, fake *fakeRateLimit, want ...string) {
	t.Helper()
	sort.Strings(want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := fake.charges()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("charges %q, want %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCompletedResponseIsChargedItsUsage: a JSON answer is charged once, per quota, the costs
// of the usage its backend reported, to the counter model → quota → user.
func TestCompletedResponseIsChargedItsUsage(t *testing.T) {
	fake := startFakeRateLimit(t)
	h := newHarness(t, chargedConfig(t, fake))
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3","messages":[{"role":"user","content":"Hello"}]}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	resp := c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if basis := metadataFields(resp)[metadataUsageBasis]; basis != basisUsage {
		t.Errorf("usage_basis %v, want %s", basis, basisUsage)
	}
	// 6 input + 6 output: total 12, custom 6*2+6 = 18.
	waitForCharges(t, fake, "model=qwen3,quota=hourly,user=alice +12", "model=qwen3,quota=weighted,user=alice +18")
	// One call carries both descriptors; it is counted once answered.
	waitFor(t, "the charge counted", func() bool {
		return testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisUsage, chargeSent)) == 1
	})
}

// TestModelWithoutQuotasIsNotCharged: gpt-4 has no quota, so nothing is sent.
func TestModelWithoutQuotasIsNotCharged(t *testing.T) {
	fake := startFakeRateLimit(t)
	h := newHarness(t, chargedConfig(t, fake))
	c := h.open(t)
	sendChat(t, c, `{"model":"gpt-4"}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if err := h.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fake.charges(); len(got) != 0 {
		t.Fatalf("charged %q for a model without quotas", got)
	}
}

// TestBrokenOffStreamIsCharged: a client that leaves mid-stream is charged what it was served:
// the usage when the final usage chunk had passed, otherwise an estimate from the prompt and
// the output events. A failed upstream answer is not charged at all.
func TestBrokenOffStreamIsCharged(t *testing.T) {
	events := bytes.SplitAfter(readTestdata(t, "chat_stream.sse"), []byte("\n\n"))
	// events: 0 role, 1 "Hello", 2 "! How can I help?", 3 finish, 4 usage (10+7), 5 [DONE].
	const prompt = `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Tell me a story about a gateway"}]}`
	cases := []struct {
		name  string
		sent  int // events delivered before the client leaves
		total string
	}{
		// The estimate: one token per 4 bytes of the prompt's strings (the model excluded), and
		// the larger of one per output event and one per 4 bytes of output text.
		{"after the usage chunk", 5, "17"},
		{"before any output", 1, fmt.Sprint(tokensForBytes(int64(len("user") + len("Tell me a story about a gateway"))))},
		{"after two output events", 3, fmt.Sprint(tokensForBytes(int64(len("user")+len("Tell me a story about a gateway"))) +
			max(2, tokensForBytes(int64(len("Hello")+len("! How can I help?")))))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := startFakeRateLimit(t)
			h := newHarness(t, chargedConfig(t, fake))
			c := h.open(t)
			sendChat(t, c, prompt)
			c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
			for _, ev := range events[:tc.sent] {
				c.send(responseBody(ev, false))
			}
			c.cancel()
			waitFor(t, "the charge", func() bool { return len(fake.charges()) == 2 })
			got := fake.charges()
			if !strings.HasPrefix(got[0], "model=qwen3,quota=hourly,user=alice +") || !strings.HasSuffix(got[0], " +"+tc.total) {
				t.Errorf("hourly charge %q, want total %s", got[0], tc.total)
			}
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeCancelled)); n != 1 {
				t.Errorf("cancelled outcomes = %v, want 1", n)
			}
		})
	}

	t.Run("upstream error", func(t *testing.T) {
		fake := startFakeRateLimit(t)
		h := newHarness(t, chargedConfig(t, fake))
		c := h.open(t)
		sendChat(t, c, prompt)
		c.send(responseHeaders(false, ":status", "500", "content-type", "application/json"))
		c.cancel()
		waitFor(t, "the stream to end", func() bool { return testutil.ToFloat64(h.srv.metrics.activeStreams) == 0 })
		if err := h.srv.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := fake.charges(); len(got) != 0 {
			t.Fatalf("a failed answer was charged: %q", got)
		}
	})
}

// TestUnreachableRateLimitChargeIsRetriedThenCounted: a charge the service never answers is
// tried a few times, then logged and counted as failed, and Close still returns.
func TestUnreachableRateLimitChargeIsRetriedThenCounted(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close() // nothing listens there any more
	cfg := chargedConfig(t, &fakeRateLimit{addr: dead})
	cfg.QuotaFailOpen = true // the request is admitted unchecked; its charge fails too
	h := newHarness(t, cfg)
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3"}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if err := h.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisUsage, chargeFailed)); n != 1 {
		t.Errorf("failed charges = %v, want 1", n)
	}
	if !strings.Contains(h.logs.String(), "quota charge not delivered") {
		t.Errorf("the lost charge is not logged:\n%s", h.logs.String())
	}
}

// TestCloseSendsQueuedCharges: charges queued when the server stops are sent before Close
// returns, and a request that ends after Close is charged directly.
func TestCloseSendsQueuedCharges(t *testing.T) {
	fake := startFakeRateLimit(t)
	cfg := withDefaults(chargedConfig(t, fake))
	ch := newCharger(slog.New(slog.DiscardHandler), NewMetrics(nil), &rlsConns{})
	for i := range 50 {
		ch.enqueue(charge{target: cfg.RateLimitAddress, basis: basisUsage, model: "qwen3",
			request: chargeRequest(cfg, "qwen3", fmt.Sprintf("user%02d", i), map[string]int64{"llm_total_token": 1})})
	}
	if err := ch.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(fake.charges()); got != 50 {
		t.Fatalf("%d charges arrived before close returned, want 50", got)
	}
	ch.enqueue(charge{target: cfg.RateLimitAddress, basis: basisUsage, model: "qwen3",
		request: chargeRequest(cfg, "qwen3", "late", map[string]int64{"llm_total_token": 1})})
	if got := len(fake.charges()); got != 51 {
		t.Fatalf("a charge after close was not sent right away (%d charges)", got)
	}
}

// TestChargesQueuedWhileTheServiceIsBusyShareACall: charges that pile up while every worker
// waits on the service go out together, many per call, each descriptor with its own addend, and
// a charge for another domain never joins a call of the first.
func TestChargesQueuedWhileTheServiceIsBusyShareACall(t *testing.T) {
	fake := startFakeRateLimit(t)
	fake.gate = make(chan struct{})
	cfg := withDefaults(chargedConfig(t, fake))
	other := *cfg
	other.RateLimitDomain = "other"
	ch := newCharger(slog.New(slog.DiscardHandler), NewMetrics(nil), &rlsConns{})
	const charges = 300
	var want []string
	for i := range charges {
		c, user := cfg, fmt.Sprintf("user%03d", i)
		if i == charges/2 {
			c = &other
		}
		ch.enqueue(charge{target: cfg.RateLimitAddress, basis: basisUsage, model: "qwen3",
			request: chargeRequest(c, "qwen3", user, map[string]int64{"llm_total_token": int64(i + 1)})})
		want = append(want, fmt.Sprintf("model=qwen3,quota=hourly,user=%s +%d", user, i+1))
	}
	close(fake.gate)
	if err := ch.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	sort.Strings(want)
	if got := fake.charges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("charged descriptors differ from those enqueued:\ngot  %q\nwant %q", got, want)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	// Each worker's first call may leave with a single charge; everything queued behind them
	// fits in a few calls of up to chargeBatchDescriptors, plus the other domain's own.
	if calls := len(fake.requests); calls > 3*chargeWorkers {
		t.Errorf("%d charges took %d calls, want at most %d", charges, calls, 3*chargeWorkers)
	}
	for _, r := range fake.requests {
		for _, d := range r.GetDescriptors() {
			isOther := d.GetEntries()[2].GetValue() == fmt.Sprintf("user%03d", charges/2)
			if isOther != (r.GetDomain() == "other") {
				t.Errorf("descriptor %v sent in a call for domain %q", d.GetEntries(), r.GetDomain())
			}
		}
	}
}

// TestChargesMomentsApartShareACall: an idle service still gets charges that end a few
// milliseconds apart in one call, since each waits chargeLinger for company.
func TestChargesMomentsApartShareACall(t *testing.T) {
	fake := startFakeRateLimit(t)
	cfg := withDefaults(chargedConfig(t, fake))
	ch := newCharger(slog.New(slog.DiscardHandler), NewMetrics(nil), &rlsConns{})
	const charges = 5
	for i := range charges {
		ch.enqueue(charge{target: cfg.RateLimitAddress, basis: basisUsage, model: "qwen3",
			request: chargeRequest(cfg, "qwen3", fmt.Sprintf("user%d", i), map[string]int64{"llm_total_token": 1})})
		time.Sleep(time.Millisecond)
	}
	if err := ch.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(fake.charges()); got != charges {
		t.Fatalf("%d charges arrived, want %d", got, charges)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if calls := len(fake.requests); calls >= charges {
		t.Errorf("%d charges 1 ms apart took %d calls; they should share", charges, calls)
	}
}

// TestBrokenOffBeforeOutputIsChargedThePrompt: a request whose answer had not started (or
// whose JSON body never arrived) when the client left is charged its prompt's estimate: the
// backend had it.
func TestBrokenOffBeforeOutputIsChargedThePrompt(t *testing.T) {
	const prompt = `{"model":"qwen3","messages":[{"role":"user","content":"Summarise this document"}]}`
	want := tokensForBytes(int64(len("user") + len("Summarise this document")))
	for name, answer := range map[string]func(c *call){
		"client gone before any answer": func(c *call) {},
		"JSON answer broken off before its body": func(c *call) {
			c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			fake := startFakeRateLimit(t)
			h := newHarness(t, chargedConfig(t, fake))
			c := h.open(t)
			sendChat(t, c, prompt)
			answer(c)
			c.cancel()
			waitForCharges(t, fake,
				fmt.Sprintf("model=qwen3,quota=hourly,user=alice +%d", want),
				fmt.Sprintf("model=qwen3,quota=weighted,user=alice +%d", 2*want))
			waitFor(t, "the estimated charge counted", func() bool {
				return testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisEstimate, chargeSent)) == 1
			})
			if !strings.Contains(h.logs.String(), "charging what was served") {
				t.Errorf("the estimate is not logged:\n%s", h.logs.String())
			}
		})
	}
}
