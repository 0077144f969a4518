//go:build e2e

package e2e

import (
	"bufio"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// The identity tests run the gateway in API key and JWT identity modes and check that the
// gateway alone decides who pays: a client's own identity header never counts, unidentified
// requests are refused before the ratelimit service hears of them, and credentials meant for
// the gateway never reach the backend.

// apiKeysPolicy gives every user 50 tokens per hour on qwen3, with users known by API key.
const apiKeysPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity:
  mode: apiKeys
  apiKeysFile: keys.yaml
backends:
  - {name: sim, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 50, per: hour}
`

const (
	aliceAPIKey = "tg-e2e-alice-6f1c0a9e4b7d2c8f3a5e"
	bobAPIKey   = "tg-e2e-bob-0d9e8c7b6a5f4e3d2c1b"
	carolAPIKey = "tg-e2e-carol-11aa22bb33cc44dd55ee"
)

func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keysFile is an apiKeysFile listing user → key.
func keysFile(keys map[string]string) string {
	var b strings.Builder
	for user, key := range keys {
		fmt.Fprintf(&b, "- {user: %s, sha256: %s}\n", user, keyHash(key))
	}
	return b.String()
}

// identityStack is quotaStack with extra files next to the policy; it returns Redis's address
// so tests can see which counters exist.
func identityStack(t testing.TB, policy string, files map[string]string, simArgs ...string) (*stack, string) {
	t.Helper()
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim", simArgs...)})
	for name, content := range files {
		writeFile(t, filepath.Join(s.dir, name), content)
	}
	s.writePolicy(t, policy)
	s.startTollgate(t)
	redisAddr := s.startRedis(t)
	s.startRateLimit(t, redisAddr)
	s.startEnvoy(t)
	return s, redisAddr
}

// chatAs sends one qwen3 chat request with the given headers and, when it is admitted, waits
// until Envoy's charge for it has been answered, as sendN does.
func chatAs(t testing.TB, s *stack, headers map[string]string) response {
	t.Helper()
	before := s.rateLimitCalls(t)
	r := mustDo(t, "POST", s.url("/v1/chat/completions"), headers, chatBody("qwen3"))
	if r.status == 200 {
		s.awaitRateLimitCalls(t, before+2)
	}
	return r
}

// statusesAs sends n requests as chatAs does and returns their statuses.
func statusesAs(t testing.TB, s *stack, n int, headers map[string]string) string {
	t.Helper()
	var out []int
	for range n {
		out = append(out, chatAs(t, s, headers).status)
	}
	return fmt.Sprint(out)
}

// wantAuthError checks a JSON authentication error with the given status and code.
func wantAuthError(t testing.TB, r response, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("content-type %q, want JSON", ct)
	}
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok || e["message"] == "" {
		t.Fatalf("body %s is not an OpenAI-style error", r.body)
	}
	if code != "" && e["code"] != code {
		t.Errorf("error code %v, want %s: %s", e["code"], code, r.body)
	}
}

func TestAPIKeyIdentity(t *testing.T) {
	s, redisAddr := identityStack(t, apiKeysPolicy, map[string]string{
		"keys.yaml": keysFile(map[string]string{"alice": aliceAPIKey, "bob": bobAPIKey}),
	})

	// Unknown and missing keys: 401 before the quota check, so no counter is created.
	keysBefore := countRedisKeys(t, redisAddr, "*")
	callsBefore := s.rateLimitCalls(t)
	for name, c := range map[string]struct {
		headers map[string]string
		code    string
	}{
		"random bearer key":    {map[string]string{"authorization": "Bearer tg-guess-" + randomHex(t, 8), "x-user-id": "alice"}, "invalid_api_key"},
		"random x-api-key":     {map[string]string{"x-api-key": "tg-guess-" + randomHex(t, 8)}, "invalid_api_key"},
		"no key":               {map[string]string{"x-user-id": "alice"}, "missing_api_key"},
		"key of another realm": {map[string]string{"authorization": "Basic YWxpY2U6cGFzcw=="}, "missing_api_key"},
	} {
		t.Run(name, func(t *testing.T) {
			r := mustDo(t, "POST", s.url("/v1/chat/completions"), c.headers, chatBody("qwen3"))
			wantAuthError(t, r, 401, c.code)
			if e := r.json(t)["error"].(map[string]any); e["type"] != "authentication_error" {
				t.Errorf("error type %v", e["type"])
			}
		})
	}
	if got := countRedisKeys(t, redisAddr, "*"); got != keysBefore {
		t.Errorf("refused requests created %d Redis keys", got-keysBefore)
	}
	if got := s.rateLimitCalls(t); got != callsBefore {
		t.Errorf("refused requests made %d ratelimit calls", got-callsBefore)
	}

	// Alice's key, with a spoofed identity header naming bob on every request: alice pays.
	spoof := map[string]string{"authorization": "Bearer " + aliceAPIKey, "x-user-id": "bob",
		"x-llmsim-echo-headers": "x-user-id"}
	r := chatAs(t, s, spoof)
	if r.status != 200 {
		t.Fatalf("alice's first request: %d %s", r.status, r.body)
	}
	if got := r.header.Get("x-llmsim-echo-x-user-id"); got != "alice" {
		t.Errorf("backend saw x-user-id %q, want alice (set by the gateway)", got)
	}
	if r.header.Get("x-llmsim-saw-authorization") != "false" {
		t.Errorf("backend received the client's Authorization header")
	}
	if r.header.Get("x-ratelimit-remaining") == "" {
		t.Errorf("no x-ratelimit-remaining on an admitted request")
	}
	if got := statusesAs(t, s, 5, spoof); got != "[200 200 200 200 429]" {
		t.Fatalf("alice's requests 2-6: %s, want [200 200 200 200 429] (12 tokens each against 50)", got)
	}
	if n := countRedisKeys(t, redisAddr, "*user_bob_*"); n != 0 {
		t.Errorf("%d counters for bob after alice's spoofed requests", n)
	}
	if n := countRedisKeys(t, redisAddr, "*user_alice_*"); n != 1 {
		t.Errorf("%d counters for alice, want 1", n)
	}

	// Bob's own key, sent as x-api-key: bob's full quota is untouched, and the key is stripped.
	r = chatAs(t, s, map[string]string{"x-api-key": bobAPIKey})
	if r.status != 200 {
		t.Fatalf("bob: %d %s", r.status, r.body)
	}
	if r.header.Get("x-llmsim-saw-api-key") != "false" {
		t.Errorf("backend received the client's x-api-key header")
	}

	// Editing the keys file applies without a restart: carol gets in, alice is revoked.
	writeFile(t, filepath.Join(s.dir, "keys.yaml"), keysFile(map[string]string{"bob": bobAPIKey, "carol": carolAPIKey}))
	testutil.Eventually(t, 20*time.Second, "carol's new key accepted", func() error {
		if r := chatAs(t, s, map[string]string{"authorization": "Bearer " + carolAPIKey}); r.status != 200 {
			return fmt.Errorf("status %d", r.status)
		}
		return nil
	})
	r = mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"authorization": "Bearer " + aliceAPIKey}, chatBody("qwen3"))
	wantAuthError(t, r, 401, "invalid_api_key")
}

// jwtIssuer signs test tokens with an RSA key whose public half the policy trusts.
type jwtIssuer struct {
	key *rsa.PrivateKey
	kid string
}

func newJWTIssuer(t testing.TB, kid string) *jwtIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{key: key, kid: kid}
}

// jwks is the public key set.
func (i *jwtIssuer) jwks(t testing.TB) string {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	set := map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": i.kid, "alg": "RS256", "use": "sig",
		"n": b64(i.key.N.Bytes()), "e": b64(big.NewInt(int64(i.key.E)).Bytes()),
	}}}
	out, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// token signs claims as an RS256 JWT.
func (i *jwtIssuer) token(t testing.TB, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signingInput := enc(map[string]string{"alg": "RS256", "typ": "JWT", "kid": i.kid}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(signingInput))
	sig, err := rsa.SignPKCS1v15(rand.Reader, i.key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(sig)
}

const jwtTestIssuer = "https://issuer.tollgate.test"

// claims are valid claims for sub, changed by edits.
func claims(sub string, edits map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": jwtTestIssuer, "aud": "tollgate", "sub": sub,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range edits {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

const jwtPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}, timeout: 1s}
identity:
  mode: jwt
  jwt:
    issuer: ` + jwtTestIssuer + `
    audiences: [tollgate]
    jwksFile: jwks.json
backends:
  - {name: sim, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 50, per: hour}
`

func TestJWTIdentity(t *testing.T) {
	issuer := newJWTIssuer(t, "e2e-key")
	s, redisAddr := identityStack(t, jwtPolicy, map[string]string{"jwks.json": issuer.jwks(t)})
	bearer := func(token string) map[string]string {
		return map[string]string{"authorization": "Bearer " + token, "x-llmsim-echo-headers": "x-user-id"}
	}

	// Refused tokens: JSON errors, no ratelimit calls, no counters.
	forger := newJWTIssuer(t, "e2e-key")
	callsBefore := s.rateLimitCalls(t)
	refused := []struct {
		name    string
		headers map[string]string
		status  int
		code    string
	}{
		{"missing", map[string]string{"x-user-id": "alice"}, 401, "missing_token"},
		{"expired", bearer(issuer.token(t, claims("mallory", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}))), 401, "invalid_token"},
		{"wrong issuer", bearer(issuer.token(t, claims("mallory", map[string]any{"iss": "https://evil.test"}))), 401, "invalid_token"},
		{"bad signature", bearer(forger.token(t, claims("mallory", nil))), 401, "invalid_token"},
		{"not a JWT", bearer("tg-e2e-not-a-token"), 401, "invalid_token"},
		{"no expiry", bearer(issuer.token(t, claims("mallory", map[string]any{"exp": nil}))), 401, "invalid_token"},
		{"wrong audience", bearer(issuer.token(t, claims("mallory", map[string]any{"aud": "someone-else"}))), 403, "invalid_audience"},
		{"no user claim", bearer(issuer.token(t, claims("mallory", map[string]any{"sub": nil}))), 401, "invalid_token"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			r := mustDo(t, "POST", s.url("/v1/chat/completions"), c.headers, chatBody("qwen3"))
			wantAuthError(t, r, c.status, c.code)
			t.Logf("%s: %d %s", c.name, r.status, r.body)
		})
	}
	if got := s.rateLimitCalls(t); got != callsBefore {
		t.Errorf("refused tokens made %d ratelimit calls", got-callsBefore)
	}
	if n := countRedisKeys(t, redisAddr, "*"); n != 0 {
		t.Errorf("refused tokens created %d Redis keys", n)
	}

	// A valid token: charged to its sub, whatever x-user-id the client sends.
	headers := bearer(issuer.token(t, claims("alice", nil)))
	headers["x-user-id"] = "bob"
	r := chatAs(t, s, headers)
	if r.status != 200 {
		t.Fatalf("valid token: %d %s", r.status, r.body)
	}
	if got := r.header.Get("x-llmsim-echo-x-user-id"); got != "alice" {
		t.Errorf("backend saw x-user-id %q, want alice (the token's sub)", got)
	}
	if r.header.Get("x-llmsim-saw-authorization") != "false" {
		t.Errorf("backend received the client's token")
	}
	if got := statusesAs(t, s, 5, headers); got != "[200 200 200 200 429]" {
		t.Fatalf("alice's requests 2-6: %s, want [200 200 200 200 429]", got)
	}
	if n := countRedisKeys(t, redisAddr, "*user_bob_*"); n != 0 {
		t.Errorf("%d counters for the spoofed user bob", n)
	}
	if got := chatAs(t, s, bearer(issuer.token(t, claims("bob", nil)))).status; got != 200 {
		t.Errorf("bob's own token: %d", got)
	}
	// The model list needs no token in any identity mode.
	if r := mustDo(t, "GET", s.url("/v1/models"), nil, ""); r.status != 200 {
		t.Errorf("GET /v1/models: %d %s", r.status, r.body)
	}

	// Switching to a remote key set, served over HTTP, applies live: a token of the key only
	// the remote set holds is accepted once Envoy fetched it, and the old key is refused.
	rotated := newJWTIssuer(t, "e2e-rotated")
	var fetches atomic.Int64
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("content-type", "application/json")
		_, _ = w.Write([]byte(rotated.jwks(t)))
	}))
	t.Cleanup(jwks.Close)
	s.writePolicy(t, strings.Replace(jwtPolicy, "jwksFile: jwks.json", "jwksURI: "+jwks.URL+"/jwks.json", 1))
	carol := bearer(rotated.token(t, claims("carol", nil)))
	testutil.Eventually(t, 20*time.Second, "a token verified against the remote key set", func() error {
		if got := chatAs(t, s, carol).status; got != 200 {
			return fmt.Errorf("status %d after %d key set fetches", got, fetches.Load())
		}
		return nil
	})
	if fetches.Load() == 0 {
		t.Errorf("the remote key set was never fetched")
	}

	r = mustDo(t, "POST", s.url("/v1/chat/completions"), bearer(issuer.token(t, claims("carol", nil))), chatBody("qwen3"))
	wantAuthError(t, r, 401, "")
}

// randomHex returns n random bytes in hex.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// countRedisKeys counts the Redis keys matching pattern. It speaks just enough of the Redis
// protocol for one EVAL whose reply is an integer.
func countRedisKeys(t testing.TB, addr, pattern string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	args := []string{"EVAL", "return #redis.call('KEYS', ARGV[1])", "0", pattern}
	var req strings.Builder
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), ":"))
	if err != nil {
		t.Fatalf("redis answered %q", line)
	}
	return n
}
