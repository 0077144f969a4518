//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUserIDValidation: in header mode the client picks its user id, and an id outside the
// policy's rule (bytes that are not UTF-8, whitespace or control characters, more than 256
// bytes) is refused with a JSON 400 before Envoy asks the ratelimit service anything, every
// time. An id that is not UTF-8 used to make the service's check fail, and with the default
// failureMode open Envoy served the request without a limit. Ids in any script are ordinary
// users.
func TestUserIDValidation(t *testing.T) {
	s, redis := redisStack(t, seedPolicy)
	redisAddr := addr(redis.port)

	refused := []struct{ name, user, problem string }{
		{"not UTF-8", "mallory\xff\xfe", "not valid UTF-8"},
		// Envoy's HTTP/1 codec drops the connection on a DEL or another control character in a
		// header value, but lets a tab through.
		{"tab", "mallory\tx", "U+0009"},
		{"257 bytes", strings.Repeat("m", 257), "257 bytes"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			calls := s.rateLimitCalls(t)
			// Repeated: a request that slipped through would be served, not limited.
			for i := range 10 {
				r := rawChat(t, s, c.user, chatBody("qwen3"))
				if r.status != 400 {
					t.Fatalf("request %d: status %d, want 400: %s", i+1, r.status, r.body)
				}
				if ct := r.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("content-type %q, want JSON", ct)
				}
				e, ok := r.json(t)["error"].(map[string]any)
				if !ok || e["type"] != "invalid_request_error" || e["code"] != "invalid_user" ||
					!strings.Contains(fmt.Sprint(e["message"]), c.problem) {
					t.Fatalf("request %d: body %s, want invalid_request_error / invalid_user naming %q", i+1, r.body, c.problem)
				}
				if i == 0 {
					t.Logf("%d %s", r.status, r.body)
				}
			}
			if got := s.rateLimitCalls(t); got != calls {
				t.Errorf("%d ratelimit calls for refused requests", got-calls)
			}
		})
	}
	if n := countRedisKeys(t, redisAddr, "*user_m*"); n != 0 {
		t.Errorf("refused ids created %d Redis keys", n)
	}

	t.Run("josé is limited like anyone", func(t *testing.T) {
		statuses := sendN(t, s, "josé", "qwen3", 6, false)
		if want := []int{200, 200, 200, 200, 200, 429}; fmt.Sprint(statuses) != fmt.Sprint(want) {
			t.Fatalf("statuses %v, want %v", statuses, want)
		}
		keys, err := redisKeys(redisAddr, "*_user_josé_*")
		if err != nil || len(keys) != 1 {
			t.Fatalf("josé's counters %q (%v), want 1", keys, err)
		}
		mem, err := redisDo(redisAddr, "MEMORY", "USAGE", keys[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("counter of a %d-byte id: key %d bytes, MEMORY USAGE %s bytes", len("josé"), len(keys[0]), mem)
	})

	// The longest id allowed, and what its counter costs: the key is the domain, the descriptor
	// entries and the window start joined by "_" (see the ratelimit service's cache key).
	t.Run("256 bytes", func(t *testing.T) {
		user := strings.Repeat("用", 85) + "x" // 256 bytes
		if got := sendN(t, s, user, "qwen3", 1, false); got[0] != 200 {
			t.Fatalf("status %d, want 200", got[0])
		}
		keys, err := redisKeys(redisAddr, "*_user_"+user+"_*")
		if err != nil || len(keys) != 1 {
			t.Fatalf("counters %q (%v), want 1", keys, err)
		}
		prefix := "tollgate_model_qwen3_quota_qwen3-llm_total_token-per-hour_user_"
		window := strconv.FormatInt(time.Now().Unix()/3600*3600, 10)
		if want := len(prefix) + len(user) + 1 + len(window); len(keys[0]) != want {
			t.Errorf("key %d bytes, want %d: %q", len(keys[0]), want, keys[0])
		}
		mem, err := redisDo(redisAddr, "MEMORY", "USAGE", keys[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("counter of a %d-byte id: key %d bytes, MEMORY USAGE %s bytes", len(user), len(keys[0]), mem)
	})
}

// rawChat sends a chat request on its own connection, writing the identity header's bytes as
// they are: net/http refuses to send some of the ids this test needs.
func rawChat(t testing.TB, s *stack, user, body string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr(s.listenerPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n"+
		"x-user-id: %s\r\n\r\n%s", len(body), user, body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}
