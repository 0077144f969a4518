//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// rawRequest sends one HTTP/1.1 request exactly as written (no client normalises its path) and
// returns the status and body.
func rawRequest(t testing.TB, s *stack, method, path string, header map[string]string, body string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr(s.listenerPort))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n", method, path)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != "" || method == "POST" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// TestOnlyMeteredPathsReachABackend: a path whose usage tollgate cannot read never reaches a
// backend, even with a model header; an encoded slash is decoded before anything looks at the
// path, so "/v1/chat%2Fcompletions" is metered (usage forced on its stream) like the real path;
// and a model header never routes a request without a body.
func TestOnlyMeteredPathsReachABackend(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	backendCalls := func() int { return s.envoyStat(t, "cluster.backend_sim.upstream_rq_total") }
	user := map[string]string{"x-user-id": "pathfinder", "x-ai-eg-model": "qwen3"}
	chat := chatBody("qwen3")

	before := backendCalls()
	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/chat/completions", chat, 404},
		{"POST", "/invocations", chat, 404},
		{"POST", "/api/chat", chat, 404},
		{"POST", "/v1/embeddings", `{"model":"qwen3","input":"hi"}`, 404},
		{"POST", "/V1/CHAT/COMPLETIONS", chat, 404},
		{"POST", "/v1/chat/completions/", chat, 404},
		{"GET", "/v1/chat/completions", "", 400},
		{"POST", "/v1/chat/completions", "", 400},
		{"POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400},
	} {
		status, body := rawRequest(t, s, c.method, c.path, user, c.body)
		if status != c.status || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s (body %q): %d %s, want %d with a JSON error", c.method, c.path, c.body, status, body, c.status)
		}
	}
	if got := backendCalls(); got != before {
		t.Fatalf("%d requests reached the backend, want none", got-before)
	}

	// The encoded slash: a stream without include_usage still gets usage forced and charged.
	stream := `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`
	callsBefore := s.rateLimitCalls(t)
	status, body := rawRequest(t, s, "POST", "/v1/chat%2Fcompletions", map[string]string{"x-user-id": "slasher"}, stream)
	if status != 200 || !strings.Contains(body, `"usage":{`) {
		t.Fatalf("encoded-slash stream: %d, usage in the stream: %v\n%s", status, strings.Contains(body, `"usage":{`), body)
	}
	s.awaitRateLimitCalls(t, callsBefore+2)
	if got := spentOn(t, s, "slasher", "qwen3", "qwen3-llm_total_token-per-hour"); got != 12 {
		t.Fatalf("encoded-slash stream charged %d tokens, want 12", got)
	}
}
