//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestScaleOutSharesOneQuota: two gateways (each an Envoy with its own tollgate) in front of one
// ratelimit service and one Redis enforce one quota per user, whichever gateway a request takes,
// exactly, for JSON and streamed answers.
func TestScaleOutSharesOneQuota(t *testing.T) {
	testutil.Envoy(t)
	sim := startSim(t, "sim")
	a := newStack(t, map[string]int{"sim": sim})
	b := newStack(t, map[string]int{"sim": sim})
	b.rateLimit, b.redisPort = a.rateLimit, a.redisPort
	for _, s := range []*stack{a, b} {
		s.writePolicy(t, seedPolicy)
		s.startTollgate(t)
	}
	a.startRateLimit(t, a.startRedis(t))
	b.charges = true
	a.startEnvoy(t)
	b.startEnvoy(t)

	// A client that sends its next request the moment the last answer arrived, each time to
	// the other gateway: each answer near the limit ends only once its request is settled, so
	// the other gateway never sees a reservation the request no longer holds.
	for _, stream := range []bool{false, true} {
		user := fmt.Sprintf("alice-stream-%v", stream)
		got := sendBackToBackAcross(t, []*stack{a, b}, user, "qwen3", 8, stream)
		if fmt.Sprint(got) != "[200 200 200 200 200 429 429 429]" {
			t.Errorf("%s alternating gateways A,B,A,B,…: %v, want one shared quota (5 x 200 then 429)", user, got)
		}
		awaitCounter(t, addr(a.redisPort), user, 60)
	}
}

// TestConcurrentOvershootIsBounded: requests in flight together all pass the request-time check
// before any of them is charged, so a nearly spent quota can be overshot — by at most the
// requests in flight times their cost, as check-then-charge allows, and never further.
func TestConcurrentOvershootIsBounded(t *testing.T) {
	testutil.Envoy(t)
	const concurrency, perRequest, limit = 20, 12, 50
	// A slow first token keeps every request of the burst in flight at once.
	s := newStack(t, map[string]int{"sim": startSim(t, "sim", "--ttft", "300ms")})
	s.writePolicy(t, seedPolicy)
	s.startTollgate(t)
	redisAddr := s.startRedis(t)
	s.startRateLimit(t, redisAddr)
	s.startEnvoy(t)

	if got := fmt.Sprint(sendN(t, s, "racer", "qwen3", 4, false)); got != "[200 200 200 200]" {
		t.Fatalf("spending 48 of 50: %s", got)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted int
	)
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := do("POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "racer"}, chatBody("qwen3"))
			if err != nil {
				t.Error(err)
				return
			}
			if r.status == 200 {
				mu.Lock()
				admitted++
				mu.Unlock()
			} else if r.status != 429 {
				t.Errorf("status %d: %s", r.status, r.body)
			}
		}()
	}
	wg.Wait()
	spent := 4*perRequest + admitted*perRequest
	t.Logf("burst of %d concurrent requests at 48/%d spent: %d admitted, %d tokens spent, overshoot %d tokens",
		concurrency, limit, admitted, spent, spent-limit)
	if admitted < 1 {
		t.Errorf("no request of the burst was admitted")
	}
	// Every admitted request is charged exactly once, whatever the overshoot: the counter in
	// Redis is the tokens actually spent. (Charges are sent when streams end, so wait for them.)
	testutil.Eventually(t, 10*time.Second, "Redis counter equals the tokens spent", func() error {
		n, err := redisCounter(redisAddr, "*user_racer_*")
		if err != nil {
			return err
		}
		if n != spent {
			return fmt.Errorf("counter %d, want %d", n, spent)
		}
		return nil
	})
	if got := sendN(t, s, "racer", "qwen3", 1, false)[0]; got != 429 {
		t.Errorf("after the burst: %d, want 429", got)
	}
}

// redisCounter returns the value of the one Redis key matching pattern, speaking just enough of
// the Redis protocol (inline commands) to ask for it.
func redisCounter(addr, pattern string) (int, error) {
	counters, err := redisCounters(addr, pattern)
	if err != nil {
		return 0, err
	}
	if len(counters) != 1 {
		return 0, fmt.Errorf("%d keys match %s: %v", len(counters), pattern, counters)
	}
	for _, v := range counters {
		return v, nil
	}
	return 0, nil
}

// redisCounters returns the counters (grants left out) matching pattern in the Redis at addr,
// by key.
func redisCounters(addr, pattern string) (map[string]int, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if _, err := fmt.Fprintf(c, "KEYS %s\r\n", pattern); err != nil {
		return nil, err
	}
	all, err := readArray(r)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, k := range all {
		if strings.HasPrefix(k, rls.GrantKeyPrefix) {
			continue // grants sit next to the counters under their own prefix
		}
		if _, err := fmt.Fprintf(c, "GET %s\r\n", k); err != nil {
			return nil, err
		}
		v, err := readBulk(r)
		if err != nil {
			return nil, err
		}
		if out[k], err = strconv.Atoi(v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

func readBulk(r *bufio.Reader) (string, error) {
	head, err := readLine(r)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(head, "$") {
		return "", fmt.Errorf("unexpected reply %q", head)
	}
	return readLine(r)
}

func readArray(r *bufio.Reader) ([]string, error) {
	head, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(head, "*") {
		return nil, fmt.Errorf("unexpected reply %q", head)
	}
	n, err := strconv.Atoi(head[1:])
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		v, err := readBulk(r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
