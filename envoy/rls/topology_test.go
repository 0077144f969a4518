package rls

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/mediocregopher/radix/v4"

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

// TestWaitForRedisExplainsTopologyMistakes: a URL that names the wrong kind of Redis, a primary
// the sentinels do not know, or a wrong password is refused at once with the reply that says
// why, never retried for the whole wait and never with a password in it.
func TestWaitForRedisExplainsTopologyMistakes(t *testing.T) {
	plain := testutil.StartRedis(t, testutil.RedisOptions{})
	sentinel := testutil.StartRedisSentinel(t, testutil.RedisSentinelOptions{Password: "data-pw", SentinelPassword: "hunter2"})
	sentinels := strings.Join(sentinel.SentinelAddrs(), ",")
	for _, tt := range []struct {
		name, url, want string
	}{
		{"a Cluster URL for a plain Redis", "redis+cluster://" + plain, "cluster support disabled"},
		{"a primary the sentinels do not know", "redis+sentinel://:data-pw@" + sentinels + "/nosuch?sentinel_password=hunter2", "No such master"},
		{"a wrong sentinel password", "redis+sentinel://:data-pw@" + sentinels + "/" + sentinel.MasterName() + "?sentinel_password=hunter3", "WRONGPASS"},
		{"a wrong data password", "redis+sentinel://:hunter4@" + sentinels + "/" + sentinel.MasterName() + "?sentinel_password=hunter2", "WRONGPASS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			target, err := parseRedisURL(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = waitForRedis(context.Background(), target, nil, time.Minute)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "rejected tollgate's connection") || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter") {
				t.Errorf("error %q: want a rejection naming %q, and no password", err, tt.want)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("refused after %s: a mistake like this is not worth retrying", took)
			}
		})
	}
}

// TestServiceAndCountersOverTLSWithPasswords: the ratelimit service and tollgate's own counter
// access share one URL and agree on every counter, on a Redis Cluster and on a Sentinel-guarded
// primary, each over TLS with a private CA and passwords (the sentinels' own one too): what the
// service counts, Counters reads and takes back, and the service sees that.
func TestServiceAndCountersOverTLSWithPasswords(t *testing.T) {
	files := testutil.NewRedisTLS(t)
	cluster := testutil.StartRedisCluster(t, testutil.RedisClusterOptions{Primaries: 3, Password: "cluster-pw", TLS: &files})
	sentinel := testutil.StartRedisSentinel(t, testutil.RedisSentinelOptions{Password: "data-pw", SentinelPassword: "sentinel-pw", TLS: &files})
	for name, redisURL := range map[string]string{
		"cluster": "rediss+cluster://:cluster-pw@" + strings.Join(cluster.Seeds(), ",") + "?ca=" + files.CAFile,
		"sentinel": "rediss+sentinel://:data-pw@" + strings.Join(sentinel.SentinelAddrs(), ",") + "/" + sentinel.MasterName() +
			"?sentinel_password=sentinel-pw&ca=" + files.CAFile,
	} {
		t.Run(name, func(t *testing.T) {
			st, counters := startStackAndCounters(t, redisURL)
			ctx := context.Background()
			for i := range 6 {
				user := fmt.Sprintf("user-%d", i)
				charge(t, st.conn, user, 30)
				now := time.Now()
				got, err := counters.Counts(ctx, testDomain, []rlsclient.Counter{{Entries: qwen3(user).Entries, Unit: "HOUR"}}, now)
				if err != nil || got[0] != 30 {
					t.Fatalf("%s: Counters read %v (%v) after the service counted 30", user, got, err)
				}
				if err := counters.Refund(ctx, []rlsclient.Refund{{Domain: testDomain, Entries: qwen3(user).Entries, Unit: "HOUR", At: now, Hits: 10}}); err != nil {
					t.Fatal(err)
				}
				if s := checkOne(t, st, qwen3(user)); s.Remaining != 30 {
					t.Errorf("%s: the service sees %d remaining of 50 after 30 counted and 10 taken back, want 30", user, s.Remaining)
				}
			}
			if err := counters.Ping(ctx); err != nil {
				t.Errorf("ping: %v", err)
			}
			if name == "cluster" {
				// The slot map a failover is followed by is read with the same TLS and password.
				target, err := parseRedisURL(redisURL)
				if err != nil {
					t.Fatal(err)
				}
				tlsConfig, err := target.tlsConfig()
				if err != nil {
					t.Fatal(err)
				}
				reader := newSlotReader(dialer(target.Auth, tlsConfig), target.Addrs)
				defer reader.close()
				owners, err := reader.owners(ctx)
				if err != nil {
					t.Fatalf("slot map over TLS: %v", err)
				}
				for _, primary := range cluster.Seeds() {
					if !strings.Contains(owners, ":"+primary) {
						t.Errorf("slot map over TLS %q: no slots of %s", owners, primary)
					}
				}
			}
		})
	}
}

// TestClientsFollowAClusterFailover: the primary holding a counter is killed and its replica
// promoted. Within seconds of the promotion, without a restart, the ratelimit service counts
// on the promoted replica and Counters reads the same counter there: what was counted before
// the kill and what the service counted after it, and nothing that was sent to the dead node.
// The killed primary is the first seed, the node the Cluster client dialled first: the one its
// periodic re-read of the slot map favours.
func TestClientsFollowAClusterFailover(t *testing.T) {
	cluster := testutil.StartRedisCluster(t, testutil.RedisClusterOptions{Primaries: 3, ReplicasPerPrimary: 1, NodeTimeout: 2500 * time.Millisecond})
	url := "redis+cluster://" + strings.Join(cluster.Seeds(), ",")
	st, counters := startStackAndCounters(t, url)
	ctx := context.Background()

	user := userOnNode(t, counters, cluster.Seeds()[0])
	counter := []rlsclient.Counter{{Entries: qwen3(user).Entries, Unit: "HOUR"}}
	if code := charge(t, st.conn, user, 7); code != rlsv3.RateLimitResponse_OK {
		t.Fatalf("charge before the kill: %v", code)
	}
	if got, err := counters.Counts(ctx, testDomain, counter, time.Now()); err != nil || got[0] != 7 {
		t.Fatalf("counter before the kill: %v %v, want 7", got, err)
	}
	time.Sleep(time.Second) // for the replica to have the counter

	cluster.KillPrimary(t, 0)
	promoted := cluster.AwaitPromotion(t)
	promotedAt := time.Now()
	const within = 6 * time.Second
	testutil.Eventually(t, within, "the service counting on "+promoted, func() error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := rlsclient.CheckOnce(ctx, st.opts.GRPCAddr, testDomain, []rlsclient.Descriptor{qwen3Counter(user, 5)})
		return err
	})
	t.Logf("the service counted again %s after the promotion", time.Since(promotedAt).Round(10*time.Millisecond))
	testutil.Eventually(t, within, "Counters reading the counter on "+promoted, func() error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		got, err := counters.Counts(ctx, testDomain, counter, time.Now())
		if err != nil {
			return err
		}
		if got[0] != 12 {
			return fmt.Errorf("counter %d, want 7 from before the kill and 5 after", got[0])
		}
		return nil
	})
}

// startStackAndCounters runs the service on the Redis at redisURL and opens Counters on it.
func startStackAndCounters(t *testing.T, redisURL string) (*stack, *Counters) {
	t.Helper()
	st := startStackOn(t, redisURL, false)
	counters, err := NewCounters(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = counters.Close() })
	return st, counters
}

// userOnNode returns a user whose hourly qwen3 counter is in a slot the primary at addr serves.
func userOnNode(t *testing.T, counters *Counters, addr string) string {
	t.Helper()
	reader := newSlotReader(radix.Dialer{}, []string{addr})
	defer reader.close()
	topo, err := reader.read(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		user := fmt.Sprintf("user-%d", i)
		key, err := counters.Key(testDomain, qwen3(user).Entries, "HOUR", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		slot := radix.ClusterSlot([]byte(key))
		for _, n := range topo.Primaries() {
			for _, s := range n.Slots {
				if n.Addr == addr && slot >= s[0] && slot < s[1] {
					return user
				}
			}
		}
	}
	t.Fatalf("no user's counter in a slot of %s", addr)
	return ""
}
