package testutil

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// The fixtures below start real Redis topologies (a single node, a cluster, a primary with
// replicas watched by sentinels) so that tests exercise the client code against the failures
// it must survive: a primary killed mid-test, a replica promoted in its place, a password or
// certificate the client gets wrong.

const (
	// redisSettle bounds how long a topology may take to form or to heal. Generous: a busy
	// two-core machine running the race detector starts processes slowly, and a timeout only
	// bounds a hang.
	redisSettle = 60 * time.Second
	// redisCallTimeout bounds one command the fixtures send; a node that does not answer
	// within it counts as not ready, and the probe is tried again.
	redisCallTimeout = 5 * time.Second
	// redisNodeTimeout is the cluster's node timeout and the sentinels' down-after time, in
	// milliseconds: short, so a killed primary is replaced within seconds, yet long enough
	// that a node busy for a moment is not taken for dead.
	redisNodeTimeout = 1000
	// redisFailoverTimeout is the sentinels' failover-timeout in milliseconds: how long one
	// failover attempt may take before another sentinel tries again.
	redisFailoverTimeout = 3000
	// redisLogLines is how much of each node's log a failed test prints.
	redisLogLines = 40
)

// RedisCLI returns the redis-cli binary on the PATH (the cluster fixture creates its cluster
// with it); without one the test is Missing.
func RedisCLI(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		Missing(t, "redis-cli not found (run `task setup`)")
	}
	return bin
}

// RedisTLSFiles are the PEM files a TLS-enabled Redis fixture serves with: a CA, and a
// certificate for 127.0.0.1 and localhost signed by it with its key.
type RedisTLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// NewRedisTLS writes a fresh CA and a server certificate signed by it into a temporary
// directory, so a test can check that a client verifies Redis's certificate against the CA
// it was given rather than trusting whatever answers. The certificate also allows client
// authentication, since replicas and cluster peers present it when they connect to each
// other; Redis itself does not ask clients for one (tls-auth-clients no).
func NewRedisTLS(t testing.TB) RedisTLSFiles {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: "tollgate test Redis CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: "redis"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	files := RedisTLSFiles{
		CAFile:   filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile:  filepath.Join(dir, "key.pem"),
	}
	for path, block := range map[string]*pem.Block{
		files.CAFile:   {Type: "CERTIFICATE", Bytes: caDER},
		files.CertFile: {Type: "CERTIFICATE", Bytes: der},
		files.KeyFile:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// randomSerial is a certificate serial number; random, so no two test certificates share
// one.
func randomSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ClientConfig is a TLS client configuration that trusts the CA file and nothing else, so a
// test's client verifies the server the way a deployment's client would.
func (f RedisTLSFiles) ClientConfig(t testing.TB) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", f.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// RedisOptions shape the node StartRedis starts.
type RedisOptions struct {
	// Password, when set, is required of clients (requirepass).
	Password string
	// TLS, when set, makes the node serve TLS only: no plain port is open.
	TLS *RedisTLSFiles
	// Args are more redis-server arguments, such as ACL users (--user …).
	Args []string
}

// StartRedis starts one redis-server on a free loopback port, without persistence, and
// returns its address once it answers PING (over TLS and with the password when set). It is
// for tests of how a client connects: a password, a certificate, a port that speaks TLS.
func StartRedis(t testing.TB, opts RedisOptions) string {
	t.Helper()
	port := FreePort(t)
	addr := loopback(port)
	client := newRedisClient(t, addr, opts.Password, opts.TLS)
	args := append(redisServerArgs(t.TempDir(), port, opts.Password, opts.TLS), opts.Args...)
	startRedisProc(t, "redis "+addr, client, args)
	return addr
}

// RedisClusterOptions shape the cluster StartRedisCluster starts.
type RedisClusterOptions struct {
	// Primaries is how many primaries share the 16384 slots: 3 (the fewest redis-cli
	// accepts) when zero.
	Primaries int
	// ReplicasPerPrimary is how many replicas follow each primary: with none, a killed
	// primary's slots stay down; with one, its replica takes them over.
	ReplicasPerPrimary int
	// Password, when set, is required of clients and used between primary and replica
	// (requirepass and masterauth).
	Password string
	// TLS, when set, makes every node serve TLS only, and the cluster bus and replication
	// use it too.
	TLS *RedisTLSFiles
	// NodeTimeout is how long a primary may not answer before its replica takes over: 1 s
	// when zero. A test that kills a primary on a busy machine wants more, so that no other
	// primary, merely slow, is failed over too.
	NodeTimeout time.Duration
}

// RedisCluster is a running Redis Cluster. Its methods are for the test's goroutine.
type RedisCluster struct {
	opts    RedisClusterOptions
	cli     string
	nodes   []*clusterNode
	pending *clusterNode // killed by KillPrimary, not yet replaced
}

// clusterNode is one node of a RedisCluster as the fixture last saw it.
type clusterNode struct {
	proc      *redisProc
	port      int
	id        string
	primary   bool
	primaryID string // the primary a replica follows
	firstSlot int    // the first slot a primary serves, -1 for none
	killed    bool
}

// RedisClusterNode describes one node of a RedisCluster.
type RedisClusterNode struct {
	Addr string
	Port int
	// ID is the node's cluster node ID.
	ID string
	// Primary says whether the node serves slots; PrimaryID, for a replica, names the
	// primary it follows.
	Primary   bool
	PrimaryID string
	// Killed says KillPrimary ended the node.
	Killed bool
}

// StartRedisCluster starts a Redis Cluster on loopback: each node a redis-server with its
// own directory and a short node timeout (1 s, so a killed primary's replica takes over in
// seconds), joined with `redis-cli --cluster create`. It returns once every node reports
// cluster_state:ok, every node agrees on who is primary and who follows whom, and every
// replica is connected to its primary. Every process is killed when the test ends, and a
// failed test prints the end of each node's log.
func StartRedisCluster(t testing.TB, opts RedisClusterOptions) *RedisCluster {
	t.Helper()
	if opts.Primaries == 0 {
		opts.Primaries = 3
	}
	if opts.Primaries < 3 || opts.ReplicasPerPrimary < 0 {
		t.Fatalf("a cluster needs at least 3 primaries and no negative replica count, not %d and %d", opts.Primaries, opts.ReplicasPerPrimary)
	}
	nodeTimeout := redisNodeTimeout
	if opts.NodeTimeout > 0 {
		nodeTimeout = int(opts.NodeTimeout.Milliseconds())
	}
	c := &RedisCluster{opts: opts, cli: RedisCLI(t)}
	count := opts.Primaries * (1 + opts.ReplicasPerPrimary)
	addrs := make([]string, count)
	for i := range count {
		// The bus port is chosen, not left at port+10000, which FreePort never checked.
		port, busPort := FreePort(t), FreePort(t)
		addrs[i] = loopback(port)
		args := append(redisServerArgs(t.TempDir(), port, opts.Password, opts.TLS),
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(busPort),
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(nodeTimeout))
		if opts.TLS != nil {
			args = append(args, "--tls-cluster", "yes")
		}
		client := newRedisClient(t, addrs[i], opts.Password, opts.TLS)
		proc := startRedisProc(t, "cluster node "+addrs[i], client, args)
		c.nodes = append(c.nodes, &clusterNode{proc: proc, port: port, firstSlot: -1})
	}

	create := append(redisCLIFlags(opts.Password, opts.TLS), "--cluster", "create")
	create = append(create, addrs...)
	create = append(create, "--cluster-replicas", strconv.Itoa(opts.ReplicasPerPrimary), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), redisSettle)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.cli, create...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("redis-cli --cluster create said:\n%s", lastLines(string(out), redisLogLines))
		}
	})
	Eventually(t, redisSettle, "the cluster settled", c.settled)
	return c
}

// settled checks that every node serves the cluster and sees every node in the role that
// node reports for itself, and records those roles. A replica's failover needs its primary's
// peers to know it as that primary's replica, so all views must agree before a test kills
// anything.
func (c *RedisCluster) settled() error {
	views := make([]clusterView, len(c.nodes))
	for i, n := range c.nodes {
		if err := n.proc.clusterOK(len(c.nodes)); err != nil {
			return err
		}
		view, err := n.proc.clusterNodes()
		if err != nil {
			return err
		}
		self, ok := view.self()
		if !ok {
			return fmt.Errorf("%s: no myself line in CLUSTER NODES", n.proc.name)
		}
		views[i] = view
		n.id, n.primary, n.primaryID, n.firstSlot = self.id, self.primary(), self.primaryID, self.firstSlot()
		if !n.primary {
			if err := n.proc.replicaConnected(); err != nil {
				return err
			}
		}
	}
	primaries := 0
	for _, n := range c.nodes {
		if n.primary {
			primaries++
		}
		for i, peer := range c.nodes {
			e, ok := views[i][n.id]
			switch {
			case !ok:
				return fmt.Errorf("%s does not know %s yet", peer.proc.name, n.proc.name)
			case e.primary() != n.primary || e.primaryID != n.primaryID:
				return fmt.Errorf("%s sees %s as %s, not as what it says it is", peer.proc.name, n.proc.name, e.role())
			case e.failing():
				return fmt.Errorf("%s flags %s %s", peer.proc.name, n.proc.name, strings.Join(e.flags, ","))
			}
		}
	}
	if primaries != c.opts.Primaries {
		return fmt.Errorf("%d primaries, want %d", primaries, c.opts.Primaries)
	}
	return nil
}

// Seeds returns the addresses of the live primaries, in start order: what a cluster client
// is given to discover the rest from.
func (c *RedisCluster) Seeds() []string {
	var seeds []string
	for _, n := range c.primaries() {
		seeds = append(seeds, n.proc.client.addr)
	}
	return seeds
}

// Nodes describes every node the fixture started, in start order, with the roles it last
// saw (AwaitPromotion updates them).
func (c *RedisCluster) Nodes() []RedisClusterNode {
	nodes := make([]RedisClusterNode, len(c.nodes))
	for i, n := range c.nodes {
		nodes[i] = RedisClusterNode{Addr: n.proc.client.addr, Port: n.port, ID: n.id, Primary: n.primary, PrimaryID: n.primaryID, Killed: n.killed}
	}
	return nodes
}

// CLI runs `redis-cli -c` with args against a live primary, with the cluster's password and
// TLS settings, and returns its trimmed output. It fails the test if redis-cli fails or
// prints an error reply, so a test can write and read keys across slots in one line each.
func (c *RedisCluster) CLI(t testing.TB, args ...string) string {
	t.Helper()
	seeds := c.primaries()
	if len(seeds) == 0 {
		t.Fatal("no live primary to run redis-cli against")
	}
	return runRedisCLI(t, c.cli, seeds[0].port, c.opts.Password, c.opts.TLS, append([]string{"-c"}, args...))
}

// KillPrimary ends the i-th primary of Seeds with SIGKILL, as a crash would, and returns its
// address. AwaitPromotion then waits for its replica to take over.
func (c *RedisCluster) KillPrimary(t testing.TB, i int) string {
	t.Helper()
	if c.pending != nil {
		t.Fatalf("%s was killed and not yet replaced; call AwaitPromotion first", c.pending.proc.name)
	}
	primaries := c.primaries()
	if i < 0 || i >= len(primaries) {
		t.Fatalf("primary %d of %d", i, len(primaries))
	}
	n := primaries[i]
	_ = n.proc.child.Kill()
	n.killed = true
	c.pending = n
	return n.proc.client.addr
}

// AwaitPromotion waits until a replica of the primary KillPrimary killed serves that
// primary's slots, every surviving node reports cluster_state:ok, and the replica answers
// ROLE as a master; it returns the new primary's address. Without a live replica to promote
// it fails at once, since the slots would stay down.
func (c *RedisCluster) AwaitPromotion(t testing.TB) string {
	t.Helper()
	dead := c.pending
	if dead == nil {
		t.Fatal("AwaitPromotion without KillPrimary")
	}
	if !slices.ContainsFunc(c.nodes, func(n *clusterNode) bool { return !n.killed && n.primaryID == dead.id }) {
		t.Fatalf("%s had no live replica to promote", dead.proc.name)
	}
	var heir *clusterNode
	Eventually(t, redisSettle, "a replica of "+dead.proc.client.addr+" taking over its slots", func() error {
		heir = nil
		for _, n := range c.nodes {
			if n.killed {
				continue
			}
			if err := n.proc.clusterOK(0); err != nil {
				return err
			}
			view, err := n.proc.clusterNodes()
			if err != nil {
				return err
			}
			owner := view.owner(dead.firstSlot)
			if owner == "" || owner == dead.id {
				return fmt.Errorf("%s: slot %d still with %s", n.proc.name, dead.firstSlot, dead.proc.name)
			}
			i := slices.IndexFunc(c.nodes, func(n *clusterNode) bool { return n.id == owner })
			if i < 0 || (heir != nil && heir != c.nodes[i]) {
				return fmt.Errorf("%s: slot %d with node %s, not the node others name", n.proc.name, dead.firstSlot, owner)
			}
			heir = c.nodes[i]
		}
		return heir.proc.hasRole("master")
	})
	heir.primary, heir.primaryID, heir.firstSlot = true, "", dead.firstSlot
	for _, n := range c.nodes {
		if n.primaryID == dead.id {
			n.primaryID = heir.id
		}
	}
	c.pending = nil
	return heir.proc.client.addr
}

// primaries are the live primaries in start order.
func (c *RedisCluster) primaries() []*clusterNode {
	var out []*clusterNode
	for _, n := range c.nodes {
		if n.primary && !n.killed {
			out = append(out, n)
		}
	}
	return out
}

// RedisSentinelOptions shape the topology StartRedisSentinel starts.
type RedisSentinelOptions struct {
	// MasterName is the name the sentinels monitor the primary under: "mymaster" when empty.
	MasterName string
	// Replicas is how many replicas follow the primary; a failover needs at least one.
	Replicas int
	// Sentinels is how many sentinels watch the primary: 3 when zero. The quorum is a
	// majority of them.
	Sentinels int
	// Password, when set, is required by the primary and replicas (requirepass, masterauth,
	// and the sentinels' auth-pass).
	Password string
	// SentinelPassword, when set, is required by the sentinels (their requirepass, which
	// they also use with each other).
	SentinelPassword string
	// TLS, when set, makes every process, sentinels included, serve TLS only; replication
	// and the sentinels' own connections use it too.
	TLS *RedisTLSFiles
}

// RedisSentinel is a running primary with replicas, watched by sentinels. Its methods are
// for the test's goroutine.
type RedisSentinel struct {
	opts      RedisSentinelOptions
	cli       string
	data      []*redisProc // the primary first, then the replicas
	sentinels []*redisProc
	killed    string // the primary KillPrimary killed, "" before
}

// StartRedisSentinel starts a primary, its replicas (--replicaof) and the sentinels watching
// it, each sentinel from a generated configuration in a directory of its own, with short
// down-after (1 s) and failover (3 s) timeouts so a failover ends within seconds. It returns
// once every replica is connected and every sentinel names the primary, knows all its
// replicas and knows every other sentinel, which a failover needs to reach a majority.
// Every process is killed when the test ends, and a failed test prints the end of each
// process's log.
func StartRedisSentinel(t testing.TB, opts RedisSentinelOptions) *RedisSentinel {
	t.Helper()
	if opts.MasterName == "" {
		opts.MasterName = "mymaster"
	}
	if opts.Sentinels == 0 {
		opts.Sentinels = 3
	}
	if opts.Sentinels < 0 || opts.Replicas < 0 {
		t.Fatalf("negative counts: %d sentinels, %d replicas", opts.Sentinels, opts.Replicas)
	}
	s := &RedisSentinel{opts: opts, cli: RedisCLI(t)}

	primaryPort := FreePort(t)
	for i := range 1 + opts.Replicas {
		port := primaryPort
		if i > 0 {
			port = FreePort(t)
		}
		args := redisServerArgs(t.TempDir(), port, opts.Password, opts.TLS)
		name := "primary " + loopback(port)
		if i > 0 {
			args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(primaryPort))
			name = "replica " + loopback(port)
		}
		s.data = append(s.data, startRedisProc(t, name, newRedisClient(t, loopback(port), opts.Password, opts.TLS), args))
	}
	// Sentinels learn the replicas from the primary's INFO, so they start once the replicas
	// are connected and are found on the sentinels' first look.
	Eventually(t, redisSettle, "the replicas connected", func() error {
		for _, r := range s.data[1:] {
			if err := r.replicaConnected(); err != nil {
				return err
			}
		}
		return nil
	})

	for range opts.Sentinels {
		port := FreePort(t)
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		if err := os.WriteFile(conf, []byte(s.sentinelConfig(dir, port, primaryPort)), 0o600); err != nil {
			t.Fatal(err)
		}
		client := newRedisClient(t, loopback(port), opts.SentinelPassword, opts.TLS)
		s.sentinels = append(s.sentinels, startRedisProc(t, "sentinel "+loopback(port), client, []string{conf, "--sentinel"}))
	}
	primary := loopback(primaryPort)
	Eventually(t, redisSettle, "the sentinels know the primary, its replicas and each other", func() error {
		for _, sen := range s.sentinels {
			if err := s.knows(sen, primary); err != nil {
				return err
			}
		}
		return nil
	})
	return s
}

// sentinelConfig is one sentinel's configuration file. Sentinels rewrite their file (they
// record what they learn), so each has its own, in its own directory.
func (s *RedisSentinel) sentinelConfig(dir string, port, primaryPort int) string {
	name := s.opts.MasterName
	lines := []string{
		"bind 127.0.0.1",
		"dir " + strconv.Quote(dir),
	}
	if f := s.opts.TLS; f != nil {
		lines = append(lines, "port 0", "tls-port "+strconv.Itoa(port),
			"tls-cert-file "+strconv.Quote(f.CertFile),
			"tls-key-file "+strconv.Quote(f.KeyFile),
			"tls-ca-cert-file "+strconv.Quote(f.CAFile),
			"tls-auth-clients no",
			// Sentinels reach the data nodes and each other over TLS with this set.
			"tls-replication yes")
	} else {
		lines = append(lines, "port "+strconv.Itoa(port))
	}
	if s.opts.SentinelPassword != "" {
		lines = append(lines, "requirepass "+strconv.Quote(s.opts.SentinelPassword))
	}
	lines = append(lines,
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d", name, primaryPort, s.opts.Sentinels/2+1),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", name, redisNodeTimeout),
		fmt.Sprintf("sentinel failover-timeout %s %d", name, redisFailoverTimeout),
		fmt.Sprintf("sentinel parallel-syncs %s 1", name))
	if s.opts.Password != "" {
		lines = append(lines, fmt.Sprintf("sentinel auth-pass %s %s", name, strconv.Quote(s.opts.Password)))
	}
	return strings.Join(lines, "\n") + "\n"
}

// knows checks that sen names primary as the primary and knows every replica and every
// other sentinel.
func (s *RedisSentinel) knows(sen *redisProc, primary string) error {
	got, err := sen.primaryAddr(s.opts.MasterName)
	if err != nil {
		return err
	}
	if got != primary {
		return fmt.Errorf("%s names %s as the primary, want %s", sen.name, got, primary)
	}
	replicas, err := sen.sentinelList("SENTINEL", "REPLICAS", s.opts.MasterName)
	if err != nil {
		return err
	}
	known := 0
	for _, r := range replicas {
		if r["master-link-status"] == "ok" && !strings.Contains(r["flags"], "down") && !strings.Contains(r["flags"], "disconnected") {
			known++
		}
	}
	if known != s.opts.Replicas {
		return fmt.Errorf("%s knows %d healthy replicas, want %d", sen.name, known, s.opts.Replicas)
	}
	peers, err := sen.sentinelList("SENTINEL", "SENTINELS", s.opts.MasterName)
	if err != nil {
		return err
	}
	if len(peers) != len(s.sentinels)-1 {
		return fmt.Errorf("%s knows %d other sentinels, want %d", sen.name, len(peers), len(s.sentinels)-1)
	}
	return nil
}

// SentinelAddrs returns the sentinels' addresses: what a sentinel-aware client is given.
func (s *RedisSentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, sen := range s.sentinels {
		addrs[i] = sen.client.addr
	}
	return addrs
}

// MasterName returns the name the sentinels monitor the primary under.
func (s *RedisSentinel) MasterName() string { return s.opts.MasterName }

// Primary returns the primary's address as the first sentinel names it.
func (s *RedisSentinel) Primary(t testing.TB) string {
	t.Helper()
	addr, err := s.sentinels[0].primaryAddr(s.opts.MasterName)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// CLI runs redis-cli with args against the current primary, with the data nodes' password
// and TLS settings, and returns its trimmed output; it fails the test if redis-cli fails or
// prints an error reply.
func (s *RedisSentinel) CLI(t testing.TB, args ...string) string {
	t.Helper()
	return runRedisCLI(t, s.cli, s.dataNode(t, s.Primary(t)).port(), s.opts.Password, s.opts.TLS, args)
}

// KillPrimary ends the current primary with SIGKILL, as a crash would, and returns its
// address; the sentinels notice after the down-after time and fail over.
func (s *RedisSentinel) KillPrimary(t testing.TB) string {
	t.Helper()
	addr := s.Primary(t)
	_ = s.dataNode(t, addr).child.Kill()
	s.killed = addr
	return addr
}

// AwaitFailover waits until every sentinel names a new primary in place of the one
// KillPrimary killed, and that node answers ROLE as a master; it returns its address.
// Without a live replica to promote it fails at once.
func (s *RedisSentinel) AwaitFailover(t testing.TB) string {
	t.Helper()
	if s.killed == "" {
		t.Fatal("AwaitFailover without KillPrimary")
	}
	if !slices.ContainsFunc(s.data, func(p *redisProc) bool { ok, _ := p.child.Exited(); return !ok }) {
		t.Fatal("no live replica for the sentinels to promote")
	}
	var primary string
	Eventually(t, redisSettle, "the sentinels failing over from "+s.killed, func() error {
		primary = ""
		for _, sen := range s.sentinels {
			got, err := sen.primaryAddr(s.opts.MasterName)
			if err != nil {
				return err
			}
			if got == s.killed || (primary != "" && got != primary) {
				return fmt.Errorf("%s names %s as the primary", sen.name, got)
			}
			primary = got
		}
		i := slices.IndexFunc(s.data, func(p *redisProc) bool { return p.client.addr == primary })
		if i < 0 {
			return fmt.Errorf("the sentinels name %s, which this fixture did not start", primary)
		}
		return s.data[i].hasRole("master")
	})
	s.killed = ""
	return primary
}

// dataNode is the primary or replica at addr.
func (s *RedisSentinel) dataNode(t testing.TB, addr string) *redisProc {
	t.Helper()
	i := slices.IndexFunc(s.data, func(p *redisProc) bool { return p.client.addr == addr })
	if i < 0 {
		t.Fatalf("no data node at %s", addr)
	}
	return s.data[i]
}

// redisProc is one redis-server process a fixture started, with its output kept for a
// failed test's report.
type redisProc struct {
	name   string
	client redisClient
	child  *launch.Child
	log    *Buffer
}

// startRedisProc starts redis-server with args and waits until it answers PING through
// client. The process is killed when the test ends; if the test failed, the end of its log
// is printed first, since that is usually where a cluster or a sentinel says what went wrong.
func startRedisProc(t testing.TB, name string, client redisClient, args []string) *redisProc {
	t.Helper()
	log := &Buffer{}
	child, err := launch.StartChild(launch.ChildOptions{
		Path: RedisServer(t), Args: args, Stdout: log, Stderr: log,
		// Should the test binary die without its cleanups, the kernel ends the node.
		DeathSignal: syscall.SIGKILL,
	})
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &redisProc{name: name, client: client, child: child, log: log}
	t.Cleanup(func() {
		_ = child.Kill()
		if t.Failed() {
			t.Logf("%s, the end of its log:\n%s", name, lastLines(log.String(), redisLogLines))
		}
	})
	Eventually(t, redisSettle, name+" answering PING", func() error {
		if exited, err := child.Exited(); exited {
			t.Fatalf("%s exited (%v):\n%s", name, err, lastLines(log.String(), redisLogLines))
		}
		_, err := client.do("PING")
		return err
	})
	return p
}

// port is the port the process serves clients on.
func (p *redisProc) port() int {
	_, port, _ := net.SplitHostPort(p.client.addr)
	n, _ := strconv.Atoi(port)
	return n
}

// hasRole checks that the node's ROLE is role ("master", "slave" or "sentinel").
func (p *redisProc) hasRole(role string) error {
	reply, err := p.client.do("ROLE")
	if err != nil {
		return err
	}
	if fields, _ := reply.([]any); len(fields) == 0 || fields[0] != role {
		return fmt.Errorf("%s: ROLE %v, want %s", p.name, reply, role)
	}
	return nil
}

// replicaConnected checks that the node is a replica whose link to its primary is up.
func (p *redisProc) replicaConnected() error {
	reply, err := p.client.do("ROLE")
	if err != nil {
		return err
	}
	if fields, _ := reply.([]any); len(fields) < 4 || fields[0] != "slave" || fields[3] != "connected" {
		return fmt.Errorf("%s: ROLE %v, want a connected replica", p.name, reply)
	}
	return nil
}

// clusterOK checks that the node reports cluster_state:ok and, when known is not zero, that
// it knows that many nodes.
func (p *redisProc) clusterOK(known int) error {
	info, err := p.client.text("CLUSTER", "INFO")
	if err != nil {
		return err
	}
	fields := map[string]string{}
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	if fields["cluster_state"] != "ok" {
		return fmt.Errorf("%s: cluster_state:%s", p.name, fields["cluster_state"])
	}
	if known != 0 && fields["cluster_known_nodes"] != strconv.Itoa(known) {
		return fmt.Errorf("%s: knows %s nodes, want %d", p.name, fields["cluster_known_nodes"], known)
	}
	return nil
}

// clusterNodes is the node's CLUSTER NODES view.
func (p *redisProc) clusterNodes() (clusterView, error) {
	text, err := p.client.text("CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	return parseClusterNodes(text), nil
}

// primaryAddr is the primary a sentinel names for master.
func (p *redisProc) primaryAddr(master string) (string, error) {
	reply, err := p.client.do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
	if err != nil {
		return "", err
	}
	fields, _ := reply.([]any)
	if len(fields) != 2 {
		return "", fmt.Errorf("%s: GET-MASTER-ADDR-BY-NAME %s: %v", p.name, master, reply)
	}
	host, _ := fields[0].(string)
	port, _ := fields[1].(string)
	return net.JoinHostPort(host, port), nil
}

// sentinelList runs a SENTINEL command that answers a list of field/value lists (REPLICAS,
// SENTINELS) and returns each as a map.
func (p *redisProc) sentinelList(args ...string) ([]map[string]string, error) {
	reply, err := p.client.do(args...)
	if err != nil {
		return nil, err
	}
	items, ok := reply.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: %s: %v", p.name, strings.Join(args, " "), reply)
	}
	var out []map[string]string
	for _, item := range items {
		fields, _ := item.([]any)
		m := map[string]string{}
		for i := 0; i+1 < len(fields); i += 2 {
			k, _ := fields[i].(string)
			v, _ := fields[i+1].(string)
			m[k] = v
		}
		out = append(out, m)
	}
	return out, nil
}

// clusterView is one node's CLUSTER NODES answer, by node ID.
type clusterView map[string]clusterEntry

// clusterEntry is one line of CLUSTER NODES.
type clusterEntry struct {
	id        string
	flags     []string
	primaryID string // "" for a primary
	slots     []string
}

// parseClusterNodes reads CLUSTER NODES: `<id> <ip:port@bus> <flags> <primary> <ping>
// <pong> <epoch> <link> <slot>...`.
func parseClusterNodes(text string) clusterView {
	view := clusterView{}
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		e := clusterEntry{id: f[0], flags: strings.Split(f[2], ","), slots: f[8:]}
		if f[3] != "-" {
			e.primaryID = f[3]
		}
		view[e.id] = e
	}
	return view
}

// self is the node's own line.
func (v clusterView) self() (clusterEntry, bool) {
	for _, e := range v {
		if slices.Contains(e.flags, "myself") {
			return e, true
		}
	}
	return clusterEntry{}, false
}

// owner is the ID of the healthy primary serving slot in this view, "" for none.
func (v clusterView) owner(slot int) string {
	for _, e := range v {
		if e.primary() && !e.failing() && e.serves(slot) {
			return e.id
		}
	}
	return ""
}

func (e clusterEntry) primary() bool { return slices.Contains(e.flags, "master") }

// failing says the view holds the node unreachable or not yet joined.
func (e clusterEntry) failing() bool {
	return slices.ContainsFunc(e.flags, func(f string) bool {
		return f == "fail" || f == "fail?" || f == "handshake" || f == "noaddr"
	})
}

// role describes the entry for a message.
func (e clusterEntry) role() string {
	if e.primary() {
		return "a primary"
	}
	return "a replica of " + e.primaryID
}

// serves says whether the entry's slot ranges hold slot.
func (e clusterEntry) serves(slot int) bool {
	for _, r := range e.slots {
		if lo, hi, ok := slotRange(r); ok && lo <= slot && slot <= hi {
			return true
		}
	}
	return false
}

// firstSlot is the lowest slot the entry serves, -1 for none.
func (e clusterEntry) firstSlot() int {
	first := -1
	for _, r := range e.slots {
		if lo, _, ok := slotRange(r); ok && (first < 0 || lo < first) {
			first = lo
		}
	}
	return first
}

// slotRange reads "lo-hi" or "n"; slots being imported or migrated ("[…]") are not served.
func slotRange(s string) (lo, hi int, ok bool) {
	if strings.HasPrefix(s, "[") {
		return 0, 0, false
	}
	a, b, isRange := strings.Cut(s, "-")
	lo, err := strconv.Atoi(a)
	if err != nil {
		return 0, 0, false
	}
	if !isRange {
		return lo, lo, true
	}
	hi, err = strconv.Atoi(b)
	return lo, hi, err == nil
}

// redisServerArgs are the arguments every data node starts with: loopback only, its own
// directory, no persistence (a test's data need not outlive it), and no delay before a
// replica's full sync, which Redis otherwise holds back 5 s to batch replicas. With TLS the
// plain port is closed and replication runs over TLS.
func redisServerArgs(dir string, port int, password string, tlsFiles *RedisTLSFiles) []string {
	args := []string{"--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no",
		"--repl-diskless-sync-delay", "0"}
	if tlsFiles == nil {
		args = append(args, "--port", strconv.Itoa(port))
	} else {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(port),
			"--tls-cert-file", tlsFiles.CertFile,
			"--tls-key-file", tlsFiles.KeyFile,
			"--tls-ca-cert-file", tlsFiles.CAFile,
			"--tls-auth-clients", "no",
			"--tls-replication", "yes")
	}
	if password != "" {
		args = append(args, "--requirepass", password, "--masterauth", password)
	}
	return args
}

// redisCLIFlags are the redis-cli flags for a password and TLS.
func redisCLIFlags(password string, tlsFiles *RedisTLSFiles) []string {
	var flags []string
	if password != "" {
		flags = append(flags, "-a", password, "--no-auth-warning")
	}
	if tlsFiles != nil {
		flags = append(flags, "--tls", "--cacert", tlsFiles.CAFile)
	}
	return flags
}

// runRedisCLI runs redis-cli with args against the loopback port. -e makes an error reply
// fail the run: redis-cli otherwise prints it and exits 0.
func runRedisCLI(t testing.TB, cli string, port int, password string, tlsFiles *RedisTLSFiles, args []string) string {
	t.Helper()
	full := append(redisCLIFlags(password, tlsFiles), "-e", "-h", "127.0.0.1", "-p", strconv.Itoa(port))
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), redisSettle)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, full...).CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, text)
	}
	return text
}

// redisClient reaches one redis-server: its address, the password AUTH sends (none when
// empty) and, for a TLS port, the TLS configuration. The fixtures need a few commands at a
// time, so each call is one connection: no pool, no state between calls.
type redisClient struct {
	addr     string
	password string
	tls      *tls.Config
}

// newRedisClient is a client for addr with the fixture's password and TLS files.
func newRedisClient(t testing.TB, addr, password string, tlsFiles *RedisTLSFiles) redisClient {
	t.Helper()
	c := redisClient{addr: addr, password: password}
	if tlsFiles != nil {
		c.tls = tlsFiles.ClientConfig(t)
	}
	return c
}

// redisError is an error reply (-ERR …, -WRONGPASS …).
type redisError string

func (e redisError) Error() string { return string(e) }

// do sends one command (after AUTH, with a password) and returns the reply: a string, an
// int64, nil, or a []any of those. An error reply is a redisError.
func (c redisClient) do(args ...string) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), redisCallTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if c.tls != nil {
		conn, err = (&tls.Dialer{Config: c.tls}).DialContext(ctx, "tcp", c.addr)
	} else {
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", c.addr)
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	r := bufio.NewReader(conn)
	if c.password != "" {
		if _, err := roundTrip(conn, r, "AUTH", c.password); err != nil {
			return nil, fmt.Errorf("AUTH at %s: %w", c.addr, err)
		}
	}
	reply, err := roundTrip(conn, r, args...)
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", args[0], c.addr, err)
	}
	return reply, nil
}

// text is do for a command that answers a string.
func (c redisClient) text(args ...string) (string, error) {
	reply, err := c.do(args...)
	if err != nil {
		return "", err
	}
	s, ok := reply.(string)
	if !ok {
		return "", fmt.Errorf("%s at %s: %v, not a string", args[0], c.addr, reply)
	}
	return s, nil
}

// roundTrip writes one command as a RESP array of bulk strings and reads its reply.
func roundTrip(w io.Writer, r *bufio.Reader, args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return nil, err
	}
	return readReply(r)
}

// readReply reads one RESP2 reply.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, redisError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err // $-1 is nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err // *-1 is nil
		}
		items := make([]any, n)
		for i := range items {
			if items[i], err = readReply(r); err != nil {
				return nil, err
			}
		}
		return items, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// loopback is 127.0.0.1:port.
func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// lastLines is the last n non-empty lines of text.
func lastLines(text string, n int) string {
	var lines []string
	for l := range strings.SplitSeq(text, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
