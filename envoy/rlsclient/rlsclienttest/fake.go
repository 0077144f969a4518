// Package rlsclienttest is a stand-in for the ratelimit service in unit tests: it records what
// it is asked and answers every descriptor with a fixed limit. End-to-end tests use the real
// service.
package rlsclienttest

import (
	"context"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Every status the fake answers carries this limit: 50 per hour named "hourly", 40 remaining,
// 90 seconds to the reset.
const (
	LimitName = "hourly"
	PerWindow = 50
	Remaining = 40
	ResetIn   = 90 * time.Second
)

// Fake is a ratelimit service on a loopback port.
type Fake struct {
	rlsv3.UnimplementedRateLimitServiceServer
	// Addr is where it listens.
	Addr string

	// Gate, when set before the first call, holds every call until it is closed: a busy
	// service.
	Gate chan struct{}

	mu sync.Mutex
	// over names users (a descriptor's last entry value) whose descriptors are answered
	// OVER_LIMIT.
	over    map[string]bool
	charges []*rlsv3.RateLimitRequest
	checks  []*rlsv3.RateLimitRequest
}

// Start runs a fake on a free loopback port until the test ends.
func Start(t testing.TB) *Fake { return StartOn(t, "127.0.0.1:0") }

// StartOn runs a fake on addr until the test ends.
func StartOn(t testing.TB, addr string) *Fake {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &Fake{Addr: lis.Addr().String(), over: map[string]bool{}}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, f)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return f
}

// Over makes every descriptor whose last entry is user answer OVER_LIMIT.
func (f *Fake) Over(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.over[user] = true
}

// IsOver reports whether Over was called for user.
func (f *Fake) IsOver(user string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.over[user]
}

// ShouldRateLimit answers and records one call. A call either checks (every addend 0) or
// charges; it is recorded as one or the other by its first descriptor.
func (f *Fake) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if f.Gate != nil {
		<-f.Gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for _, d := range req.GetDescriptors() {
		status := &rlsv3.RateLimitResponse_DescriptorStatus{
			Code:               rlsv3.RateLimitResponse_OK,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: LimitName, RequestsPerUnit: PerWindow, Unit: rlsv3.RateLimitResponse_RateLimit_HOUR},
			LimitRemaining:     Remaining,
			DurationUntilReset: durationpb.New(ResetIn),
		}
		entries := d.GetEntries()
		if len(entries) > 0 && f.over[entries[len(entries)-1].GetValue()] {
			status.Code, status.LimitRemaining = rlsv3.RateLimitResponse_OVER_LIMIT, 0
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		resp.Statuses = append(resp.Statuses, status)
	}
	if d := req.GetDescriptors(); len(d) > 0 && d[0].GetHitsAddend().GetValue() == 0 {
		f.checks = append(f.checks, req)
	} else {
		f.charges = append(f.charges, req)
	}
	return resp, nil
}

// Charges renders every charged descriptor as "key=value,... +hits", sorted.
func (f *Fake) Charges() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return describeAll(f.charges)
}

// Checks renders every checked descriptor as "key=value,... +0", in the order they came.
func (f *Fake) Checks() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.checks {
		out = append(out, Describe(r)...)
	}
	return out
}

// ChargeCalls returns the charge calls received, in order.
func (f *Fake) ChargeCalls() []*rlsv3.RateLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*rlsv3.RateLimitRequest(nil), f.charges...)
}

// CheckCalls returns the check calls received, in order.
func (f *Fake) CheckCalls() []*rlsv3.RateLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*rlsv3.RateLimitRequest(nil), f.checks...)
}

func describeAll(reqs []*rlsv3.RateLimitRequest) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, Describe(r)...)
	}
	sort.Strings(out)
	return out
}

// Describe renders a call's descriptors as "key=value,... +hits".
func Describe(req *rlsv3.RateLimitRequest) []string {
	out := make([]string, 0, len(req.GetDescriptors()))
	for _, d := range req.GetDescriptors() {
		parts := make([]string, 0, len(d.GetEntries()))
		for _, e := range d.GetEntries() {
			parts = append(parts, e.GetKey()+"="+e.GetValue())
		}
		out = append(out, strings.Join(parts, ",")+" +"+strconv.FormatUint(d.GetHitsAddend().GetValue(), 10))
	}
	return out
}

// DeadAddr returns a loopback address nothing listens on.
func DeadAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}
