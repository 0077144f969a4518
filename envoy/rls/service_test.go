package rls

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestService runs the real upstream service against a real Redis and an in-test ADS server.
// It is the only test that enables metrics: the upstream Prometheus sink can be set up once
// per process.
func TestService(t *testing.T) {
	st := startStack(t, true)

	t.Run("logs the config it loaded", func(t *testing.T) {
		st.waitForConfigLoadLogged(t)
	})

	t.Run("seed scenario: five charges of 12 against 50 per hour", func(t *testing.T) {
		alice := qwen3("alice")
		// A window that ends during the test would reset the counter halfway: start in a
		// fresh one if this one is about to end.
		testutil.Eventually(t, 30*time.Second, "a window with 20 s left", func() error {
			if s := checkOne(t, st, alice); s.ResetIn < 20*time.Second {
				return fmt.Errorf("window ends in %s", s.ResetIn)
			}
			return nil
		})

		first := checkOne(t, st, alice)
		want := rlsclient.Status{Limit: rlsclient.Limit{PerWindow: 50, Unit: "HOUR", Window: time.Hour}, Remaining: 50}
		first.ResetIn = 0
		if fmt.Sprint(first) != fmt.Sprint(want) {
			t.Fatalf("first check = %+v, want %+v", first, want)
		}
		// Checks spend nothing.
		if again := checkOne(t, st, alice); again.Remaining != 50 {
			t.Fatalf("second check reports %d remaining, want 50", again.Remaining)
		}

		for i, wantRemaining := range []uint64{38, 26, 14, 2} {
			if code := charge(t, st.conn, "alice", 12); code != rlsv3.RateLimitResponse_OK {
				t.Fatalf("charge %d answered %s", i+1, code)
			}
			got := checkOne(t, st, alice)
			if got.OverLimit || got.Remaining != wantRemaining {
				t.Fatalf("after charge %d: over limit %v with %d remaining, want OK with %d", i+1, got.OverLimit, got.Remaining, wantRemaining)
			}
		}
		// The fifth charge crosses the limit (60 > 50); Envoy ignores this answer at stream
		// end, but the next request's check is refused.
		if code := charge(t, st.conn, "alice", 12); code != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("fifth charge answered %s, want OVER_LIMIT", code)
		}
		over := checkOne(t, st, alice)
		if !over.OverLimit || over.Remaining != 0 || over.ResetIn <= 0 || over.ResetIn > time.Hour {
			t.Fatalf("check after the fifth charge = %+v, want OVER_LIMIT, 0 remaining, reset within the hour", over)
		}

		if bob := checkOne(t, st, qwen3("bob")); bob.OverLimit || bob.Remaining != 50 {
			t.Errorf("bob = %+v, want OK with 50 remaining: alice's usage leaked into his counter", bob)
		}
	})

	t.Run("one call answers several descriptors in order", func(t *testing.T) {
		charge(t, st.conn, "dora", 7)
		ds := []rlsclient.Descriptor{
			qwen3("erin"),
			{Entries: []rlsclient.Entry{{Key: "route", Value: "gpt-4"}, {Key: "user", Value: "dora"}}},
			qwen3("dora"),
		}
		got, err := rlsclient.CheckOnce(context.Background(), st.opts.GRPCAddr, testDomain, ds)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 {
			t.Fatalf("got %d statuses, want 3", len(got))
		}
		if got[0].Remaining != 50 || got[2].Remaining != 43 {
			t.Errorf("remaining = %d, %d; want 50 for erin, 43 for dora", got[0].Remaining, got[2].Remaining)
		}
		if got[1].Limit.Matched() || got[1].OverLimit {
			t.Errorf("a model without a limit = %+v, want OK with no limit", got[1])
		}
	})

	t.Run("health endpoint answers", func(t *testing.T) {
		resp, err := http.Get("http://" + st.opts.HTTPAddr + "/healthcheck")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "OK" {
			t.Errorf("healthcheck = %d %q, want 200 OK", resp.StatusCode, body)
		}
	})

	t.Run("metrics endpoint serves the service's stats", func(t *testing.T) {
		if st.opts.MetricsAddr == "" {
			t.Skip("metrics were enabled by an earlier run in this process (go test -count)")
		}
		testutil.Eventually(t, 10*time.Second, "the metrics endpoint", func() error {
			resp, err := http.Get("http://" + st.opts.MetricsAddr + "/metrics")
			if err != nil {
				return err
			}
			defer func() { _ = resp.Body.Close() }()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if !strings.Contains(string(body), "ratelimit_service_config_load_success") {
				return fmt.Errorf("metrics lack ratelimit_service_config_load_success")
			}
			return nil
		})
	})

	t.Run("a new snapshot applies without a restart", func(t *testing.T) {
		st.publishAndWaitLoaded(t, 100)
		if got := checkOne(t, st, qwen3("carol")); got.Limit.PerWindow != 100 || got.Remaining != 100 {
			t.Fatalf("carol after the raise = %+v, want limit 100 with 100 remaining", got)
		}
		// The counters survive a limit change: alice spent 60 this window.
		got := checkOne(t, st, qwen3("alice"))
		if got.OverLimit || got.Remaining != 40 {
			t.Errorf("alice after the raise = over limit %v with %d remaining, want OK with 40", got.OverLimit, got.Remaining)
		}
	})

	t.Run("stops when the context ends and frees its ports", func(t *testing.T) {
		if err := st.stop(); err != nil {
			t.Fatalf("Run returned %v after cancel, want nil", err)
		}
		for _, addr := range []string{st.opts.GRPCAddr, st.opts.HTTPAddr, st.opts.DebugAddr} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("%s still taken after stop: %v", addr, err)
				continue
			}
			_ = l.Close()
		}
	})
}

// TestRunAgainInOneProcess shows the service can run more than once in a process (without
// metrics), which the tests and benchmarks rely on.
func TestRunAgainInOneProcess(t *testing.T) {
	st := startStack(t, false)
	if code := charge(t, st.conn, "frank", 20); code != rlsv3.RateLimitResponse_OK {
		t.Fatalf("charge answered %s", code)
	}
	if got := checkOne(t, st, qwen3("frank")); got.Remaining != 30 {
		t.Errorf("frank has %d remaining, want 30", got.Remaining)
	}
}

func TestRunErrors(t *testing.T) {
	ctx := context.Background()
	discard := slog.New(slog.DiscardHandler)

	t.Run("invalid options, all reported", func(t *testing.T) {
		err := Run(ctx, discard, Options{GRPCAddr: "nope", LogLevel: "loud", RedisURL: "http://x"})
		if err == nil {
			t.Fatal("Run accepted invalid options")
		}
		for _, want := range []string{"GRPCAddr", "LogLevel", "RedisURL"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
	})

	t.Run("Redis unreachable", func(t *testing.T) {
		dead := testutil.FreeAddr(t)
		start := time.Now()
		err := Run(ctx, discard, Options{RedisURL: dead, RedisWait: 300 * time.Millisecond})
		if err == nil {
			t.Fatal("Run started without Redis")
		}
		if want := "cannot reach Redis at " + dead; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("gave up after %s, want about RedisWait", time.Since(start))
		}
	})

	t.Run("Redis rejects the password, without retrying and without echoing it", func(t *testing.T) {
		addr := startRedis(t, "--requirepass", "right-secret")
		err := Run(ctx, discard, Options{RedisURL: "redis://:wrong-secret@" + addr, RedisWait: time.Minute})
		if err == nil {
			t.Fatal("Run started with a wrong Redis password")
		}
		if !strings.Contains(err.Error(), "rejected") || strings.Contains(err.Error(), "wrong-secret") {
			t.Errorf("error = %q, want a rejection that does not show the password", err)
		}
	})

	t.Run("listen address in use", func(t *testing.T) {
		redisAddr := startRedis(t)
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = busy.Close() }()
		addrs := testutil.FreeAddrs(t, 2)
		err = Run(ctx, discard, Options{
			GRPCAddr: busy.Addr().String(), HTTPAddr: addrs[0], DebugAddr: addrs[1], RedisURL: redisAddr,
		})
		if err == nil || !strings.Contains(err.Error(), "GRPCAddr "+busy.Addr().String()) {
			t.Errorf("error = %v, want one naming GRPCAddr %s", err, busy.Addr())
		}
	})

	t.Run("unparsable environment", func(t *testing.T) {
		t.Setenv("REDIS_POOL_SIZE", "many")
		err := Run(ctx, discard, Options{})
		if err == nil || !strings.Contains(err.Error(), "environment") {
			t.Errorf("error = %v, want one about the environment", err)
		}
	})
}

// TestRunBeforeControlPlane starts the service while tollgate's ADS server is not up yet: it
// serves (with errors) at once and loads its limits once the server appears.
func TestRunBeforeControlPlane(t *testing.T) {
	redisAddr := startRedis(t)
	addrs := testutil.FreeAddrs(t, 4)
	xdsAddr := addrs[3]
	opts := Options{GRPCAddr: addrs[0], HTTPAddr: addrs[1], DebugAddr: addrs[2], XDSAddr: xdsAddr, RedisURL: redisAddr}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, slog.New(slog.DiscardHandler), opts) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
	}()

	conn := dialService(t, opts.GRPCAddr)
	st := &stack{opts: opts, conn: conn}
	_, err := rlsclient.CheckOnce(context.Background(), opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3("gina")})
	if err == nil || !strings.Contains(err.Error(), "no rate limit configuration loaded") {
		t.Fatalf("check before any config: err = %v, want no rate limit configuration loaded", err)
	}

	ads := startADSOn(t, xdsAddr, envoy.DefaultRateLimitNode)
	ads.publishQwen3Limit(t, 50)
	st.waitForLimit(t, "gina", 50)
}
