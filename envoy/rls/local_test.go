package rls

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// A check made through Local and one made over gRPC reach one service: the same limits and
// the same counters in Redis.
func TestLocalIsTheServiceInThisProcess(t *testing.T) {
	st := startStack(t, false)
	local := st.opts.Local
	ask := func(user string, hits uint64) *rlsv3.RateLimitResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := local.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
			Domain: testDomain,
			Descriptors: []*ratelimitv3.RateLimitDescriptor{{
				Entries:    []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "route", Value: "qwen3"}, {Key: "user", Value: user}},
				HitsAddend: wrapperspb.UInt64(hits),
			}},
		})
		if err != nil {
			t.Fatalf("through Local: %v", err)
		}
		return resp
	}

	// Charged in process, seen over gRPC.
	if got := ask("local-alice", 12).GetStatuses()[0].GetLimitRemaining(); got != 38 {
		t.Errorf("Local answered %d remaining after 12 of 50, want 38", got)
	}
	if got := checkOne(t, st, qwen3("local-alice")).Remaining; got != 38 {
		t.Errorf("gRPC check after a charge through Local: %d remaining, want 38", got)
	}
	// Charged over gRPC, seen in process.
	if code := charge(t, st.conn, "local-bob", 45); code != rlsv3.RateLimitResponse_OK {
		t.Fatalf("gRPC charge answered %v", code)
	}
	if got := ask("local-bob", 0).GetStatuses()[0].GetLimitRemaining(); got != 5 {
		t.Errorf("Local after a gRPC charge of 45: %d remaining, want 5", got)
	}
	if got := ask("local-bob", 10).GetOverallCode(); got != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("Local past the limit answered %v, want OVER_LIMIT", got)
	}

	// Once the service stops, Local answers as an unreachable gRPC service would.
	if err := st.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := local.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: testDomain}); status.Code(err) != codes.Unavailable {
		t.Errorf("Local after the service stopped: %v, want Unavailable", err)
	}
}

func TestLocalServesItsOwnAddress(t *testing.T) {
	for _, tc := range []struct {
		listen, target string
		want           bool
	}{
		{"127.0.0.1:8081", "127.0.0.1:8081", true},
		{"127.0.0.1:8081", "localhost:8081", true},
		{"0.0.0.0:8081", "127.0.0.1:8081", true},
		{"[::]:8081", "[::1]:8081", true},
		{":8081", "localhost:8081", true},
		{"10.0.0.5:8081", "10.0.0.5:8081", true},
		{"127.0.0.1:8081", "127.0.0.1:8082", false},
		{"127.0.0.1:8081", "10.0.0.5:8081", false},
		{"10.0.0.5:8081", "127.0.0.1:8081", false},
		{"0.0.0.0:8081", "ratelimit.internal:8081", false},
		{"127.0.0.1:8081", "not an address", false},
	} {
		if got := NewLocal(tc.listen).Serves(tc.target); got != tc.want {
			t.Errorf("listening on %s, serves %s = %v, want %v", tc.listen, tc.target, got, tc.want)
		}
	}
	if _, err := NewLocal("127.0.0.1:8081").ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("Local before the service runs: %v, want Unavailable", err)
	}
}

// With unix:///path as its Redis URL, the service keeps its counters in a Redis it reaches
// over that socket, and tollgate's own Redis client reads them there.
func TestRedisOverUnixSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "redis.sock")
	startRedis(t, "--unixsocket", socket, "--unixsocketperm", "700")
	ads := startADS(t, envoy.DefaultRateLimitNode)
	ads.publishQwen3Limit(t, 50)
	addrs := testutil.FreeAddrs(t, 3)
	local := NewLocal(addrs[0])
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan error, 1)
	go func() {
		finished <- Run(ctx, slog.New(slog.DiscardHandler), Options{
			GRPCAddr: addrs[0], DebugAddr: addrs[1], HTTPAddr: addrs[2], XDSAddr: ads.addr,
			RedisURL: "unix://" + socket, Local: local,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-finished; err != nil {
			t.Errorf("the service ended with %v", err)
		}
	})

	req := &rlsv3.RateLimitRequest{Domain: testDomain, Descriptors: []*ratelimitv3.RateLimitDescriptor{{
		Entries:    []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "route", Value: "qwen3"}, {Key: "user", Value: "socket-alice"}},
		HitsAddend: wrapperspb.UInt64(12),
	}}}
	testutil.Eventually(t, 30*time.Second, "a charge of 12 against the limit of 50", func() error {
		resp, err := local.ShouldRateLimit(context.Background(), req)
		if err != nil {
			return err
		}
		if s := resp.GetStatuses()[0]; s.GetCurrentLimit().GetRequestsPerUnit() != 50 {
			return fmt.Errorf("status %v: no limit loaded yet", s)
		}
		return nil
	})

	counters, err := NewCounters("unix://" + socket)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = counters.Close() }()
	got, err := counters.Counts(context.Background(), testDomain,
		[]rlsclient.Counter{{Entries: qwen3("socket-alice").Entries, Unit: "HOUR"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != 12 {
		t.Errorf("counter read over the socket: %v, want [12]", got)
	}
}
