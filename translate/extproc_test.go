package translate_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

func sha256Hex(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// extProcConfig is the ext_proc server's share of p.
func extProcConfig(t *testing.T, p *policies.Policy) *extproc.Config {
	t.Helper()
	out, err := translate.Translate(p)
	if err != nil {
		t.Fatal(err)
	}
	return out.ExtProc
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
	cfg := extProcConfig(t, p)
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
	cfg = extProcConfig(t, jwt)
	if cfg.Identity != extproc.IdentityFromJWT || cfg.JWTClaim != "email" || cfg.APIKeys != nil || cfg.BackendKeys != nil {
		t.Fatalf("jwt config: mode %v, claim %q, keys %v", cfg.Identity, cfg.JWTClaim, cfg.APIKeys)
	}
}
