//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

const routingPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}}
backends:
  - {name: alpha, url: "{{backend:alpha}}"}
  - {name: beta, url: "{{backend:beta}}"}
models:
  - {name: qwen3, backend: alpha}
  - {name: gpt-4, backend: beta}
`

// TestRoutingAndHotReload: a real Envoy configured only over ADS routes by the model in the
// body, answers unknown models with a JSON 404, picks up an edited policy without a restart,
// and keeps serving the last good config when an edit is broken.
func TestRoutingAndHotReload(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"alpha": startSim(t, "alpha"), "beta": startSim(t, "beta")})
	s.writePolicy(t, routingPolicy)
	s.startTollgate(t)
	s.startEnvoy(t)

	var st struct {
		Policy struct {
			EnvoyVersion string   `json:"envoy_version"`
			LastResult   string   `json:"last_result"`
			LastErrors   []string `json:"last_errors"`
		} `json:"policy"`
	}
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	version := st.Policy.EnvoyVersion
	if version == "" {
		t.Fatal("tollgate status shows no version")
	}
	assertEnvoyAcked(t, s, version)

	alice := map[string]string{"x-user-id": "alice"}

	t.Run("body model routes without a model header", func(t *testing.T) {
		for model, backend := range map[string]string{"qwen3": "alpha", "gpt-4": "beta"} {
			r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody(model))
			if r.status != 200 {
				t.Fatalf("%s: status %d: %s", model, r.status, r.body)
			}
			if got := r.header.Get("x-llmsim-backend"); got != backend {
				t.Errorf("%s served by %q, want %q", model, got, backend)
			}
		}
	})

	t.Run("body model wins over a client model header", func(t *testing.T) {
		h := map[string]string{"x-user-id": "alice", "x-ai-eg-model": "gpt-4"}
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), h, chatBody("qwen3"))
		if r.status != 200 || r.header.Get("x-llmsim-backend") != "alpha" {
			t.Fatalf("status %d backend %q; want 200 from alpha (the body's qwen3)", r.status, r.header.Get("x-llmsim-backend"))
		}
	})

	t.Run("unknown model gets a JSON 404 naming it", func(t *testing.T) {
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody("no-such-model"))
		if r.status != 404 {
			t.Fatalf("status %d, want 404: %s", r.status, r.body)
		}
		e := r.json(t)["error"].(map[string]any)
		if !strings.Contains(fmt.Sprint(e["message"]), "no-such-model") || e["code"] != "model_not_found" {
			t.Fatalf("error body does not name the model: %s", r.body)
		}
	})

	t.Run("malformed JSON gets a JSON 400", func(t *testing.T) {
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, `{"model":"qwen3",`)
		if r.status != 400 {
			t.Fatalf("status %d, want 400: %s", r.status, r.body)
		}
		if _, ok := r.json(t)["error"]; !ok {
			t.Fatalf("no error object: %s", r.body)
		}
	})

	t.Run("a body over the limit gets a JSON 413", func(t *testing.T) {
		big := `{"model":"qwen3","messages":[{"role":"user","content":"` + strings.Repeat("x", 2<<20) + `"}]}`
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, big)
		if r.status != 413 {
			t.Fatalf("status %d, want 413", r.status)
		}
		if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "invalid_request_error" {
			t.Errorf("413 body: %s", r.body)
		}
	})

	t.Run("GET /v1/models lists the policy's models", func(t *testing.T) {
		r := mustDo(t, "GET", s.url("/v1/models"), nil, "")
		if r.status != 200 || !strings.Contains(string(r.body), `"qwen3"`) || !strings.Contains(string(r.body), `"gpt-4"`) {
			t.Fatalf("status %d body %s", r.status, r.body)
		}
	})

	// Hot reload: add a model; Envoy must route it without any restart.
	edited := strings.Replace(routingPolicy, "  - {name: gpt-4, backend: beta}\n",
		"  - {name: gpt-4, backend: beta}\n  - {name: llama3, backend: beta}\n", 1)
	saved := time.Now()
	s.writePolicy(t, edited)
	testutil.Eventually(t, 10*time.Second, "new model routed after the edit", func() error {
		r, err := do("POST", s.url("/v1/chat/completions"), alice, chatBody("llama3"))
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("status %d", r.status)
		}
		return nil
	})
	t.Logf("policy save → Envoy routing the new model: %s", time.Since(saved).Round(time.Millisecond))
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Policy.EnvoyVersion == version {
		t.Fatalf("version did not change after the edit: %s", version)
	}
	version = st.Policy.EnvoyVersion
	assertEnvoyAcked(t, s, version)

	// A broken edit: the last good config keeps serving and the errors are reported.
	s.writePolicy(t, edited+"\nquotas:\n  - {model: llama3, cost: nope, limit: -1, per: fortnight}\n")
	testutil.Eventually(t, 10*time.Second, "broken policy reported", func() error {
		if err := getJSON(s.metricsURL("/status"), &st); err != nil {
			return err
		}
		if st.Policy.LastResult != "failed" {
			return fmt.Errorf("last result %q", st.Policy.LastResult)
		}
		return nil
	})
	if len(st.Policy.LastErrors) < 2 {
		t.Errorf("want every error reported, got %q", st.Policy.LastErrors)
	}
	if st.Policy.EnvoyVersion != version {
		t.Errorf("served version changed to %s after a broken edit", st.Policy.EnvoyVersion)
	}
	for _, model := range []string{"qwen3", "llama3"} {
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody(model))
		if r.status != 200 {
			t.Errorf("%s after a broken edit: status %d", model, r.status)
		}
	}
	metrics := mustDo(t, "GET", s.metricsURL("/metrics"), nil, "")
	if !strings.Contains(string(metrics.body), `tollgate_policy_reloads_total{result="failed"} 1`) {
		t.Errorf("failed reload not counted:\n%s", grepLines(string(metrics.body), "tollgate_policy_reloads_total"))
	}
	if !strings.Contains(s.tollgate.logText(), "policy rejected") {
		t.Errorf("tollgate did not log the rejected policy")
	}
}

// assertEnvoyAcked checks Envoy's config_dump: resources at tollgate's version, and none in an
// error (NACKed) state.
func assertEnvoyAcked(t *testing.T, s *stack, version string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "envoy at version "+version, func() error {
		r, err := do("GET", s.adminURL("/config_dump"), nil, "")
		if err != nil {
			return err
		}
		dump := string(r.body)
		if strings.Contains(dump, "error_state") {
			return fmt.Errorf("config_dump shows a rejected resource:\n%s", grepLines(dump, "details"))
		}
		// Envoy keeps a resource's old version when its content did not change, so only the
		// resources an edit touched (at least the route table) carry the new one.
		if !strings.Contains(dump, `"version_info": "`+version+`"`) {
			return fmt.Errorf("version %s not in config_dump", version)
		}
		return nil
	})
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
