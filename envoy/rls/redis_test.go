package rls

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestPingRedis(t *testing.T) {
	ctx := context.Background()

	t.Run("no password", func(t *testing.T) {
		addr := startRedis(t)
		if err := pingRedis(ctx, redisTarget{Addr: addr}, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("password and ACL user", func(t *testing.T) {
		addr := startRedis(t, "--requirepass", "pw:with:colons", "--user", "app", "on", ">app-pw", "~*", "+@all")
		for _, auth := range []string{"default:pw:with:colons", "app:app-pw"} {
			if err := pingRedis(ctx, redisTarget{Addr: addr, Auth: auth}, nil); err != nil {
				t.Errorf("auth as %s: %v", strings.SplitN(auth, ":", 2)[0], err)
			}
		}
		err := pingRedis(ctx, redisTarget{Addr: addr}, nil)
		if !errors.As(err, new(redisRejectedError)) {
			t.Errorf("no password: err = %v, want a rejection", err)
		}
	})

	t.Run("TLS", func(t *testing.T) {
		files := testutil.NewRedisTLS(t)
		target := redisTarget{Addr: testutil.StartRedis(t, testutil.RedisOptions{TLS: &files}), TLS: true}
		if err := pingRedis(ctx, target, files.ClientConfig(t)); err != nil {
			t.Fatal(err)
		}
		if err := pingRedis(ctx, target, &tls.Config{}); err == nil {
			t.Error("ping trusted a certificate from an unknown authority")
		}
	})
}

func TestWaitForRedis(t *testing.T) {
	t.Run("gives up after the wait", func(t *testing.T) {
		dead := testutil.FreeAddr(t)
		start := time.Now()
		err := waitForRedis(context.Background(), redisTarget{Addr: dead}, nil, 400*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "cannot reach Redis at "+dead) {
			t.Fatalf("err = %v, want cannot reach Redis at %s", err, dead)
		}
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("gave up after %s", elapsed)
		}
	})

	t.Run("waits for a Redis that starts late", func(t *testing.T) {
		addr := testutil.FreeAddr(t)
		result := make(chan error, 1)
		go func() { result <- waitForRedis(context.Background(), redisTarget{Addr: addr}, nil, 30*time.Second) }()
		// The first attempts fail; the wait then succeeds once Redis is up on that port.
		startRedisOn(t, addr)
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("waitForRedis did not return")
		}
	})

	t.Run("stops with the context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := waitForRedis(ctx, redisTarget{Addr: testutil.FreeAddr(t)}, nil, time.Hour)
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("err = %v, want context canceled", err)
		}
	})
}
