package extproc

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

const (
	aliceKey = "tg-alice-0123456789abcdef"
	bobKey   = "tg-bob-fedcba9876543210"
	// upstreamKey is the backend's own key; it must reach the backend and nothing else.
	upstreamKey = "sk-canary-upstream-4242"
)

func apiKeyConfig(t *testing.T) *Config {
	t.Helper()
	cfg := testConfig(t)
	cfg.Identity = IdentityFromAPIKey
	cfg.APIKeys = map[KeyHash]string{HashKey(aliceKey): "alice", HashKey(bobKey): "bob"}
	return cfg
}

// apiKeyHeaders are a chat request's headers without any identity, plus extra.
func apiKeyHeaders(n int, extra ...string) *extprocv3.ProcessingRequest {
	kv := append([]string{
		":method", "POST", ":path", "/v1/chat/completions", ":authority", "gateway",
		"content-type", "application/json", "content-length", fmt.Sprint(n),
	}, extra...)
	return requestHeaders(false, kv...)
}

// headerMutation returns the mutation of a request headers or body answer.
func headerMutation(t *testing.T, resp *extprocv3.ProcessingResponse) *extprocv3.HeaderMutation {
	t.Helper()
	switch {
	case resp.GetRequestHeaders() != nil:
		return resp.GetRequestHeaders().GetResponse().GetHeaderMutation()
	case resp.GetRequestBody() != nil:
		return resp.GetRequestBody().GetResponse().GetHeaderMutation()
	}
	t.Fatalf("want a request headers or body answer, got %v", resp)
	return nil
}

// setValue returns the value a mutation sets a header to, requiring overwrite semantics.
func setValue(t *testing.T, m *extprocv3.HeaderMutation, name string) (string, bool) {
	t.Helper()
	h, ok := setHeaders(t, m)[name]
	if !ok {
		return "", false
	}
	if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Fatalf("%s is set with %v, want OVERWRITE_IF_EXISTS_OR_ADD", name, h.GetAppendAction())
	}
	return string(h.GetHeader().GetRawValue()), true
}

func TestAPIKeyIdentifiesUser(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		user    string
	}{
		{"bearer", []string{"authorization", "Bearer " + aliceKey}, "alice"},
		{"bearer scheme in any case", []string{"authorization", "bearer  " + bobKey}, "bob"},
		{"x-api-key", []string{"x-api-key", bobKey}, "bob"},
		{"both, the same key", []string{"authorization", "Bearer " + aliceKey, "x-api-key", aliceKey}, "alice"},
		// The client's own identity header never counts: the key decides.
		{"spoofed identity header", []string{"authorization", "Bearer " + aliceKey, policies.DefaultIdentityHeader, "victim"}, "alice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, apiKeyConfig(t))
			c := h.open(t)
			resp := c.send(apiKeyHeaders(len(chatBody), tt.headers...))
			m := headerMutation(t, resp)
			if got, ok := setValue(t, m, policies.DefaultIdentityHeader); !ok || got != tt.user {
				t.Fatalf("identity header set to %q (set: %v), want %q", got, ok, tt.user)
			}
			for _, removed := range []string{"authorization", "x-api-key"} {
				if !slices.Contains(m.GetRemoveHeaders(), removed) {
					t.Errorf("%s is not removed: %v", removed, m.GetRemoveHeaders())
				}
			}
			if _, ok := setValue(t, m, "accept-encoding"); !ok {
				t.Errorf("accept-encoding no longer forced")
			}
			// The request goes on as usual, and its usage is the user's.
			body := c.send(requestBody(chatBody))
			if v, _ := setValue(t, headerMutation(t, body), policies.DefaultModelHeader); v != "qwen3" {
				t.Fatalf("model header %q after authentication", v)
			}
			if strings.Contains(h.logs.String(), aliceKey) || strings.Contains(h.logs.String(), bobKey) {
				t.Errorf("a key reached the log:\n%s", h.logs.String())
			}
		})
	}
}

func TestAPIKeyRejections(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		code    string
	}{
		{"no key", nil, "missing_api_key"},
		{"only an identity header", []string{policies.DefaultIdentityHeader, "alice"}, "missing_api_key"},
		{"empty bearer", []string{"authorization", "Bearer "}, "missing_api_key"},
		{"basic scheme", []string{"authorization", "Basic YWxpY2U6eA=="}, "missing_api_key"},
		{"unknown bearer key", []string{"authorization", "Bearer tg-guess"}, "invalid_api_key"},
		{"unknown x-api-key", []string{"x-api-key", "tg-guess"}, "invalid_api_key"},
		{"known key differently cased", []string{"x-api-key", strings.ToUpper(aliceKey)}, "invalid_api_key"},
		{"two different keys", []string{"authorization", "Bearer " + aliceKey, "x-api-key", bobKey}, "invalid_api_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, apiKeyConfig(t))
			c := h.open(t)
			got := immediate(t, c.send(apiKeyHeaders(len(chatBody), tt.headers...)), 401)
			if got.Error.Type != "authentication_error" || got.Error.Code == nil || *got.Error.Code != tt.code {
				t.Fatalf("error %+v, want authentication_error / %s", got.Error, tt.code)
			}
			if strings.Contains(got.Error.Message, "tg-") {
				t.Errorf("message echoes the key: %q", got.Error.Message)
			}
			c.end()
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeRejected401)); n != 1 {
				t.Errorf("401 outcomes = %v, want 1", n)
			}
		})
	}
}

// jwtMetadata is what Envoy forwards when jwt_authn verified a token with these claims.
func jwtMetadata(t *testing.T, claims map[string]any) *corev3.Metadata {
	t.Helper()
	payload, err := structpb.NewStruct(map[string]any{envoy.JWTPayloadKey: claims})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{envoy.FilterJWTAuthn: payload}}
}

func withMetadata(req *extprocv3.ProcessingRequest, meta *corev3.Metadata) *extprocv3.ProcessingRequest {
	req.MetadataContext = meta
	return req
}

func TestJWTClaimIdentifiesUser(t *testing.T) {
	tests := []struct {
		name   string
		claim  string
		claims map[string]any
		user   string
	}{
		{"sub", "sub", map[string]any{"sub": "alice", "iss": "https://auth.example.com"}, "alice"},
		{"custom claim", "email", map[string]any{"sub": "123", "email": "bob@example.com"}, "bob@example.com"},
		{"numeric claim", "uid", map[string]any{"uid": 4711.0}, "4711"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Identity, cfg.JWTClaim = IdentityFromJWT, tt.claim
			h := newHarness(t, cfg)
			c := h.open(t)
			req := withMetadata(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, "victim"), jwtMetadata(t, tt.claims))
			m := headerMutation(t, c.send(req))
			if got, ok := setValue(t, m, policies.DefaultIdentityHeader); !ok || got != tt.user {
				t.Fatalf("identity header %q (set: %v), want %q", got, ok, tt.user)
			}
			if !slices.Contains(m.GetRemoveHeaders(), "authorization") {
				t.Errorf("authorization not removed: %v", m.GetRemoveHeaders())
			}
		})
	}
}

// TestJWTTeamClaim: with a team claim configured, the token's claim names the team, set
// upstream over whatever the client sent; a token without it belongs to no team (the client's
// team header is removed); a claim that is no string or integer is a token problem.
func TestJWTTeamClaim(t *testing.T) {
	const teamHeader = "x-team-id"
	tests := []struct {
		name   string
		claims map[string]any
		team   string // "" : no team, the header removed
		status int    // 0: admitted
	}{
		{"string claim", map[string]any{"sub": "alice", "grp": "research"}, "research", 0},
		{"numeric claim", map[string]any{"sub": "alice", "grp": 42.0}, "42", 0},
		{"no claim", map[string]any{"sub": "alice"}, "", 0},
		{"list claim", map[string]any{"sub": "alice", "grp": []any{"a", "b"}}, "", 401},
		{"claim with whitespace", map[string]any{"sub": "alice", "grp": "re search"}, "", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Identity, cfg.JWTClaim, cfg.JWTTeamClaim, cfg.TeamHeader = IdentityFromJWT, "sub", "grp", teamHeader
			h := newHarness(t, cfg)
			c := h.open(t)
			req := withMetadata(apiKeyHeaders(len(chatBody), teamHeader, "forged"), jwtMetadata(t, tt.claims))
			resp := c.send(req)
			if tt.status != 0 {
				immediate(t, resp, tt.status)
				return
			}
			m := headerMutation(t, resp)
			got, set := setValue(t, m, teamHeader)
			switch {
			case tt.team != "" && (!set || got != tt.team):
				t.Errorf("team header %q (set: %v), want %q", got, set, tt.team)
			case tt.team == "" && (set || !slices.Contains(m.GetRemoveHeaders(), teamHeader)):
				t.Errorf("team header set to %q or not removed (%v), want it removed", got, m.GetRemoveHeaders())
			}
		})
	}
}

func TestJWTWithoutUsablePayloadIsRejected(t *testing.T) {
	tests := []struct {
		name string
		meta *corev3.Metadata
		code string
	}{
		{"no metadata", nil, "missing_token"},
		{"other namespace", &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"other": {}}}, "missing_token"},
		{"no user claim", jwtMetadata(t, map[string]any{"iss": "x"}), "invalid_token"},
		{"empty user claim", jwtMetadata(t, map[string]any{"sub": ""}), "invalid_token"},
		{"object claim", jwtMetadata(t, map[string]any{"sub": map[string]any{"id": "a"}}), "invalid_token"},
		{"fractional claim", jwtMetadata(t, map[string]any{"sub": 1.5}), "invalid_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Identity = IdentityFromJWT
			h := newHarness(t, cfg)
			// A client-sent identity header is no substitute for a verified token.
			req := withMetadata(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, "alice"), tt.meta)
			got := immediate(t, h.open(t).send(req), 401)
			if got.Error.Code == nil || *got.Error.Code != tt.code {
				t.Fatalf("error %+v, want code %s", got.Error, tt.code)
			}
		})
	}
}

// userIDCases are ids on either side of the user id rule, as a client or a token can present them.
var (
	validUserIDs = []string{"alice", "bob@example.com", "josé", "用户", strings.Repeat("u", 256)}
	// invalidUserIDs map each id to the problem the error message names.
	invalidUserIDs = map[string]string{
		"mallory\xff\xfe":        "not valid UTF-8",
		"\x00":                   "U+0000",
		"a\tb":                   "U+0009",
		"\x7f":                   "U+007F",
		"a\u0085b":               "U+0085",
		"a\u009bb":               "U+009B",
		"a\u200bb":               "U+200B",
		" alice":                 "U+0020",
		"alice ":                 "U+0020",
		strings.Repeat("u", 257): "257 bytes",
	}
)

// wantInvalidUser checks resp is the 400 invalid_user answer, and that it does not repeat the id.
func wantInvalidUser(t *testing.T, h *harness, resp *extprocv3.ProcessingResponse, user, problem string) {
	t.Helper()
	got := immediate(t, resp, 400)
	if got.Error.Type != "invalid_request_error" || got.Error.Code == nil || *got.Error.Code != "invalid_user" {
		t.Fatalf("error %+v, want invalid_request_error / invalid_user", got.Error)
	}
	if !strings.Contains(got.Error.Message, problem) {
		t.Errorf("message %q does not name the problem %q", got.Error.Message, problem)
	}
	if strings.TrimSpace(user) != "" && strings.Contains(got.Error.Message, strings.TrimSpace(user)) {
		t.Errorf("message %q repeats the id", got.Error.Message)
	}
	if d := resp.GetImmediateResponse().GetDetails(); d != "tollgate_invalid_user" {
		t.Errorf("details %q, want tollgate_invalid_user", d)
	}
	if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeRejected400)); n != 1 {
		t.Errorf("400 outcomes = %v, want 1", n)
	}
}

// TestHeaderModeUserIDRule: in header mode the client chooses the id, so the id must pass the
// policy's rule before anything else looks at the request; in particular bytes that are not
// UTF-8 never reach the ratelimit descriptor.
func TestHeaderModeUserIDRule(t *testing.T) {
	for _, user := range validUserIDs {
		t.Run("valid "+user[:min(len(user), 16)], func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			if resp := c.send(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, user)); resp.GetImmediateResponse() != nil {
				t.Fatalf("user %q refused: %v", user, resp.GetImmediateResponse())
			}
			body := c.send(requestBody(chatBody))
			if v, _ := setValue(t, headerMutation(t, body), policies.DefaultModelHeader); v != "qwen3" {
				t.Fatalf("model header %q for user %q", v, user)
			}
		})
	}
	for user, problem := range invalidUserIDs {
		t.Run(fmt.Sprintf("invalid %q", user[:min(len(user), 16)]), func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			resp := c.send(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, user))
			wantInvalidUser(t, h, resp, user, problem)
			if !strings.Contains(immediate(t, resp, 400).Error.Message, "the x-user-id header") {
				t.Errorf("message does not name the header: %+v", immediate(t, resp, 400).Error)
			}
			c.end()
		})
	}
	// A blank header still counts as no header at all.
	h := newHarness(t, testConfig(t))
	got := immediate(t, h.open(t).send(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, "   ")), 401)
	if got.Error.Code == nil || *got.Error.Code != "missing_user" {
		t.Errorf("blank header: %+v, want missing_user", got.Error)
	}
}

// TestJWTClaimUserIDRule: a verified token still has to name a valid id.
func TestJWTClaimUserIDRule(t *testing.T) {
	for _, user := range validUserIDs {
		cfg := testConfig(t)
		cfg.Identity = IdentityFromJWT
		h := newHarness(t, cfg)
		req := withMetadata(apiKeyHeaders(len(chatBody)), jwtMetadata(t, map[string]any{"sub": user}))
		if got, _ := setValue(t, headerMutation(t, h.open(t).send(req)), policies.DefaultIdentityHeader); got != user {
			t.Errorf("identity header %q, want %q", got, user)
		}
	}
	for user, problem := range invalidUserIDs {
		if !utf8.ValidString(user) {
			continue // jwt_authn forwards the payload as a protobuf Struct: its strings are UTF-8
		}
		t.Run(fmt.Sprintf("%q", user[:min(len(user), 16)]), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Identity = IdentityFromJWT
			h := newHarness(t, cfg)
			req := withMetadata(apiKeyHeaders(len(chatBody), policies.DefaultIdentityHeader, "alice"), jwtMetadata(t, map[string]any{"sub": user}))
			resp := h.open(t).send(req)
			wantInvalidUser(t, h, resp, user, problem)
			if !strings.Contains(immediate(t, resp, 400).Error.Message, `"sub" claim`) {
				t.Errorf("message does not name the claim: %+v", immediate(t, resp, 400).Error)
			}
		})
	}
}

// TestAPIKeyUserIDRule: ids from API keys come from the validated policy, but a Config built any
// other way gets the same check rather than trust.
func TestAPIKeyUserIDRule(t *testing.T) {
	cfg := apiKeyConfig(t)
	cfg.APIKeys[HashKey("tg-intl")] = "用户"
	cfg.APIKeys[HashKey("tg-broken")] = "mallory\xff\xfe"
	h := newHarness(t, cfg)
	m := headerMutation(t, h.open(t).send(apiKeyHeaders(len(chatBody), "x-api-key", "tg-intl")))
	if got, _ := setValue(t, m, policies.DefaultIdentityHeader); got != "用户" {
		t.Errorf("identity header %q, want 用户", got)
	}
	resp := h.open(t).send(apiKeyHeaders(len(chatBody), "x-api-key", "tg-broken"))
	wantInvalidUser(t, h, resp, "mallory", "not valid UTF-8")
}

func TestHeaderModeKeepsClientIdentity(t *testing.T) {
	h := newHarness(t, testConfig(t))
	m := headerMutation(t, h.open(t).send(chatHeaders(len(chatBody), "authorization", "Bearer client-own")))
	if _, ok := setValue(t, m, policies.DefaultIdentityHeader); ok {
		t.Errorf("header mode rewrote the identity header")
	}
	// Only the client's model header (the body's model replaces it) and stream usage mark
	// (only the gateway sets it) go; identity stays.
	if fmt.Sprint(m.GetRemoveHeaders()) != "["+policies.DefaultModelHeader+" "+envoy.HeaderStreamUsage+"]" {
		t.Errorf("header mode removed %v", m.GetRemoveHeaders())
	}
}

func backendKeyConfig(t *testing.T, identity IdentityMode) *Config {
	t.Helper()
	cfg := apiKeyConfig(t)
	cfg.Identity = identity
	cfg.Models["free-model"] = "local"
	cfg.BackendKeys = map[string]Credential{"sim": upstreamKey}
	return cfg
}

func TestBackendKeyInjected(t *testing.T) {
	tests := []struct {
		name     string
		identity IdentityMode
		headers  []string
		body     string
		// wantKey: the answer sets authorization to the backend's key.
		wantKey bool
	}{
		{"body model, header mode", IdentityFromHeader, []string{policies.DefaultIdentityHeader, "alice", "authorization", "Bearer client-own"}, chatBody, true},
		{"body model, api key mode", IdentityFromAPIKey, []string{"x-api-key", aliceKey}, chatBody, true},
		{"backend without a key", IdentityFromAPIKey, []string{"x-api-key", aliceKey}, `{"model":"free-model"}`, false},
		{"unknown model", IdentityFromAPIKey, []string{"x-api-key", aliceKey}, `{"model":"nope"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, backendKeyConfig(t, tt.identity))
			c := h.open(t)
			first := headerMutation(t, c.send(apiKeyHeaders(len(tt.body), tt.headers...)))
			if _, ok := setValue(t, first, "authorization"); ok {
				t.Fatalf("key set before the model is known")
			}
			resp := c.send(requestBody(tt.body))
			got, ok := setValue(t, headerMutation(t, resp), "authorization")
			if tt.wantKey && got != "Bearer "+upstreamKey {
				t.Fatalf("authorization = %q (set: %v), want the backend's key", got, ok)
			}
			if !tt.wantKey && ok {
				t.Fatalf("authorization set to %q for a backend without a key", got)
			}
			if slices.Contains(headerMutation(t, resp).GetRemoveHeaders(), "authorization") {
				t.Fatalf("the answer both sets and removes authorization")
			}
		})
	}
}

func TestCredentialNeverPrinted(t *testing.T) {
	cfg := backendKeyConfig(t, IdentityFromAPIKey)
	var logs tgtest.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "keys", cfg.BackendKeys, "key", cfg.BackendKeys["sim"])
	for _, shown := range []string{
		fmt.Sprint(cfg.BackendKeys), fmt.Sprintf("%v %+v %#v %s %q %x", cfg, cfg, cfg.BackendKeys, cfg.BackendKeys["sim"], cfg.BackendKeys["sim"], cfg.BackendKeys["sim"]),
		logs.String(),
	} {
		if strings.Contains(shown, upstreamKey) || strings.Contains(shown, fmt.Sprintf("%x", upstreamKey)) {
			t.Fatalf("key printed: %s", shown)
		}
	}
	if !strings.Contains(logs.String(), redacted) {
		t.Fatalf("log %s does not say the key is redacted", logs.String())
	}
}

// TestHeaderAndBodyModelDisagree: the body names the model that is routed and charged, whatever
// the client's model header says.
func TestHeaderAndBodyModelDisagree(t *testing.T) {
	h := newHarness(t, apiKeyConfig(t))
	c := h.open(t)
	c.send(apiKeyHeaders(len(chatBody), "x-api-key", bobKey, policies.DefaultModelHeader, "gpt-4"))
	body := c.send(requestBody(chatBody))
	if got, _ := setValue(t, headerMutation(t, body), policies.DefaultModelHeader); got != "qwen3" {
		t.Fatalf("routing header %q, want the body's qwen3", got)
	}
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	final := c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	if got := metadataFields(final)["model"]; got != "qwen3" {
		t.Fatalf("charged model %v, want qwen3", got)
	}
}

// BenchmarkAPIKeyRequestHeaders measures identifying a request by API key among 100,000 keys:
// hashing the key and one map lookup, plus building the headers answer.
func BenchmarkAPIKeyRequestHeaders(b *testing.B) {
	cfg := withDefaults(testConfig(b))
	cfg.Identity = IdentityFromAPIKey
	cfg.APIKeys = make(map[KeyHash]string, 100_000)
	for i := range 100_000 {
		cfg.APIKeys[HashKey(fmt.Sprintf("tg-bench-%d", i))] = fmt.Sprintf("user-%d", i)
	}
	metrics := NewMetrics(nil)
	logger := slog.New(slog.DiscardHandler)
	req := apiKeyHeaders(len(chatBody), "authorization", "Bearer tg-bench-4711")
	b.ReportAllocs()
	for b.Loop() {
		ex := newExchange(context.Background(), cfg, logger, metrics, nil, nil)
		if resp := ex.handle(req); resp.GetRequestHeaders() == nil {
			b.Fatal("request refused")
		}
	}
}
