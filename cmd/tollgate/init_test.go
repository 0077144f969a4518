package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// TestInitWritesAPolicyThatServes: tollgate init writes a commented policy that parses and
// translates, with the backend, its key from the environment, and a quota on every model; it
// never overwrites a file unless told to.
func TestInitWritesAPolicyThatServes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	args := []string{"-o", path, "--backend-url", "https://api.example.com", "--models", "gpt-4o-mini, gpt-4.1",
		"--api-key-env", "EXAMPLE_KEY", "--limit", "5000", "--per", "hour", "--port", "9090"}
	var stdout, stderr bytes.Buffer
	if code := initCommand(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "wrote "+path) || !strings.Contains(stdout.String(), "$EXAMPLE_KEY") {
		t.Errorf("stdout %q does not say what was written", stdout.String())
	}
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(content), "# ") {
		t.Errorf("the policy has no comments:\n%s", content)
	}
	env := func(name string) (string, bool) { return "sk-test", name == "EXAMPLE_KEY" }
	p, err := policies.Parse(path, content, env)
	if err != nil {
		t.Fatalf("the written policy does not parse: %v\n%s", err, content)
	}
	if p.Listener.Port != 9090 || len(p.Models) != 2 || len(p.Quotas) != 2 || p.Backends[0].URL != "https://api.example.com" || !p.Backends[0].APIKey.IsSet() {
		t.Errorf("policy %+v", p)
	}
	for _, q := range p.Quotas {
		if q.Limit.Count != 5000 || q.Per != "hour" {
			t.Errorf("quota %+v, want 5000 per hour", q)
		}
	}
	if _, err := translate.Translate(p); err != nil {
		t.Fatalf("the written policy does not translate: %v", err)
	}

	stdout.Reset()
	stderr.Reset()
	if code := initCommand(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "exists") {
		t.Errorf("a second init: exit %d, stderr %q; want a refusal to overwrite", code, stderr.String())
	}
	if code := initCommand(append(args, "--force"), &stdout, &stderr); code != 0 {
		t.Errorf("init --force: exit %d: %s", code, stderr.String())
	}
}

// TestInitRefusesWhatCouldNotServe: missing or invalid input is a usage error naming the
// problem, and nothing is written.
func TestInitRefusesWhatCouldNotServe(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--models", "m"}, "--backend-url and --models are required"},
		{[]string{"--backend-url", "http://h:1"}, "--backend-url and --models are required"},
		{[]string{"--backend-url", "not a url", "--models", "m"}, "is not a URL with a host"},
		{[]string{"--backend-url", "http://h:1", "--models", "m", "--per", "fortnight"}, `quotas[0].per: must be one of`},
		{[]string{"--backend-url", "http://h:1/v1", "--models", "m"}, "backends[0].url"},
	} {
		out := filepath.Join(dir, "p.yaml")
		var stdout, stderr bytes.Buffer
		if code := initCommand(append([]string{"-o", out}, tt.args...), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tt.args, code, stderr.String(), tt.want)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: a file was written", tt.args)
		}
	}
}
