package rls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"github.com/envoyproxy/ratelimit/src/settings"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

const testDomain = "tollgate"

// startRedis runs a throwaway redis-server on a free port and returns its address.
func startRedis(tb testing.TB, extraArgs ...string) string {
	tb.Helper()
	return startRedisOn(tb, testutil.FreeAddr(tb), extraArgs...)
}

// startRedisOn runs a throwaway redis-server on addr (127.0.0.1:port) and waits until it
// accepts connections.
func startRedisOn(tb testing.TB, addr string, extraArgs ...string) string {
	tb.Helper()
	bin := testutil.RedisServer(tb)
	_, port, _ := net.SplitHostPort(addr)
	args := append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", tb.TempDir()}, extraArgs...)
	out := &testutil.Buffer{}
	redis, err := launch.StartChild(launch.ChildOptions{Path: bin, Args: args, Stdout: out, Stderr: out})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = redis.Kill() })
	testutil.Eventually(tb, 10*time.Second, "redis-server accepting connections", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("%w\nredis output:\n%s", err, out.String())
		}
		return c.Close()
	})
	return addr
}

// testADS is a minimal go-control-plane ADS server publishing RateLimitConfig resources,
// the way tollgate's xds package serves the ratelimit service's node.
type testADS struct {
	addr    string
	cache   cachev3.SnapshotCache
	nodeID  string
	version int
}

func startADS(tb testing.TB, nodeID string) *testADS {
	tb.Helper()
	return startADSOn(tb, "127.0.0.1:0", nodeID)
}

// startADSOn is startADS on a given address.
func startADSOn(tb testing.TB, addr, nodeID string) *testADS {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	snapshots := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	xds := serverv3.NewServer(ctx, snapshots, nil)
	g := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, xds)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	tb.Cleanup(func() {
		cancel()
		g.Stop()
	})
	return &testADS{addr: l.Addr().String(), cache: snapshots, nodeID: nodeID}
}

// publishQwen3Limit publishes the seed's descriptor tree: route=qwen3 → user (any value) with
// perHour tokens per hour.
func (a *testADS) publishQwen3Limit(tb testing.TB, perHour uint32) {
	tb.Helper()
	cfg := &rlsconfv3.RateLimitConfig{
		Name:   testDomain,
		Domain: testDomain,
		Descriptors: []*rlsconfv3.RateLimitDescriptor{{
			Key:   "route",
			Value: "qwen3",
			Descriptors: []*rlsconfv3.RateLimitDescriptor{{
				Key:       "user",
				RateLimit: &rlsconfv3.RateLimitPolicy{Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: perHour},
			}},
		}},
	}
	a.version++
	snap, err := cachev3.NewSnapshot(strconv.Itoa(a.version), map[resource.Type][]types.Resource{
		resource.RateLimitConfigType: {cfg},
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.cache.SetSnapshot(context.Background(), a.nodeID, snap); err != nil {
		tb.Fatal(err)
	}
}

// stack is a running ratelimit service with its Redis and ADS server.
type stack struct {
	opts Options
	ads  *testADS
	conn *grpc.ClientConn
	logs *testutil.Buffer
	stop func() error
}

// metricsClaimed records that a stack in this test process has enabled metrics. The upstream
// Prometheus sink registers a global HTTP handler, so only the first stack gets metrics
// (go test -count=N runs TestService N times in one process).
var metricsClaimed atomic.Bool

// startStack runs Redis, an ADS server publishing a 50/hour qwen3 limit, and Run, and waits
// until the service reports that limit. With metrics, it enables them if no earlier stack
// in this process has; st.opts.MetricsAddr says whether it did.
func startStack(tb testing.TB, metrics bool) *stack {
	tb.Helper()
	return startStackOn(tb, "redis://"+startRedis(tb), metrics)
}

// startStackOn is startStack with the service's counters in the Redis at redisURL.
func startStackOn(tb testing.TB, redisURL string, metrics bool) *stack {
	tb.Helper()
	ads := startADS(tb, envoy.DefaultRateLimitNode)
	ads.publishQwen3Limit(tb, 50)

	addrs := testutil.FreeAddrs(tb, 4)
	opts := Options{
		GRPCAddr:  addrs[0],
		DebugAddr: addrs[1],
		HTTPAddr:  addrs[2],
		XDSAddr:   ads.addr,
		RedisURL:  redisURL,
		Local:     NewLocal(addrs[0]),
	}
	if metrics && metricsClaimed.CompareAndSwap(false, true) {
		opts.MetricsAddr = addrs[3]
	}
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var runErr error
	go func() {
		defer close(finished)
		runErr = run(ctx, logger, opts, func(s *settings.Settings) {
			// Flush stats often so the metrics test need not wait the default 10s.
			s.StatsFlushInterval = 100 * time.Millisecond
		})
	}()
	stop := func() error {
		cancel()
		select {
		case <-finished:
			return runErr
		case <-time.After(2 * stopTimeout):
			return errors.New("Run did not return after cancel")
		}
	}
	tb.Cleanup(func() { _ = stop() })

	// Fail at once, not after a timeout, if Run gives up while starting.
	testutil.Eventually(tb, 30*time.Second, "the ratelimit service serving its first configuration", func() error {
		select {
		case <-finished:
			tb.Fatalf("Run returned while starting: %v", runErr)
		default:
		}
		c, err := net.Dial("tcp", opts.GRPCAddr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	st := &stack{opts: opts, ads: ads, conn: dialService(tb, opts.GRPCAddr), logs: logs, stop: stop}
	st.waitForLimit(tb, "probe", 50)
	return st
}

// configLoadedLine is what the upstream service logs after it swaps in a new config.
const configLoadedLine = "Successfully loaded new configuration"

// waitForConfigLoadLogged waits for the service's config load line. The service answers with
// a new config a moment before it logs the swap, so a limit already served does not mean the
// line is written yet.
func (st *stack) waitForConfigLoadLogged(tb testing.TB) {
	tb.Helper()
	testutil.Eventually(tb, 10*time.Second, "the config load logged", func() error {
		if !strings.Contains(st.logs.String(), configLoadedLine) {
			return fmt.Errorf("service logs lack %q:\n%s", configLoadedLine, st.logs.String())
		}
		return nil
	})
}

// publishAndWaitLoaded publishes a new qwen3 limit and waits, without calling the service,
// until the service logs that it loaded it.
//
// Not calling it matters under -race: the upstream service reads a settings flag without its
// lock while answering (service.shouldRateLimitWorker reads responseDynamicMetadataEnabled,
// which SetConfig writes), so a request in flight during a config swap is a reported data
// race in code tollgate does not own. Requests that start after the swap are ordered by the
// service's config lock.
func (st *stack) publishAndWaitLoaded(tb testing.TB, perHour uint32) {
	tb.Helper()
	before := strings.Count(st.logs.String(), configLoadedLine)
	st.ads.publishQwen3Limit(tb, perHour)
	testutil.Eventually(tb, 30*time.Second, "the new configuration loaded", func() error {
		if n := strings.Count(st.logs.String(), configLoadedLine); n <= before {
			return fmt.Errorf("service logged %q %d times, want more than %d", configLoadedLine, n, before)
		}
		return nil
	})
}

// dialService waits until the service's gRPC port accepts connections, then returns a
// client for it. Waiting first matters: a gRPC client that finds the port closed backs off
// for a second before it tries again.
func dialService(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	testutil.Eventually(tb, 30*time.Second, "the service accepting connections", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// waitForLimit polls a check until the service reports limit for the user's qwen3 counter.
func (st *stack) waitForLimit(tb testing.TB, user string, limit uint64) {
	tb.Helper()
	testutil.Eventually(tb, 30*time.Second, fmt.Sprintf("limit %d for %s", limit, user), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		got, err := rlsclient.CheckOnce(ctx, st.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3(user)})
		if err != nil {
			return err
		}
		if got[0].Limit.PerWindow != limit {
			return fmt.Errorf("limit is %d, want %d", got[0].Limit.PerWindow, limit)
		}
		return nil
	})
}

func qwen3(user string) rlsclient.Descriptor {
	return rlsclient.Descriptor{Entries: []rlsclient.Entry{{Key: "route", Value: "qwen3"}, {Key: "user", Value: user}}}
}

// charge spends hits on the user's qwen3 counter the way Envoy's stream-done call does, and
// returns the service's code for that call.
func charge(tb testing.TB, conn grpc.ClientConnInterface, user string, hits uint64) rlsv3.RateLimitResponse_Code {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{
		Domain: testDomain,
		Descriptors: []*ratelimitv3.RateLimitDescriptor{{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{
				{Key: "route", Value: "qwen3"},
				{Key: "user", Value: user},
			},
			HitsAddend: wrapperspb.UInt64(hits),
		}},
	})
	if err != nil {
		tb.Fatalf("charging %d to %s: %v", hits, user, err)
	}
	return resp.GetOverallCode()
}

// checkOne checks one descriptor and fails the test on error.
func checkOne(tb testing.TB, st *stack, d rlsclient.Descriptor) rlsclient.Status {
	tb.Helper()
	got, err := rlsclient.CheckOnce(context.Background(), st.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{d})
	if err != nil {
		tb.Fatalf("check %s: %v", d, err)
	}
	return got[0]
}
