package rls

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestCountersOnRedisCluster: every change tollgate makes to the counters itself — taking hits
// back, setting a count, grants, carrying a window — works on a Redis Cluster, where one
// command may only touch keys of one hash slot, for counters spread over every shard.
func TestCountersOnRedisCluster(t *testing.T) {
	cluster := testutil.StartRedisCluster(t, testutil.RedisClusterOptions{Primaries: 3})
	c, err := NewCounters("redis+cluster://" + strings.Join(cluster.Seeds(), ","))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	now := time.Now()
	var counters []rlsclient.Counter
	var refunds []rlsclient.Refund
	for i := range 20 {
		entries := qwen3Counter(fmt.Sprintf("user-%d", i), 0).Entries
		if _, err := c.SetCount(ctx, testDomain, entries, "HOUR", now, 100); err != nil {
			t.Fatalf("set user-%d: %v", i, err)
		}
		counters = append(counters, rlsclient.Counter{Entries: entries, Unit: "HOUR"})
		refunds = append(refunds, rlsclient.Refund{Domain: testDomain, Entries: entries, Unit: "HOUR", At: now, Hits: uint64(i)})
	}
	if err := c.Refund(ctx, refunds); err != nil {
		t.Fatalf("refund across shards: %v", err)
	}
	got, err := c.Counts(ctx, testDomain, counters, now)
	if err != nil {
		t.Fatalf("counts across shards: %v", err)
	}
	for i, n := range got {
		if n != uint64(100-i) {
			t.Errorf("user-%d: %d after a refund of %d from 100", i, n, i)
		}
	}

	entries := qwen3Counter("granted", 0).Entries
	if _, err := c.AddGrant(ctx, testDomain, entries, "HOUR", now, 30); err != nil {
		t.Fatalf("grant: %v", err)
	}
	grants, err := c.Grants(ctx)
	if err != nil {
		t.Fatalf("grants: %v", err)
	}
	key, _ := c.Key(testDomain, entries, "HOUR", now)
	if grants[key] != 30 {
		t.Errorf("grants %v, want 30 on %s", grants, key)
	}

	// A year's counter carried into the next: once, however many gateways ask.
	boundary := rlsclient.WindowStart("YEAR", now).Add(rlsclient.UnitWindow("YEAR"))
	carried := qwen3Counter("carried", 0).Entries
	if _, err := c.SetCount(ctx, testDomain, carried, "YEAR", boundary.Add(-time.Hour), 70); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.Carry(ctx, testDomain, carried, "YEAR", boundary); err != nil {
			t.Fatalf("carry: %v", err)
		}
	}
	after, err := c.Counts(ctx, testDomain, []rlsclient.Counter{{Entries: carried, Unit: "YEAR"}}, boundary)
	if err != nil {
		t.Fatal(err)
	}
	if after[0] != 70 {
		t.Errorf("carried %d into the next year, want 70 once", after[0])
	}
	if err := c.Ping(ctx); err != nil {
		t.Errorf("ping: %v", err)
	}
}
