package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestValidateReportsEveryMistake: three mistakes, three errors, each as file:line: path: message.
func TestValidateReportsEveryMistake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	policy := `backends:
  - name: sim
    url: ftp://127.0.0.1:8000
models:
  - {name: qwen3, backend: simm}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 50, per: fortnight}
`
	if err := os.WriteFile(path, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "validate", "-f", path)
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (stdout %q)", code, stdout)
	}
	line := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `:(\d+): (\S+): .+$`)
	var found []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			found = append(found, m[1]+" "+m[2])
		}
	}
	want := []string{"3 backends[0].url", "5 models[0].backend", "9 quotas[0].per"}
	if strings.Join(found, ", ") != strings.Join(want, ", ") {
		t.Errorf("errors at %v, want %v; stderr:\n%s", found, want, stderr)
	}
	if !strings.Contains(stderr, "3 error(s)") {
		t.Errorf("no error count in:\n%s", stderr)
	}
}

func TestValidateAcceptsTheSeedExample(t *testing.T) {
	code, stdout, stderr := runCLI(t, "validate", "-f", "../../examples/usage-based-rate-limiting/policy.yaml")
	if code != 0 || !strings.Contains(stdout, "ok (1 backends, 3 models, 4 costs, 3 quotas)") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
}

// TestRenderPrintsTheResources: render shows listeners, routes, clusters and the ratelimit config
// of the seed example.
func TestRenderPrintsTheResources(t *testing.T) {
	code, stdout, stderr := runCLI(t, "render", "-f", "../../examples/usage-based-rate-limiting/policy.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"listeners:", "routes:", "clusters:", "name: model_qwen3", "name: backend_llm-sim", "requests_per_unit: 50", "path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("render output lacks %q", want)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	if code, _, stderr := runCLI(t, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}
