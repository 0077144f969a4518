package rls

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeRLS answers ShouldRateLimit with a canned response and records the request. It tests
// Check's side of the protocol; the real service is exercised in service_test.go.
type fakeRLS struct {
	rlsv3.UnimplementedRateLimitServiceServer
	mu   sync.Mutex
	last *rlsv3.RateLimitRequest
	resp *rlsv3.RateLimitResponse
}

func (f *fakeRLS) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = req
	return f.resp, nil
}

func (f *fakeRLS) lastRequest() *rlsv3.RateLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func startFakeRLS(t *testing.T, resp *rlsv3.RateLimitResponse) (*fakeRLS, *grpc.ClientConn) {
	t.Helper()
	fake := &fakeRLS{resp: resp}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, fake)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fake, conn
}

func TestCheckSendsCheckOnlyRequests(t *testing.T) {
	fake, conn := startFakeRLS(t, &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT,
		Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
			{
				Code:               rlsv3.RateLimitResponse_OVER_LIMIT,
				CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: 50, Unit: rlsv3.RateLimitResponse_RateLimit_HOUR},
				DurationUntilReset: durationpb.New(90 * time.Second),
			},
			{Code: rlsv3.RateLimitResponse_OK},
		},
	})
	ds := []Descriptor{qwen3("alice"), qwen3("bob")}
	got, err := Check(context.Background(), conn, "tollgate", ds)
	if err != nil {
		t.Fatal(err)
	}

	req := fake.lastRequest()
	if req.GetDomain() != "tollgate" || len(req.GetDescriptors()) != 2 {
		t.Fatalf("request = %v", req)
	}
	for i, d := range req.GetDescriptors() {
		if d.GetHitsAddend() == nil || d.GetHitsAddend().GetValue() != 0 {
			t.Errorf("descriptor %d hits_addend = %v, want an explicit 0", i, d.GetHitsAddend())
		}
		if e := d.GetEntries(); len(e) != 2 || e[0].GetKey() != "route" || e[1].GetValue() != ds[i].Entries[1].Value {
			t.Errorf("descriptor %d entries = %v", i, e)
		}
	}

	want := []WindowStatus{
		{Descriptor: ds[0], Code: "OVER_LIMIT", Limit: 50, Unit: "HOUR", ResetIn: 90 * time.Second},
		{Descriptor: ds[1], Code: "OK"},
	}
	for i := range want {
		if got[i].Descriptor.String() != want[i].Descriptor.String() || got[i].Code != want[i].Code ||
			got[i].Limit != want[i].Limit || got[i].Unit != want[i].Unit ||
			got[i].Remaining != want[i].Remaining || got[i].ResetIn != want[i].ResetIn {
			t.Errorf("status %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestCheckRejectsAMiscountedAnswer(t *testing.T) {
	_, conn := startFakeRLS(t, &rlsv3.RateLimitResponse{
		Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK}},
	})
	_, err := Check(context.Background(), conn, "tollgate", []Descriptor{qwen3("a"), qwen3("b")})
	if err == nil || !strings.Contains(err.Error(), "asked about 2 descriptors, got 1") {
		t.Errorf("err = %v", err)
	}
}

func TestCheckInputErrors(t *testing.T) {
	fake, conn := startFakeRLS(t, &rlsv3.RateLimitResponse{})
	ctx := context.Background()
	tests := []struct {
		name   string
		domain string
		ds     []Descriptor
		want   string
	}{
		{"no domain", "", []Descriptor{qwen3("a")}, "domain must not be empty"},
		{"empty descriptor", "d", []Descriptor{{}}, "descriptor 0 has no entries"},
		{"empty value", "d", []Descriptor{qwen3("a"), qwen3("")}, "descriptor 1 (route=qwen3,user=): entry 1 needs both a key and a value"},
		{"empty key", "d", []Descriptor{{Entries: []Entry{{Value: "x"}}}}, "entry 0 needs both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Check(ctx, conn, tt.domain, tt.ds)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if fake.lastRequest() != nil {
		t.Error("invalid input reached the service")
	}

	got, err := Check(ctx, conn, "d", nil)
	if err != nil || got != nil {
		t.Errorf("no descriptors: %v, %v; want nothing asked, nothing returned", got, err)
	}
	if fake.lastRequest() != nil {
		t.Error("an empty check reached the service")
	}
}
