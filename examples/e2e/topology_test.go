//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// topologyPolicy gives every user 100 tokens of qwen3 an hour: a burst of 20 requests of 12
// tokens each by one user goes over it. (The burst's requests allow 8 output tokens, so each
// reserves little and many are admitted at once.)
var topologyPolicy = headerPolicy(`models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 100, per: hour}
`)

// shortChat and shortStream are chat requests of 6 tokens in and at most 8 out; the stream
// asks for the usage chunk at its end.
const (
	shortChat   = `{"model":"qwen3","max_tokens":8,"messages":[{"role":"user","content":"Hello from Alice!"}]}`
	shortStream = `{"model":"qwen3","max_tokens":8,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello from Alice!"}]}`
)

var totalTokens = regexp.MustCompile(`"total_tokens":\s*(\d+)`)

// mixedBurst sends n requests at once: request i is user users[i mod len(users)]'s, a JSON
// request or a stream in turn, to gateways[(i / len(users)) mod len(gateways)], so each user's
// requests go to every gateway. It returns the tokens each user was served, from the answers'
// usage, and how many answers had each status.
func mixedBurst(t *testing.T, users []string, n int, gateways ...*stack) (served map[string]int, statuses map[int]int) {
	t.Helper()
	served, statuses = map[string]int{}, map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := users[i%len(users)]
			s := gateways[(i/len(users))%len(gateways)]
			body := shortChat
			if i%2 == 1 {
				body = shortStream
			}
			r, err := do("POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": user}, body)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			tokens := 0
			switch r.status {
			case 200:
				// A JSON answer has one usage; a stream's last chunk carries it.
				m := totalTokens.FindAllSubmatch(r.body, -1)
				if len(m) == 0 {
					t.Errorf("request %d: a 200 without usage: %s", i, r.body)
					return
				}
				tokens, _ = strconv.Atoi(string(m[len(m)-1][1]))
			case 429:
			default:
				t.Errorf("request %d: status %d: %s", i, r.status, r.body)
			}
			mu.Lock()
			defer mu.Unlock()
			served[user] += tokens
			statuses[r.status]++
		}()
	}
	wg.Wait()
	return served, statuses
}

// clusterCounter is a user's qwen3 counter in a Redis Cluster: the one key, on whichever primary
// holds its slot. It also returns that primary.
func clusterCounter(cluster *testutil.RedisCluster, user string) (int, string, error) {
	found, value, on := 0, 0, ""
	for _, node := range cluster.Seeds() {
		counters, err := redisCounters(node, "*_user_"+user+"_*")
		if err != nil {
			return 0, "", err
		}
		for _, v := range counters {
			found++
			value, on = v, node
		}
	}
	if found != 1 {
		return 0, "", fmt.Errorf("%d counters of %s in the cluster", found, user)
	}
	return value, on, nil
}

// awaitClusterCounter waits until a user's counter in the cluster holds want, and returns the
// primary it is on.
func awaitClusterCounter(t *testing.T, cluster *testutil.RedisCluster, user string, want int) (on string) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, user+"'s counter at the tokens served", func() error {
		n, node, err := clusterCounter(cluster, user)
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("counter %d, served %d", n, want)
		}
		on = node
		return nil
	})
	return on
}

// redisStatusOf reads what `tollgate serve` says of its Redis in /status.
func redisStatusOf(t testing.TB, s *stack) (where string, reachable bool) {
	t.Helper()
	var st struct {
		Redis struct {
			Where     string `json:"where"`
			Reachable bool   `json:"reachable"`
		} `json:"redis"`
	}
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	return st.Redis.Where, st.Redis.Reachable
}

// TestRedisClusterTwoGatewaysOneQuota: two gateways (each an Envoy with its own tollgate) share
// one ratelimit service on a Redis Cluster of 3 primaries. 200 requests at once, JSON and
// streams, by 10 users spread over both gateways: each user's counter — one key, on the shard
// its slot is on — holds exactly the tokens the user was served, whichever gateway charged them,
// and a user over the quota is refused on either gateway.
func TestRedisClusterTwoGatewaysOneQuota(t *testing.T) {
	testutil.Envoy(t)
	cluster := testutil.StartRedisCluster(t, testutil.RedisClusterOptions{Primaries: 3})
	redisURL := "redis+cluster://" + strings.Join(cluster.Seeds(), ",")
	sim := startSim(t, "sim")
	a := newStack(t, map[string]int{"sim": sim})
	b := newStack(t, map[string]int{"sim": sim})
	b.rateLimit = a.rateLimit
	for _, s := range []*stack{a, b} {
		s.writePolicy(t, topologyPolicy)
		s.startTollgateWith(t, "--redis", redisURL)
	}
	a.startRateLimit(t, redisURL)
	b.charges = true
	a.startEnvoy(t)
	b.startEnvoy(t)

	users := make([]string, 10)
	for i := range users {
		users[i] = fmt.Sprintf("shard-user-%d", i)
	}
	served, statuses := mixedBurst(t, users, 200, a, b)
	t.Logf("200 requests at once: %v; tokens served by user: %v", statuses, served)
	if statuses[200] == 0 || statuses[429] == 0 {
		t.Fatalf("statuses %v: want both answers and refusals", statuses)
	}

	shards := map[string]bool{}
	for _, u := range users {
		shards[awaitClusterCounter(t, cluster, u, served[u])] = true
	}
	if len(shards) < 2 {
		t.Errorf("the 10 users' counters are all on %v: the cluster's shards are not shared out", shards)
	}

	// Each user goes on, one request at a time, on the first gateway until refused: the other
	// refuses too, and the counter still holds exactly what was served.
	for _, u := range users {
		for range 10 {
			r := mustDo(t, "POST", a.url("/v1/chat/completions"), map[string]string{"x-user-id": u}, shortChat)
			if r.status == 429 {
				break
			}
			m := totalTokens.FindSubmatch(r.body)
			if r.status != 200 || m == nil {
				t.Fatalf("%s: %d %s", u, r.status, r.body)
			}
			n, _ := strconv.Atoi(string(m[1]))
			served[u] += n
		}
		if served[u] <= 100 {
			t.Errorf("%s refused at %d tokens served, within the quota of 100", u, served[u])
		}
		if got := sendN(t, b, u, "qwen3", 1, false)[0]; got != 429 {
			t.Errorf("%s, refused on one gateway with %d of 100 tokens spent: %d on the other, want 429", u, served[u], got)
		}
		// The refused request's reservation is given back once it is answered.
		awaitClusterCounter(t, cluster, u, served[u])
	}
	if where, ok := redisStatusOf(t, a); !ok || !strings.HasPrefix(where, "Redis Cluster at ") {
		t.Errorf("status: counters in %q, reachable %v", where, ok)
	}
}

// TestSentinelFailoverUnderLoad: the primary a ratelimit service and tollgate found through
// Sentinel is killed (SIGKILL) under steady load and a replica promoted. With failure mode open
// the requests of the gap are admitted unchecked, with closed they are refused with a JSON 503;
// either way checks resume on the new primary without restarting anything, and the counter there
// holds every answered request's tokens, and more only by the bound docs/operations.md states
// (refunds the old primary acknowledged but had not yet passed to its replica).
func TestSentinelFailoverUnderLoad(t *testing.T) {
	const perRequest = 12
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			testutil.Envoy(t)
			sentinel := testutil.StartRedisSentinel(t, testutil.RedisSentinelOptions{
				Replicas: 1, Password: "data-s3cret", SentinelPassword: "sentinel-s3cret"})
			redisURL := fmt.Sprintf("redis+sentinel://:data-s3cret@%s/%s?sentinel_password=sentinel-s3cret",
				strings.Join(sentinel.SentinelAddrs(), ","), sentinel.MasterName())
			s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
			s.writePolicy(t, outagePolicy(mode))
			s.startTollgateWith(t, "--redis", redisURL)
			s.startRateLimit(t, redisURL)
			s.startEnvoy(t)

			l := startSteadyLoad(t, s, "steady", 3)
			time.Sleep(time.Second)
			killed := sentinel.KillPrimary(t)
			killedAt := time.Now()
			promoted := sentinel.AwaitFailover(t)
			t.Logf("primary %s killed; %s promoted %s later", killed, promoted, time.Since(killedAt).Round(10*time.Millisecond))
			// Checks work again, on the new primary, without a restart.
			awaitChecksAnswered(t, s, "probe", 15*time.Second)
			t.Logf("checks answered again %s after the kill", time.Since(killedAt).Round(10*time.Millisecond))
			time.Sleep(time.Second)
			statuses := l.endThroughOutage(t, mode)
			want := statuses[200] * perRequest
			got := awaitSettledCounter(t, s, want, func() (int, error) { return sentinelCounter(t, sentinel, "steady") })
			assertOutageBound(t, got, want, 3)
			if where, ok := redisStatusOf(t, s); !ok || !strings.HasPrefix(where, `Redis primary "`+sentinel.MasterName()+`" via sentinels`) {
				t.Errorf("status: counters in %q, reachable %v", where, ok)
			}
		})
	}
}

// TestRedisClusterFailoverUnderLoad: the Cluster primary that holds a user's counter is killed
// under that user's steady load and its replica promoted. The requests of the gap are admitted
// unchecked (failure mode open) while the other shards keep answering; checks of the user
// resume on the promoted replica, and its counter holds every answered request's tokens, and
// more only by the stated bound.
func TestRedisClusterFailoverUnderLoad(t *testing.T) {
	const perRequest = 12
	testutil.Envoy(t)
	cluster := testutil.StartRedisCluster(t, testutil.RedisClusterOptions{Primaries: 3, ReplicasPerPrimary: 1, NodeTimeout: 2500 * time.Millisecond})
	redisURL := "redis+cluster://" + strings.Join(cluster.Seeds(), ",")
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, outagePolicy("open"))
	s.startTollgateWith(t, "--redis", redisURL)
	s.startRateLimit(t, redisURL)
	s.startEnvoy(t)
	if got := sendN(t, s, "steady", "qwen3", 1, false)[0]; got != 200 {
		t.Fatalf("first request: %d", got)
	}
	var holder string
	testutil.Eventually(t, 10*time.Second, "the counter's shard", func() (err error) {
		_, holder, err = clusterCounter(cluster, "steady")
		return err
	})

	answeredBesides := 1 // the user's requests outside the steady load: the first one, and the probes
	l := startSteadyLoad(t, s, "steady", 3)
	time.Sleep(time.Second)
	killedAt := time.Now()
	cluster.KillPrimary(t, slices.Index(cluster.Seeds(), holder))
	promoted := cluster.AwaitPromotion(t)
	t.Logf("primary %s killed; %s promoted %s later", holder, promoted, time.Since(killedAt).Round(10*time.Millisecond))
	// tollgate and the service read the slot map every second and connect anew once the
	// slots moved; the Cluster client alone could take a minute (see envoy/rls/cluster.go).
	answeredBesides += awaitChecksAnswered(t, s, "steady", 15*time.Second)
	t.Logf("checks answered again %s after the kill", time.Since(killedAt).Round(10*time.Millisecond))
	time.Sleep(time.Second)
	statuses := l.endThroughOutage(t, "open")
	want := (statuses[200] + answeredBesides) * perRequest
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// Where every copy of the counter is, and who the cluster thinks is primary.
		for _, n := range cluster.Nodes() {
			counters, err := redisCounters(n.Addr, "*_user_steady_*")
			t.Logf("node %+v: %v %v", n, counters, err)
		}
		t.Logf("CLUSTER NODES:\n%s", cluster.CLI(t, "CLUSTER", "NODES"))
	})
	got := awaitSettledCounter(t, s, want, func() (int, error) {
		n, _, err := clusterCounter(cluster, "steady")
		return n, err
	})
	assertOutageBound(t, got, want, 3)
}

// awaitChecksAnswered sends user's requests until one is answered 200 after a quota check that
// worked (not admitted unchecked by failure mode open), and returns how many were answered 200.
func awaitChecksAnswered(t *testing.T, s *stack, user string, within time.Duration) (answered int) {
	t.Helper()
	testutil.Eventually(t, within, user+"'s checks answered again", func() error {
		before := failedOpenChecks(t, s)
		if got := sendN(t, s, user, "qwen3", 1, false)[0]; got != 200 {
			return fmt.Errorf("status %d", got)
		}
		answered++
		if after := failedOpenChecks(t, s); after != before {
			return fmt.Errorf("admitted unchecked (%v failed-open checks, was %v)", after, before)
		}
		return nil
	})
	return answered
}

// awaitSettledCounter waits until the gateway has no charge or refund left to deliver and the
// counter (read) has stopped moving at answered or above, and returns it.
func awaitSettledCounter(t *testing.T, s *stack, answered int, read func() (int, error)) int {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, "the backlog empty", func() error {
		if v, _ := promSample(s.extProcMetrics(t), "tollgate_quota_charges_backlog"); v != 0 {
			return fmt.Errorf("%v waiting", v)
		}
		return nil
	})
	got := -1
	testutil.Eventually(t, 30*time.Second, "the counter settled", func() error {
		n, err := read()
		if err != nil {
			return err
		}
		if n != got || n < answered {
			got = n
			return fmt.Errorf("counter %d, answered %d", n, answered)
		}
		return nil
	})
	return got
}

// assertOutageBound checks a counter after its Redis went away under load (restarted, or a
// replica promoted) against the bound docs/operations.md states: every answered request's
// tokens are counted — nothing is lost — and beyond them at most one request's unused
// reservation per request in flight at the instant Redis went away (inFlight): a refund the dead
// primary acknowledged but had not passed to its replica (4,090 tokens of a chat request's
// 4,102), or a reservation Redis applied with the answer lost with the connection, for a request
// then admitted unchecked and charged in full (4,102).
func assertOutageBound(t *testing.T, got, answered, inFlight int) {
	t.Helper()
	const reservation = 6 + 4096 // a chat request reserves its input and the default output bound
	const unused = reservation - 12
	extra := got - answered
	t.Logf("counter %d after the outage, answered %d tokens: %d more", got, answered, extra)
	for k := 0; k <= inFlight; k++ {
		for phantom := 0; phantom <= k; phantom++ {
			if extra == phantom*reservation+(k-phantom)*unused {
				return
			}
		}
	}
	t.Errorf("counter %d after the outage, answered %d tokens: want those, plus at most %d unused reservations (%d or %d each)",
		got, answered, inFlight, unused, reservation)
}

// sentinelCounter is a user's qwen3 counter on the current primary.
func sentinelCounter(t testing.TB, sentinel *testutil.RedisSentinel, user string) (int, error) {
	keys := strings.Fields(sentinel.CLI(t, "--scan", "--pattern", "*_user_"+user+"_*"))
	if len(keys) != 1 {
		return 0, fmt.Errorf("%d counters of %s: %v", len(keys), user, keys)
	}
	return strconv.Atoi(strings.TrimSpace(sentinel.CLI(t, "GET", keys[0])))
}

// TestRedisOverTLSWithPassword: a Redis that takes TLS only, with a certificate from a private CA,
// and a password. With the right password and CA the seed scenario holds (the service counts
// there, and tollgate takes reservations back there); a wrong password, a wrong CA and plain TCP
// are each refused before the service starts, with an error that names the problem and never the
// password.
func TestRedisOverTLSWithPassword(t *testing.T) {
	testutil.Envoy(t)
	files := testutil.NewRedisTLS(t)
	redisAddr := testutil.StartRedis(t, testutil.RedisOptions{Password: "hunter2-right", TLS: &files})
	other := testutil.NewRedisTLS(t)
	for _, tt := range []struct {
		name, url, want string
	}{
		{"wrong password", "rediss://:hunter2-wrong@" + redisAddr + "?ca=" + files.CAFile, "rejected tollgate's connection: WRONGPASS"},
		{"wrong CA", "rediss://:hunter2-right@" + redisAddr + "?ca=" + other.CAFile, "certificate signed by unknown authority"},
		{"no TLS", "redis://:hunter2-right@" + redisAddr, "cannot reach Redis at " + redisAddr},
		{"CA file missing", "rediss://:hunter2-right@" + redisAddr + "?ca=/nonexistent/ca.pem", "Redis TLS CA"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := execOutput(bins.tollgate, "ratelimit", "--redis", tt.url, "--redis-wait", "1s",
				"--grpc", addr(testutil.FreePort(t)), "--http", addr(testutil.FreePort(t)), "--debug", addr(testutil.FreePort(t)))
			if err == nil {
				t.Fatalf("started: %s", out)
			}
			if msg := err.Error(); !strings.Contains(msg, tt.want) || strings.Contains(msg, "hunter2") {
				t.Errorf("error %q: want it to contain %q and no password", msg, tt.want)
			}
		})
	}

	redisURL := "rediss://:hunter2-right@" + redisAddr + "?ca=" + files.CAFile
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, seedPolicy)
	s.startTollgateWith(t, "--redis", redisURL)
	s.startRateLimit(t, redisURL)
	s.startEnvoy(t)
	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 7, false)); got != "[200 200 200 200 200 429 429]" {
		t.Fatalf("seed scenario over TLS: %s, want 5 x 200 then 429", got)
	}
	if where, ok := redisStatusOf(t, s); !ok || where != "Redis at "+redisAddr+" (TLS)" {
		t.Errorf("status: counters in %q, reachable %v", where, ok)
	}
}

// TestRunOnSentinel: `tollgate run`, with its quota checks made in-process, counts in a
// Sentinel-guarded primary: its banner says so, a back-to-back client gets exactly the seed's
// 5 x 200 then 429, and the counter on the primary holds the 60 tokens served.
func TestRunOnSentinel(t *testing.T) {
	testutil.Envoy(t)
	sentinel := testutil.StartRedisSentinel(t, testutil.RedisSentinelOptions{Password: "data-s3cret"})
	r := newRunStack(t, seedPolicy)
	r.startWith(t, append(r.args(), "--redis",
		fmt.Sprintf("redis+sentinel://:data-s3cret@%s/%s", strings.Join(sentinel.SentinelAddrs(), ","), sentinel.MasterName())))
	if banner := r.proc.logText(); !strings.Contains(banner, `Redis primary "`+sentinel.MasterName()+`" via sentinels`) || strings.Contains(banner, "data-s3cret") {
		t.Errorf("the banner does not name the Sentinel setup without its password:\n%s", banner)
	}
	if got := fmt.Sprint(sendBackToBack(t, r.stack, "alice", "qwen3", 7, false)); got != "[200 200 200 200 200 429 429]" {
		t.Fatalf("seed scenario: %s", got)
	}
	testutil.Eventually(t, 10*time.Second, "alice's counter on the primary", func() error {
		if n, err := sentinelCounter(t, sentinel, "alice"); err != nil || n != 60 {
			return fmt.Errorf("counter %d, want 60 (%w)", n, err)
		}
		return nil
	})
}

// TestControlPlaneReportsTheCounters: a control plane without an ext_proc server of its own,
// given --redis, says in its status where the counters are and whether they answer, now.
func TestControlPlaneReportsTheCounters(t *testing.T) {
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, seedPolicy)
	_, redis := startRedisOn(t, s.redisPort)
	s.startTollgateWith(t, "--extproc", "")
	if where, ok := redisStatusOf(t, s); !ok || where != "Redis at "+addr(s.redisPort) {
		t.Errorf("status with Redis up: counters in %q, reachable %v", where, ok)
	}
	redis.kill()
	testutil.Eventually(t, 10*time.Second, "status saying Redis does not answer", func() error {
		if where, ok := redisStatusOf(t, s); ok || where == "" {
			return fmt.Errorf("counters in %q, reachable %v", where, ok)
		}
		return nil
	})
}
