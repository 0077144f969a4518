package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/policies"
)

func TestHashKey(t *testing.T) {
	// sha256("abc"), a published test vector.
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	long := strings.Repeat("k", minKeyLength)
	tests := []struct {
		name, stdin string
		args        []string
		code        int
		out, errIn  string
	}{
		{name: "stdin with newline", stdin: "abc\n", code: 0, out: abc + "\n", errIn: "warning: the key is 3 characters"},
		{name: "flag", args: []string{"--key", "abc"}, code: 0, out: abc + "\n", errIn: "warning"},
		{name: "user entry", stdin: long, args: []string{"--user", "alice"}, code: 0,
			out: fmt.Sprintf("- {user: \"alice\", sha256: %s}\n", sha256Hex(long))},
		{name: "long key, no warning", stdin: long + "\r\n", code: 0, out: sha256Hex(long) + "\n"},
		{name: "empty", stdin: "\n", code: 2, errIn: "no key given"},
		{name: "two lines", stdin: "a\nb\n", code: 2, errIn: "several lines"},
		{name: "spaces", stdin: " abc\n", code: 2, errIn: "surrounding spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := hashKeyCommand(tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.out {
				t.Fatalf("exit %d, stdout %q; want %d, %q (stderr %q)", code, stdout.String(), tt.code, tt.out, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.errIn) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.errIn)
			}
			if tt.errIn == "" && stderr.Len() > 0 {
				t.Errorf("unexpected stderr %q", stderr.String())
			}
			if strings.Contains(stderr.String(), "abc") {
				t.Errorf("stderr echoes the key: %q", stderr.String())
			}
		})
	}
}

func sha256Hex(s string) string {
	return fmt.Sprintf("%x", extproc.HashKey(s))
}

func TestExtProcConfigIdentity(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte("- {user: bob, sha256: "+sha256Hex("bob-key")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const src = `identity:
  mode: apiKeys
  apiKeysFile: keys.yaml
  apiKeys: [{user: alice, sha256: %s}]
backends:
  - {name: paid, url: "https://api.example.com", apiKey: "${PAID_KEY}"}
  - {name: free, url: "http://127.0.0.1:8000"}
models:
  - {name: big, backend: paid}
  - {name: small, backend: free}
`
	env := func(name string) (string, bool) { return "sk-canary-paid", name == "PAID_KEY" }
	p, err := policies.Parse(filepath.Join(dir, "policy.yaml"), []byte(fmt.Sprintf(src, sha256Hex("alice-key"))), env)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := extProcConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Identity != extproc.IdentityFromAPIKey {
		t.Fatalf("identity mode %v", cfg.Identity)
	}
	if cfg.APIKeys[extproc.HashKey("alice-key")] != "alice" || cfg.APIKeys[extproc.HashKey("bob-key")] != "bob" || len(cfg.APIKeys) != 2 {
		t.Fatalf("API keys %v, want alice (inline) and bob (file)", cfg.APIKeys)
	}
	if string(cfg.BackendKeys["paid"]) != "sk-canary-paid" || len(cfg.BackendKeys) != 1 {
		t.Fatalf("backend keys: %d, paid set: %v", len(cfg.BackendKeys), cfg.BackendKeys["paid"] != "")
	}
	if strings.Contains(fmt.Sprintf("%v %+v", cfg, *cfg), "sk-canary") {
		t.Fatal("printing the ext_proc config shows the upstream key")
	}

	jwt, err := policies.Parse("policy.yaml", []byte(`identity:
  mode: jwt
  jwt: {issuer: https://auth.example.com, jwksURI: "https://auth.example.com/keys", userClaim: email}
backends: [{name: free, url: "http://127.0.0.1:8000"}]
models: [{name: small, backend: free}]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = extProcConfig(jwt)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Identity != extproc.IdentityFromJWT || cfg.JWTClaim != "email" || cfg.APIKeys != nil || cfg.BackendKeys != nil {
		t.Fatalf("jwt config: mode %v, claim %q, keys %v", cfg.Identity, cfg.JWTClaim, cfg.APIKeys)
	}
}
