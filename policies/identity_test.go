package policies

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// hashOf is what `tollgate hash-key` prints for key.
func hashOf(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// publicJWKS is a key set with one (made-up) RSA public key; only its shape matters here.
const publicJWKS = `{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}`

// policyDir writes files (name → content) into a fresh directory and returns the policy path
// in it.
func policyDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "policy.yaml")
}

func loadErrors(t *testing.T, path string) []FieldError {
	t.Helper()
	p, _, err := Load(path, noEnv)
	if err == nil {
		t.Fatalf("Load succeeded, want errors; policy: %+v", p)
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want *Errors: %v", err, err)
	}
	return errs.List
}

func mustLoad(t *testing.T, path string) *Policy {
	t.Helper()
	p, _, err := Load(path, noEnv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return p
}

// identityPolicy is the seed with its identity line replaced.
func identityPolicy(t *testing.T, identity string) string {
	t.Helper()
	return seedWith(t, "identity: {header: x-user-id}\n", identity)
}

// hasError reports whether errs holds an error at path whose message contains all of parts.
func hasError(errs []FieldError, path string, parts ...string) bool {
	for _, e := range errs {
		if e.Path != path {
			continue
		}
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(e.Message, part)
		}
		if ok {
			return true
		}
	}
	return false
}

func TestIdentityDefaultsToHeaderMode(t *testing.T) {
	p := mustParse(t, seedPolicy)
	if p.Identity.Mode != IdentityHeader || p.Identity.Header != "x-user-id" {
		t.Fatalf("identity %+v, want header mode on x-user-id", p.Identity)
	}
	if !reflect.ValueOf(p.Identity.JWT).IsZero() || p.Identity.ResolvedAPIKeys != nil {
		t.Fatalf("header mode got jwt or key settings: %+v", p.Identity)
	}
}

func TestIdentityModeIsCaseInsensitive(t *testing.T) {
	src := identityPolicy(t, "identity:\n  mode: APIKEYS\n  apiKeys: [{user: alice, sha256: "+hashOf("k1")+"}]\n")
	if got := mustParse(t, src).Identity.Mode; got != IdentityAPIKeys {
		t.Fatalf("mode %q, want %q", got, IdentityAPIKeys)
	}
}

func TestIdentityUnknownMode(t *testing.T) {
	errs := parseErrors(t, identityPolicy(t, "identity: {mode: oauth}\n"))
	if !hasError(errs, "identity.mode", `"oauth"`, "header, apiKeys, jwt") {
		t.Fatalf("errors %v, want identity.mode naming the valid modes", errs)
	}
	if errs[0].Line != 2 {
		t.Errorf("line %d, want 2", errs[0].Line)
	}
}

func TestAPIKeysInline(t *testing.T) {
	src := identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeys:\n"+
		"    - {user: alice, sha256: "+hashOf("alice-key")+"}\n"+
		"    - {user: alice, sha256: "+hashOf("alice-new-key")+"}\n"+
		"    - {user: bob, sha256: "+hashOf("bob-key")+"}\n")
	p := mustParse(t, src)
	want := []APIKey{
		{User: "alice", SHA256: hashOf("alice-key")},
		{User: "alice", SHA256: hashOf("alice-new-key")},
		{User: "bob", SHA256: hashOf("bob-key")},
	}
	if !reflect.DeepEqual(p.Identity.ResolvedAPIKeys, want) {
		t.Fatalf("keys %+v, want %+v (a user may hold two keys while rotating)", p.Identity.ResolvedAPIKeys, want)
	}
	if p.Identity.Header != "x-user-id" {
		t.Errorf("identity header %q, want the default x-user-id", p.Identity.Header)
	}
}

func TestAPIKeyHashMustBeLowercaseHex(t *testing.T) {
	good := hashOf("k")
	cases := map[string]string{
		"uppercase":  strings.ToUpper(good),
		"short":      good[:63],
		"long":       good + "0",
		"not hex":    "z" + good[1:],
		"pasted key": "sk-live-0123456789",
	}
	for name, hash := range cases {
		t.Run(name, func(t *testing.T) {
			src := identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeys: [{user: alice, sha256: \""+hash+"\"}]\n")
			errs := parseErrors(t, src)
			if !hasError(errs, "identity.apiKeys[0].sha256", "64 lowercase hex") {
				t.Fatalf("errors %v, want identity.apiKeys[0].sha256: 64 lowercase hex", errs)
			}
			for _, e := range errs {
				if strings.Contains(e.Error(), hash) {
					t.Errorf("error echoes the value: %v", e)
				}
			}
		})
	}
}

func TestAPIKeyFieldErrors(t *testing.T) {
	src := identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeys:\n"+
		"    - {sha256: "+hashOf("a")+"}\n"+
		"    - {user: \"has space\", sha256: "+hashOf("b")+"}\n"+
		"    - {user: carol}\n"+
		"    - {user: dave, sha256: "+hashOf("d")+", key: oops}\n")
	errs := parseErrors(t, src)
	for _, want := range []struct{ path, part string }{
		{"identity.apiKeys[0].user", "required"},
		{"identity.apiKeys[1].user", "not a valid user id"},
		{"identity.apiKeys[2].sha256", "required"},
		{"identity.apiKeys[3].key", "unknown field"},
	} {
		if !hasError(errs, want.path, want.part) {
			t.Errorf("no %s: %s in %v", want.path, want.part, errs)
		}
	}
}

func TestAPIKeysDuplicateHash(t *testing.T) {
	h := hashOf("shared")
	src := identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeys:\n"+
		"    - {user: alice, sha256: "+h+"}\n"+
		"    - {user: bob, sha256: "+h+"}\n")
	errs := parseErrors(t, src)
	if !hasError(errs, "identity.apiKeys[1].sha256", "listed again", "identity.apiKeys[0]") {
		t.Fatalf("errors %v, want the second use of the hash refused", errs)
	}
}

func TestAPIKeysFileMergesWithInline(t *testing.T) {
	path := policyDir(t, map[string]string{
		"policy.yaml": identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeysFile: keys/users.yaml\n"+
			"  apiKeys: [{user: ops, sha256: "+hashOf("ops-key")+"}]\n"),
		"keys/users.yaml": "# issued keys\n- {user: alice, sha256: " + hashOf("alice-key") + "}\n" +
			"- user: bob\n  sha256: " + hashOf("bob-key") + "\n",
	})
	p := mustLoad(t, path)
	want := []APIKey{
		{User: "ops", SHA256: hashOf("ops-key")},
		{User: "alice", SHA256: hashOf("alice-key")},
		{User: "bob", SHA256: hashOf("bob-key")},
	}
	if !reflect.DeepEqual(p.Identity.ResolvedAPIKeys, want) {
		t.Fatalf("keys %+v, want %+v", p.Identity.ResolvedAPIKeys, want)
	}
	if len(p.Identity.APIKeys) != 1 || p.Identity.APIKeysFile != "keys/users.yaml" {
		t.Errorf("the policy as written changed: %+v", p.Identity)
	}
}

func TestAPIKeysFileEmptyRevokesAll(t *testing.T) {
	for name, content := range map[string]string{"empty": "", "null": "~\n", "empty list": "[]\n"} {
		t.Run(name, func(t *testing.T) {
			path := policyDir(t, map[string]string{
				"policy.yaml": identityPolicy(t, "identity: {mode: apiKeys, apiKeysFile: keys.yaml}\n"),
				"keys.yaml":   content,
			})
			if p := mustLoad(t, path); len(p.Identity.ResolvedAPIKeys) != 0 {
				t.Fatalf("keys %+v, want none", p.Identity.ResolvedAPIKeys)
			}
		})
	}
}

func TestAPIKeysFileErrors(t *testing.T) {
	h := hashOf("alice-key")
	cases := []struct {
		name, keys string
		parts      []string
	}{
		{"unreadable", "", []string{"cannot read", "no such file"}},
		{"not a list", "user: alice\n", []string{"keys.yaml", "must be a list"}},
		{"bad yaml", "- {user: alice\n", []string{"keys.yaml", "invalid YAML"}},
		{"unknown field", "- {user: alice, sha256: " + h + "}\n- {user: bob, hash: x}\n", []string{"keys.yaml:2: [1].hash: unknown field"}},
		{"bad hash with line", "- {user: alice, sha256: " + h + "}\n\n- {user: bob, sha256: ABC}\n", []string{"keys.yaml:3: [1].sha256: must be 64 lowercase hex"}},
		{"duplicate of inline", "- {user: mallory, sha256: " + hashOf("ops-key") + "}\n", []string{"keys.yaml:1: [0].sha256", "listed again", "identity.apiKeys[0]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{
				"policy.yaml": identityPolicy(t, "identity:\n  mode: apiKeys\n  apiKeysFile: keys.yaml\n"+
					"  apiKeys: [{user: ops, sha256: "+hashOf("ops-key")+"}]\n"),
			}
			if tc.name != "unreadable" {
				files["keys.yaml"] = tc.keys
			}
			errs := loadErrors(t, policyDir(t, files))
			if !hasError(errs, "identity.apiKeysFile", tc.parts...) {
				t.Fatalf("errors %v, want identity.apiKeysFile with %q", errs, tc.parts)
			}
			if errs[0].Line != 4 {
				t.Errorf("line %d, want 4 (the apiKeysFile line)", errs[0].Line)
			}
		})
	}
}

func TestAPIKeysModeNeedsKeys(t *testing.T) {
	errs := parseErrors(t, identityPolicy(t, "identity: {mode: apiKeys}\n"))
	if !hasError(errs, "identity", "needs apiKeys, apiKeysFile") {
		t.Fatalf("errors %v", errs)
	}
}

func TestModeSettingsOnlyWithTheirMode(t *testing.T) {
	src := identityPolicy(t, "identity:\n  apiKeys: [{user: a, sha256: "+hashOf("a")+"}]\n  apiKeysFile: keys.yaml\n  jwt: {issuer: x}\n")
	errs := parseErrors(t, src)
	for _, path := range []string{"identity.apiKeys", "identity.apiKeysFile", "identity.jwt"} {
		if !hasError(errs, path, "only allowed when identity.mode is") {
			t.Errorf("no %s error in %v", path, errs)
		}
	}
	// The keys file of another mode is not even opened.
	if hasError(errs, "identity.apiKeysFile", "cannot read") {
		t.Errorf("keys file read in header mode: %v", errs)
	}
}

func TestIdentityHeaderMustNotBeACredentialHeader(t *testing.T) {
	for _, header := range []string{"Authorization", "x-api-key"} {
		src := identityPolicy(t, "identity: {mode: apiKeys, header: "+header+", apiKeys: [{user: a, sha256: "+hashOf("a")+"}]}\n")
		if errs := parseErrors(t, src); !hasError(errs, "identity.header", "gateway removes it") {
			t.Errorf("%s: errors %v", header, errs)
		}
	}
	// In header mode any header may name the user.
	mustParse(t, identityPolicy(t, "identity: {header: x-api-key}\n"))
}

func TestJWTWithLocalKeySet(t *testing.T) {
	path := policyDir(t, map[string]string{
		"policy.yaml": identityPolicy(t, "identity:\n  mode: jwt\n  jwt:\n    issuer: https://auth.example.com\n"+
			"    audiences: [tollgate]\n    jwksFile: jwks.json\n"),
		"jwks.json": publicJWKS,
	})
	p := mustLoad(t, path)
	j := p.Identity.JWT
	if j.JWKS != publicJWKS {
		t.Errorf("JWKS not carried in the policy: %q", j.JWKS)
	}
	if j.UserClaim != "sub" || j.JWKSCacheDuration.Duration != 10*time.Minute {
		t.Errorf("defaults: userClaim %q, cache %s; want sub, 10m", j.UserClaim, j.JWKSCacheDuration)
	}
	if j.Issuer != "https://auth.example.com" || !reflect.DeepEqual(j.Audiences, []string{"tollgate"}) {
		t.Errorf("jwt %+v", j)
	}
}

func TestJWTWithRemoteKeySet(t *testing.T) {
	src := identityPolicy(t, "identity:\n  mode: jwt\n  jwt:\n    issuer: https://auth.example.com\n"+
		"    jwksURI: https://auth.example.com/.well-known/jwks.json\n    jwksCacheDuration: 1h\n    userClaim: email\n")
	j := mustParse(t, src).Identity.JWT
	if j.JWKSURI != "https://auth.example.com/.well-known/jwks.json" || j.JWKSCacheDuration.Duration != time.Hour || j.UserClaim != "email" || j.JWKS != "" {
		t.Fatalf("jwt %+v", j)
	}
}

func TestJWTErrors(t *testing.T) {
	cases := []struct {
		name, jwt, jwks string
		path            string
		parts           []string
	}{
		{"no issuer", "{jwksFile: jwks.json}", publicJWKS, "identity.jwt.issuer", []string{"required"}},
		{"no key set", "{issuer: i}", "", "identity.jwt", []string{"exactly one of jwksFile and jwksURI"}},
		{"both key sets", "{issuer: i, jwksFile: jwks.json, jwksURI: https://a/jwks}", publicJWKS, "identity.jwt", []string{"exactly one"}},
		{"jwks unreadable", "{issuer: i, jwksFile: missing.json}", publicJWKS, "identity.jwt.jwksFile", []string{"cannot read"}},
		{"jwks not json", "{issuer: i, jwksFile: jwks.json}", "keys: []", "identity.jwt.jwksFile", []string{"not a JSON Web Key Set"}},
		{"jwks empty", "{issuer: i, jwksFile: jwks.json}", `{"keys":[]}`, "identity.jwt.jwksFile", []string{"at least one key"}},
		{"jwks without kty", "{issuer: i, jwksFile: jwks.json}", `{"keys":[{"n":"x"}]}`, "identity.jwt.jwksFile", []string{`"kty"`}},
		{"jwks private key", "{issuer: i, jwksFile: jwks.json}", `{"keys":[{"kty":"RSA","n":"x","e":"AQAB","d":"secret"}]}`, "identity.jwt.jwksFile", []string{"secret key material"}},
		{"jwks hmac secret", "{issuer: i, jwksFile: jwks.json}", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, "identity.jwt.jwksFile", []string{"secret key material"}},
		{"uri scheme", "{issuer: i, jwksURI: ftp://a/jwks}", "", "identity.jwt.jwksURI", []string{"scheme"}},
		{"uri host", "{issuer: i, jwksURI: https:///jwks}", "", "identity.jwt.jwksURI", []string{"host"}},
		{"cache zero", "{issuer: i, jwksURI: https://a/jwks, jwksCacheDuration: 0s}", "", "identity.jwt.jwksCacheDuration", []string{"greater than 0"}},
		{"empty claim", "{issuer: i, jwksURI: https://a/jwks, userClaim: \"\"}", "", "identity.jwt.userClaim", []string{"required"}},
		{"bad audience", "{issuer: i, jwksURI: https://a/jwks, audiences: [\"a b\"]}", "", "identity.jwt.audiences[0]", []string{"printable"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"policy.yaml": identityPolicy(t, "identity:\n  mode: jwt\n  jwt: "+tc.jwt+"\n")}
			if tc.jwks != "" {
				files["jwks.json"] = tc.jwks
			}
			errs := loadErrors(t, policyDir(t, files))
			if !hasError(errs, tc.path, tc.parts...) {
				t.Fatalf("errors %v, want %s with %q", errs, tc.path, tc.parts)
			}
		})
	}
}

func TestReferencedFiles(t *testing.T) {
	src := `identity:
  mode: apiKeys
  apiKeysFile: keys.yaml
  jwt: {jwksFile: /etc/tollgate/jwks.json}
backends:
  - {name: a, url: "http://a", apiKey: {file: secrets/a}}
  - {name: b, url: "http://b", apiKey: "${B_KEY}"}
  - {name: c, url: "http://c", apiKey: {env: C}}
`
	got := referencedFiles([]byte(src))
	want := []string{"keys.yaml", "/etc/tollgate/jwks.json", "secrets/a"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("referencedFiles = %q, want %q", got, want)
	}
	for _, junk := range []string{"", "not: [valid", "- a list", "identity: 7"} {
		if got := referencedFiles([]byte(junk)); len(got) != 0 {
			t.Errorf("referencedFiles(%q) = %q, want none", junk, got)
		}
	}
}

func TestWatchRedeliversWhenKeysFileChanges(t *testing.T) {
	for _, keysPath := range []string{"keys.yaml", "keys/keys.yaml"} {
		t.Run(keysPath, func(t *testing.T) {
			path := policyDir(t, map[string]string{
				"policy.yaml": "identity: {mode: apiKeys, apiKeysFile: " + keysPath + "}\n",
				keysPath:      "- {user: alice, sha256: " + hashOf("a") + "}\n",
			})
			keys := filepath.Join(filepath.Dir(path), keysPath)
			r := startWatch(t, path, testDebounce)
			first := r.next(t)

			// Written by rename, as editors save: an in-place write under load can be read
			// half done (truncated), which is a change of its own.
			replaceFile(t, keys, "- {user: bob, sha256: "+hashOf("b")+"}\n")
			if got := r.next(t); got != first {
				t.Fatalf("redelivered %q, want the unchanged policy %q", got, first)
			}
			// Rewriting the same keys changes nothing.
			replaceFile(t, keys, "- {user: bob, sha256: "+hashOf("b")+"}\n")
			r.skipUndelivered(t)
			// Removing the file is a change too: the next load reports it.
			if err := os.Remove(keys); err != nil {
				t.Fatal(err)
			}
			r.next(t)
		})
	}
}

func TestWatchFollowsReferenceChanges(t *testing.T) {
	path := policyDir(t, map[string]string{
		"policy.yaml":   "identity: {mode: apiKeys, apiKeysFile: old/keys.yaml}\n",
		"old/keys.yaml": "[]\n",
		"new/keys.yaml": "[]\n",
	})
	dir := filepath.Dir(path)
	r := startWatch(t, path, testDebounce)
	r.next(t)
	writeFile(t, path, "identity: {mode: apiKeys, apiKeysFile: new/keys.yaml}\n")
	r.next(t)
	writeFile(t, filepath.Join(dir, "new", "keys.yaml"), "- {user: bob, sha256: "+hashOf("b")+"}\n")
	r.next(t)
	// The old file no longer matters: its directory is not watched any more, and an event for
	// a file the policy does not depend on is ignored (the helper sees it reported as such).
	writeFile(t, filepath.Join(dir, "old", "keys.yaml"), "- {user: eve, sha256: "+hashOf("e")+"}\n")
	writeFile(t, filepath.Join(dir, "unrelated.txt"), "x")
	r.skipUndelivered(t)
}

// replaceFile writes content to a temporary file next to path and renames it over path, so a
// reader sees the old content or the new, never a file half written.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
