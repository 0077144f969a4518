package extproc

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"
)

// CostKind says how a cost is computed from a response's token usage.
type CostKind int

const (
	// CostInput is the prompt (input) token count.
	CostInput CostKind = iota + 1
	// CostOutput is the completion (output) token count.
	CostOutput
	// CostTotal is the total token count.
	CostTotal
	// CostCEL evaluates Cost.Program over the usage.
	CostCEL
	// CostRequests is 1 per request.
	CostRequests
	// CostPrice is the request's price in Config.Money's units, from Config.Prices.
	CostPrice
)

// String names the kind for logs.
func (k CostKind) String() string {
	switch k {
	case CostInput:
		return "input"
	case CostOutput:
		return "output"
	case CostTotal:
		return "total"
	case CostCEL:
		return "cel"
	case CostRequests:
		return "requests"
	case CostPrice:
		return "price"
	default:
		return "unknown"
	}
}

// Cost is one number published as dynamic metadata at the end of a successful response.
type Cost struct {
	// Name is the dynamic metadata key the cost is published under.
	Name string
	// Kind says which usage number the cost is, or that Eval computes it.
	Kind CostKind
	// Expression is a CostCEL cost's source, for logs and the rendered configuration.
	Expression string
	// Eval computes a CostCEL cost. The result must be a non-negative integer; an error leaves
	// the cost uncharged, logged and counted.
	Eval func(ctx context.Context, in CostVars) (int64, error)
}

// CostVars is what a CostCEL cost is computed from: a response's token usage, its model and
// the backend that served it. It has the shape of the policy's CEL variables (policies.CostVars),
// so the two convert into each other.
type CostVars struct {
	InputTokens, OutputTokens, TotalTokens, CachedInputTokens, ReasoningTokens int64
	Model, Backend                                                             string
}

// IdentityMode says how the server learns a request's user.
type IdentityMode int

const (
	// IdentityFromHeader trusts the identity header as the client sent it (the zero value).
	IdentityFromHeader IdentityMode = iota
	// IdentityFromAPIKey looks the client's API key up in Config.APIKeys.
	IdentityFromAPIKey
	// IdentityFromJWT reads Config.JWTClaim from the token payload Envoy's jwt_authn filter
	// verified and forwarded as metadata.
	IdentityFromJWT
)

// String names the mode for logs.
func (m IdentityMode) String() string {
	switch m {
	case IdentityFromHeader:
		return "header"
	case IdentityFromAPIKey:
		return "apiKeys"
	case IdentityFromJWT:
		return "jwt"
	default:
		return "unknown"
	}
}

// KeyHash is the SHA-256 of an API key. The server keeps hashes only, never keys.
type KeyHash [sha256.Size]byte

// HashKey returns the hash of an API key as the server looks it up.
func HashKey(key string) KeyHash { return sha256.Sum256([]byte(key)) }

// redacted is how a Credential prints.
const redacted = "[redacted]"

// Credential is a secret the server sends upstream, such as a backend's API key. Every way of
// printing it (fmt verbs, slog, JSON) shows "[redacted]"; convert it to string only where it
// is sent.
type Credential string

// String hides the value.
func (Credential) String() string { return redacted }

// GoString hides the value from %#v.
func (Credential) GoString() string { return redacted }

// Format hides the value from every fmt verb, including inside maps and structs.
func (Credential) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// LogValue hides the value from slog.
func (Credential) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON hides the value from JSON.
func (Credential) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// Config is what the server needs from the policy. The server never modifies a Config and
// expects the caller not to modify one after handing it over: Update swaps whole values.
type Config struct {
	// ModelHeader is the routing header set from the request body's model.
	ModelHeader string
	// IdentityHeader carries the user id upstream. In IdentityFromHeader mode the client's
	// value is the user and a request without it is answered 401; in the other modes the
	// server sets it, overwriting whatever the client sent.
	IdentityHeader string
	// Identity says how the user is known.
	Identity IdentityMode
	// APIKeys maps the hash of every accepted API key to its user (IdentityFromAPIKey).
	APIKeys map[KeyHash]string
	// JWTClaim is the top-level claim of a verified token that names the user
	// (IdentityFromJWT).
	JWTClaim string
	// JWTTeamClaim, when set, is the claim that names the caller's team (IdentityFromJWT).
	JWTTeamClaim string
	// APIKeyTeams maps the hash of an API key to its team, for keys that have one.
	APIKeyTeams map[KeyHash]string
	// TeamHeader carries the caller's team. In IdentityFromHeader mode the client's value is
	// the team; in the other modes the server sets it, or removes it when there is none.
	TeamHeader string
	// BackendKeys maps a backend name to the API key sent to it as
	// "authorization: Bearer <key>" once a request's model, and so its backend, is known.
	// Backends without a key get the request's own authorization header (or none).
	BackendKeys map[string]Credential
	// Models maps each known model name to its backend name. It bounds the model label of
	// metrics and feeds the CEL variable "backend".
	Models map[string]string
	// Costs are published, by name, in the dynamic metadata of every successful response.
	Costs []Cost
	// UserLabel labels token usage metrics with the user id. Off by default: every distinct
	// user becomes a new time series.
	UserLabel bool
	// MaxRequestBytes bounds a request body; larger bodies get 413. Envoy enforces its own
	// buffer limit too; this check keeps the answer a clean 413 when the two disagree. Zero
	// leaves the bound to Envoy.
	MaxRequestBytes int64
	// EnvoyReadsStreams says Envoy reads the usage of streams of the APIs it knows
	// (llmapi.Format.EnvoyReadsStreamUsage): such a request is marked with
	// envoy.HeaderStreamUsage, and its usage arrives with the response trailers.
	EnvoyReadsStreams bool
	// MaxResponseBytes bounds how much of a buffered (JSON) response is parsed for usage.
	// Default DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// MaxEventBytes bounds one server-sent event of a streamed response. Zero: the stream
	// parser's own default.
	MaxEventBytes int
	// RateLimitAddress is the ratelimit service (host:port) that finished requests are charged
	// to; empty sends no charges.
	RateLimitAddress string
	// RateLimitDomain is the domain of the charged descriptors.
	RateLimitDomain string
	// Quotas lists, by model, the counters a request for that model is checked against before
	// it goes upstream and charged to when it ends: the model's own quotas and those of every
	// model.
	Quotas map[string][]Quota
	// Prices are the models' prices; a model without prices costs no money (and money quotas
	// never cover it).
	Prices map[string]Price
	// Money says how money quotas count.
	Money Money
	// MaxTokensPerRequest is, by user, the most output one request may ask for (the user's
	// tier's ceiling); quotas may set lower ones.
	MaxTokensPerRequest map[string]int64
	// DefaultMaxOutputTokens is the most output a request that names no ceiling of its own is
	// taken to produce: admission reserves it on the request's quotas.
	DefaultMaxOutputTokens int64
	// MaxConcurrentRequests caps the requests a user has in flight at once on this server, by
	// user; DefaultMaxConcurrentRequests applies to users not listed. 0: no cap.
	MaxConcurrentRequests        map[string]int
	DefaultMaxConcurrentRequests int
	// QuotaCheckTimeout bounds one quota check. Default DefaultQuotaCheckTimeout.
	QuotaCheckTimeout time.Duration
	// QuotaFailOpen admits a request whose quota check failed (the ratelimit service did not
	// answer in time); otherwise it is answered 503.
	QuotaFailOpen bool
	// CheckUserID says why an id cannot be a user (the policy's rule), or nil. Every mode's
	// id passes it before the request goes on; a failing one is answered 400. Default: valid
	// UTF-8 of 1 to DefaultMaxUserIDBytes bytes, the least the ratelimit service needs.
	CheckUserID func(string) error
}

// Defaults for zero Config fields. Every other field comes from the policy, whose defaults
// are the policy's own.
const (
	// DefaultMaxResponseBytes is well above any usage-bearing JSON answer; a larger one is
	// charged an estimate rather than held in memory.
	DefaultMaxResponseBytes = 16 << 20
	// DefaultMaxUserIDBytes is the longest user id the fallback check accepts.
	DefaultMaxUserIDBytes = 256
)

// withDefaults returns a copy of cfg with zero fields filled in and header names lowercased,
// since Envoy hands headers to ext_proc with lowercase keys.
func withDefaults(cfg *Config) *Config {
	out := Config{}
	if cfg != nil {
		out = *cfg
	}
	out.ModelHeader = strings.ToLower(strings.TrimSpace(out.ModelHeader))
	out.IdentityHeader = strings.ToLower(strings.TrimSpace(out.IdentityHeader))
	out.TeamHeader = strings.ToLower(strings.TrimSpace(out.TeamHeader))
	out.JWTClaim = strings.TrimSpace(out.JWTClaim)
	if out.MaxResponseBytes <= 0 {
		out.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if out.CheckUserID == nil {
		out.CheckUserID = minimalUserID
	}
	return &out
}

// minimalUserID accepts what the ratelimit service can take as a descriptor value.
func minimalUserID(s string) error {
	switch {
	case s == "" || len(s) > DefaultMaxUserIDBytes:
		return fmt.Errorf("it must be 1 to %d bytes", DefaultMaxUserIDBytes)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	}
	return nil
}

// concurrencyCap is the most requests user may have in flight at once; 0: no cap.
func (c *Config) concurrencyCap(user string) int {
	if n, ok := c.MaxConcurrentRequests[user]; ok {
		return n
	}
	return c.DefaultMaxConcurrentRequests
}

// cost returns the cost named name.
func (c *Config) cost(name string) (Cost, bool) {
	for _, cost := range c.Costs {
		if cost.Name == name {
			return cost, true
		}
	}
	return Cost{}, false
}

// modelLabel bounds metric cardinality: a model the policy does not know is "_OTHER".
func (c *Config) modelLabel(model string) string {
	if _, ok := c.Models[model]; ok {
		return model
	}
	return otherLabel
}
