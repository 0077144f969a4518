//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// secretsPolicy gives the backend an upstream key from a file, and quotas small enough that a
// 429 is quick to reach.
const secretsPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity: {header: x-user-id}
backends:
  - name: sim
    url: "{{backend:sim}}"
    apiKey: {file: upstream.key}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 20, per: hour}
`

// TestUpstreamKeyNeverLeaks sends a canary upstream key through the whole stack, with debug
// logging everywhere, and looks for it in every place an operator or a client can read: it
// must reach the backend (which refuses requests without it) and appear nowhere else.
//
// Envoy runs at debug level except for two of its loggers, which print whole requests at debug:
// "router" prints every upstream request's headers and "ext_proc" every answer of the ext_proc
// server, so both would show the key (and any client's credentials). They stay at info, as they
// must wherever Envoy handles real keys.
func TestUpstreamKeyNeverLeaks(t *testing.T) {
	testutil.Envoy(t)
	canary := "sk-canary-" + randomHex(t, 16)
	simPort := startSim(t, "sim", "--require-key", canary, "--log-level", "debug")
	s := newStack(t, map[string]int{"sim": simPort})
	writeFile(t, filepath.Join(s.dir, "upstream.key"), canary+"\n")
	s.writePolicy(t, secretsPolicy)
	s.startTollgate(t)
	rateLimit := s.startRateLimit(t, s.startRedis(t))
	startEnvoyAtLevel(t, s, "debug", "router:info,ext_proc:info")

	// The simulator really does refuse a request without the key, so a 200 through the
	// gateway proves the gateway sent it.
	direct := mustDo(t, "POST", fmt.Sprintf("http://%s/v1/chat/completions", addr(simPort)), nil, chatBody("qwen3"))
	if direct.status != 401 {
		t.Fatalf("llmsim without the key: %d, want 401", direct.status)
	}

	var seen strings.Builder // every response a client got, headers and body
	record := func(what string, r response) response {
		fmt.Fprintf(&seen, "== %s: %d\n", what, r.status)
		for name, values := range r.header {
			fmt.Fprintf(&seen, "%s: %s\n", name, strings.Join(values, ", "))
		}
		seen.Write(r.body)
		seen.WriteByte('\n')
		return r
	}
	alice := map[string]string{"x-user-id": "alice"}
	if r := record("chat", chatAs(t, s, alice)); r.status != 200 {
		t.Fatalf("chat through the gateway: %d %s", r.status, r.body)
	}
	stream := `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	before := s.rateLimitCalls(t)
	if r := record("stream", mustDo(t, "POST", s.url("/v1/chat/completions"), alice, stream)); r.status != 200 {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	s.awaitRateLimitCalls(t, before+2)
	for what, want := range map[string]struct {
		headers map[string]string
		body    string
		status  int
	}{
		"over quota":     {alice, chatBody("qwen3"), 429},
		"unknown model":  {map[string]string{"x-user-id": "bob"}, chatBody("nope"), 404},
		"bad json":       {map[string]string{"x-user-id": "bob"}, `{"model":`, 400},
		"no user":        {nil, chatBody("qwen3"), 401},
		"upstream error": {map[string]string{"x-user-id": "bob", "x-llmsim-status": "500"}, chatBody("qwen3"), 500},
		"echo refused":   {map[string]string{"x-user-id": "bob", "x-llmsim-echo-headers": "authorization"}, chatBody("qwen3"), 400},
	} {
		r := record(what, mustDo(t, "POST", s.url("/v1/chat/completions"), want.headers, want.body))
		if r.status != want.status {
			t.Errorf("%s: %d, want %d: %s", what, r.status, want.status, r.body)
		}
	}
	record("models", mustDo(t, "GET", s.url("/v1/models"), nil, ""))

	// Everything an operator can read.
	places := map[string]func() string{
		"client responses":         seen.String,
		"Envoy /config_dump":       func() string { return string(mustDo(t, "GET", s.adminURL("/config_dump?include_eds"), nil, "").body) },
		"Envoy /stats":             func() string { return string(mustDo(t, "GET", s.adminURL("/stats"), nil, "").body) },
		"Envoy /stats/prometheus":  func() string { return string(mustDo(t, "GET", s.adminURL("/stats/prometheus"), nil, "").body) },
		"Envoy /clusters":          func() string { return string(mustDo(t, "GET", s.adminURL("/clusters"), nil, "").body) },
		"tollgate /status":         func() string { return string(mustDo(t, "GET", s.metricsURL("/status"), nil, "").body) },
		"tollgate /metrics":        func() string { return string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body) },
		"tollgate render":          func() string { return runTollgate(t, "render", "-f", s.policyPath) },
		"tollgate validate":        func() string { return runTollgate(t, "validate", "-f", s.policyPath) },
		"tollgate status":          func() string { return runTollgate(t, "status", "--addr", addr(s.metricsPort)) },
		"tollgate log":             s.tollgate.logText,
		"Envoy log and access log": s.envoy.logText,
		"ratelimit service log":    rateLimit.logText,
	}
	// Envoy writes its access log on a timer; wait until this test's lines are there.
	testutil.Eventually(t, 15*time.Second, "Envoy's access log has the test's requests", func() error {
		if !strings.Contains(s.envoy.logText(), `"status":429`) {
			return fmt.Errorf("no 429 line yet")
		}
		return nil
	})
	for place, read := range places {
		text := read()
		if text == "" {
			t.Errorf("%s: read nothing; the check would prove nothing", place)
			continue
		}
		if i := strings.Index(text, canary); i >= 0 {
			t.Errorf("the upstream key appears in %s: ...%s...", place, text[max(0, i-200):min(len(text), i+len(canary)+40)])
		}
	}
	// The policy-side name of the secret is fine to show; its value never is.
	if !strings.Contains(runTollgate(t, "render", "-f", s.policyPath), "backend_sim") {
		t.Errorf("render output does not describe the backend")
	}
}

// startEnvoyAtLevel is startEnvoy with Envoy's log level, and the levels of some of its
// components ("router:info,..."), chosen by the test.
func startEnvoyAtLevel(t testing.TB, s *stack, level, componentLevels string) {
	t.Helper()
	envoyBin := testutil.Envoy(t)
	bootstrapPath := filepath.Join(s.dir, "envoy.yaml")
	out := runTollgate(t, "bootstrap", "--xds", addr(s.xdsPort), "--admin", addr(s.adminPort))
	if err := os.WriteFile(bootstrapPath, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	s.envoy = start(t, "envoy", envoyBin, "-c", bootstrapPath,
		"--disable-hot-restart", "--log-level", level, "--component-log-level", componentLevels, "--concurrency", "1")
	testutil.Eventually(t, 30*time.Second, "envoy ready", func() error {
		r, err := do("GET", s.adminURL("/ready"), nil, "")
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("/ready: %d", r.status)
		}
		return nil
	})
}
