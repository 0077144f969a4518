package testutil

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wantRefused checks that a command through c fails with a reply starting with prefix
// (WRONGPASS, NOAUTH): the server answered and said no.
func wantRefused(t *testing.T, c redisClient, prefix string) {
	t.Helper()
	_, err := c.do("PING")
	var re redisError
	if !errors.As(err, &re) || !strings.HasPrefix(string(re), prefix) {
		t.Errorf("PING at %s with password %q: err = %v, want a %s reply", c.addr, c.password, err, prefix)
	}
}

func TestStartRedisPassword(t *testing.T) {
	t.Parallel()
	addr := StartRedis(t, RedisOptions{Password: "s3cret"})
	if got, err := (redisClient{addr: addr, password: "s3cret"}).do("SET", "k", "v"); err != nil || got != "OK" {
		t.Fatalf("SET with the password: %v, %v", got, err)
	}
	wantRefused(t, redisClient{addr: addr, password: "wrong"}, "WRONGPASS")
	wantRefused(t, redisClient{addr: addr}, "NOAUTH")
}

func TestStartRedisTLS(t *testing.T) {
	t.Parallel()
	files := NewRedisTLS(t)
	addr := StartRedis(t, RedisOptions{Password: "s3cret", TLS: &files})
	verified := redisClient{addr: addr, password: "s3cret", tls: files.ClientConfig(t)}
	if got, err := verified.do("PING"); err != nil || got != "PONG" {
		t.Fatalf("PING over verified TLS: %v, %v", got, err)
	}
	// The same through crypto/tls by hand: the CA's pool verifies the certificate for
	// 127.0.0.1, and one connection carries AUTH and PING.
	conn, err := tls.Dial("tcp", addr, files.ClientConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(redisCallTimeout))
	r := bufio.NewReader(conn)
	for _, cmd := range [][]string{{"AUTH", "s3cret"}, {"PING"}} {
		if got, err := roundTrip(conn, r, cmd...); err != nil || (got != "OK" && got != "PONG") {
			t.Fatalf("%s over a hand-dialled TLS connection: %v, %v", cmd[0], got, err)
		}
	}

	if _, err := (redisClient{addr: addr, password: "s3cret"}).do("PING"); err == nil {
		t.Error("a plain connection to the TLS port was answered")
	}
	if _, err := (redisClient{addr: addr, password: "s3cret", tls: &tls.Config{}}).do("PING"); !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("TLS without the CA: err = %v, want an unknown authority", err)
	}
	wantRefused(t, redisClient{addr: addr, password: "wrong", tls: files.ClientConfig(t)}, "WRONGPASS")
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	if got := runRedisCLI(t, RedisCLI(t), p, "s3cret", &files, []string{"SET", "k", "v"}); got != "OK" {
		t.Errorf("redis-cli --tls SET answered %q", got)
	}
}

// writeKeys writes n keys through redis-cli -c, so they land on every primary, and reads
// them back.
func writeKeys(t *testing.T, c *RedisCluster, prefix string, n int) {
	t.Helper()
	for i := range n {
		key := fmt.Sprintf("%s%d", prefix, i)
		if got := c.CLI(t, "SET", key, "v"+key); got != "OK" {
			t.Fatalf("SET %s: %q", key, got)
		}
		if got := c.CLI(t, "GET", key); got != "v"+key {
			t.Fatalf("GET %s: %q", key, got)
		}
	}
}

func TestRedisClusterFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := StartRedisCluster(t, RedisClusterOptions{ReplicasPerPrimary: 1})
	t.Logf("cluster of %d nodes up in %s", len(c.Nodes()), time.Since(start).Round(time.Millisecond))
	if got := len(c.Seeds()); got != 3 {
		t.Fatalf("%d seeds, want 3", got)
	}
	writeKeys(t, c, "before", 10)

	start = time.Now()
	killed := c.KillPrimary(t, 0)
	heir := c.AwaitPromotion(t)
	t.Logf("%s replaced by %s in %s", killed, heir, time.Since(start).Round(time.Millisecond))
	if slices.Contains(c.Seeds(), killed) || !slices.Contains(c.Seeds(), heir) {
		t.Errorf("seeds %v after %s replaced %s", c.Seeds(), heir, killed)
	}
	writeKeys(t, c, "after", 10)
	// The new primary serves some of the keys itself: the slots came back with it.
	served := 0
	for i := range 10 {
		if v, err := (redisClient{addr: heir}).do("GET", fmt.Sprintf("after%d", i)); err == nil && v != nil {
			served++
		}
	}
	if served == 0 {
		t.Errorf("%s serves none of the keys written after the failover", heir)
	}
}

func TestRedisClusterPasswordAndTLS(t *testing.T) {
	t.Parallel()
	files := NewRedisTLS(t)
	start := time.Now()
	c := StartRedisCluster(t, RedisClusterOptions{ReplicasPerPrimary: 1, Password: "s3cret", TLS: &files})
	t.Logf("TLS cluster up in %s", time.Since(start).Round(time.Millisecond))
	writeKeys(t, c, "k", 6)
	seed := c.Seeds()[0]
	wantRefused(t, redisClient{addr: seed, password: "wrong", tls: files.ClientConfig(t)}, "WRONGPASS")
	if _, err := (redisClient{addr: seed, password: "s3cret"}).do("PING"); err == nil {
		t.Error("a plain connection to a TLS node was answered")
	}
	for _, n := range c.Nodes() {
		if n.Primary == (n.PrimaryID != "") {
			t.Errorf("node %+v", n)
		}
	}
}

func TestRedisSentinelFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := StartRedisSentinel(t, RedisSentinelOptions{Replicas: 1})
	t.Logf("sentinel topology up in %s", time.Since(start).Round(time.Millisecond))
	if s.MasterName() != "mymaster" || len(s.SentinelAddrs()) != 3 {
		t.Fatalf("master %q, sentinels %v", s.MasterName(), s.SentinelAddrs())
	}
	if got := s.CLI(t, "SET", "k", "before"); got != "OK" {
		t.Fatalf("SET: %q", got)
	}
	// Once the replica has the key, the failover cannot lose it: the new primary must have it.
	replica := s.data[1].client
	Eventually(t, 10*time.Second, "the replica having k", func() bool {
		v, err := replica.do("GET", "k")
		return err == nil && v == "before"
	})
	start = time.Now()
	killed := s.KillPrimary(t)
	primary := s.AwaitFailover(t)
	t.Logf("%s replaced by %s in %s", killed, primary, time.Since(start).Round(time.Millisecond))
	if primary == killed || s.Primary(t) != primary {
		t.Fatalf("primary %s after killing %s; sentinels name %s", primary, killed, s.Primary(t))
	}
	if got := s.CLI(t, "GET", "k"); got != "before" {
		t.Errorf("GET k on the new primary: %q, want the value written before the failover", got)
	}
	if got := s.CLI(t, "SET", "k", "after"); got != "OK" {
		t.Fatalf("SET on the new primary: %q", got)
	}
}

func TestRedisSentinelPasswordAndTLS(t *testing.T) {
	t.Parallel()
	files := NewRedisTLS(t)
	start := time.Now()
	s := StartRedisSentinel(t, RedisSentinelOptions{MasterName: "quota", Replicas: 1, Password: "data-pw", SentinelPassword: "sentinel-pw", TLS: &files})
	t.Logf("TLS sentinel topology up in %s", time.Since(start).Round(time.Millisecond))
	sentinel := s.SentinelAddrs()[0]
	wantRefused(t, redisClient{addr: sentinel, password: "wrong", tls: files.ClientConfig(t)}, "WRONGPASS")
	wantRefused(t, redisClient{addr: s.Primary(t), password: "sentinel-pw", tls: files.ClientConfig(t)}, "WRONGPASS")
	if _, err := (redisClient{addr: sentinel, password: "sentinel-pw"}).do("PING"); err == nil {
		t.Error("a plain connection to a TLS sentinel was answered")
	}
	start = time.Now()
	killed := s.KillPrimary(t)
	primary := s.AwaitFailover(t)
	t.Logf("%s replaced by %s in %s", killed, primary, time.Since(start).Round(time.Millisecond))
	if got := s.CLI(t, "SET", "k", "after"); got != "OK" {
		t.Fatalf("SET on the new primary: %q", got)
	}
}
