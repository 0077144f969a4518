package main

import (
	"context"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"

	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestRedisStatusSaysWhereAndWhetherItAnswers: status names the counters' Redis without its
// password and says whether it answers now.
func TestRedisStatusSaysWhereAndWhetherItAnswers(t *testing.T) {
	if redisStatusOf(context.Background(), nil) != nil {
		t.Error("a status for counters that do not exist")
	}
	live := miniredis.NewMiniRedis()
	live.RequireAuth("s3cret")
	if err := live.StartAddr("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(live.Close)
	for _, tt := range []struct {
		url, want string
	}{
		{"redis://:s3cret@" + live.Addr(), "Redis at " + live.Addr() + ", reachable"},
		{"redis://:wrong@" + live.Addr(), "Redis at " + live.Addr() + ", NOT reachable: "},
		{"redis://:s3cret@" + testutil.FreeAddr(t), "NOT reachable: "},
	} {
		counters, err := rls.NewCounters(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		got := redisStatusOf(context.Background(), counters).String()
		_ = counters.Close()
		if !strings.Contains(got, tt.want) || strings.Contains(got, "s3cret") {
			t.Errorf("status of %s: %q, want it to contain %q and no password", tt.url, got, tt.want)
		}
	}
}
