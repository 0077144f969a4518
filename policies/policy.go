// Package policies owns the tollgate policy file: its YAML schema, strict decoding with line
// numbers, defaults, validation that reports every error with its field path, and watching the
// file for edits. It knows nothing about Envoy; translate turns a valid Policy into resources.
package policies

import "time"

// Policy is one tollgate policy file after decoding and defaulting.
//
// Field names in YAML are lowerCamelCase. Every list item is addressed by its name, never its
// position, so reordering the file changes nothing downstream.
type Policy struct {
	// Listener is where Envoy accepts client traffic.
	Listener Listener `yaml:"listener"`
	// Identity says how a request's user is known.
	Identity Identity `yaml:"identity"`
	// ExtProc is where Envoy reaches tollgate's ext_proc server.
	ExtProc ExtProcEndpoint `yaml:"extProc"`
	// RateLimit is where Envoy (to check quotas) and the ext_proc server (to charge them) reach
	// the ratelimit service, and how checks behave when that fails.
	RateLimit RateLimit `yaml:"rateLimit"`
	// Backends are the upstream LLM servers.
	Backends []Backend `yaml:"backends"`
	// Models map a model name (the request body's "model") to a backend.
	Models []Model `yaml:"models"`
	// Costs say what a request costs; quotas spend them.
	Costs []Cost `yaml:"costs"`
	// Quotas are per-user budgets of one cost for one model in one time window.
	Quotas []Quota `yaml:"quotas"`
	// Tiers group users so a quota can give a whole group its own limit.
	Tiers []Tier `yaml:"tiers"`
	// Metrics tunes what the GenAI metrics carry.
	Metrics Metrics `yaml:"metrics"`
	// Currency is what money quotas and model prices are in.
	Currency Currency `yaml:"currency"`
	// UsageLog says where Envoy writes its usage log: one JSON line per request.
	UsageLog UsageLog `yaml:"usageLog"`
}

// UsageLog is Envoy's access log of requests and what they were charged.
type UsageLog struct {
	// Path is the absolute path of the file Envoy appends to; empty: Envoy's standard output.
	Path string `yaml:"path"`
}

// Tier is a named group of users. A user belongs to at most one tier.
type Tier struct {
	Name  string   `yaml:"name"`
	Users []string `yaml:"users"`
	// MaxConcurrentRequests caps the requests each member has in flight at once on one
	// gateway; 0 takes rateLimit.maxConcurrentRequests.
	MaxConcurrentRequests int `yaml:"maxConcurrentRequests"`
	// MaxTokensPerRequest is the most output one request of a member may ask for; 0: no
	// ceiling of the tier's own.
	MaxTokensPerRequest int64 `yaml:"maxTokensPerRequest"`
}

// Metrics settings.
type Metrics struct {
	// UserLabel adds the user id as a label (gen_ai_user_id) to the token usage metric. Off by
	// default: every distinct user becomes a new time series.
	UserLabel bool `yaml:"userLabel"`
}

// Listener is Envoy's client-facing HTTP listener.
type Listener struct {
	// Address to bind. Default 127.0.0.1; set 0.0.0.0 to accept remote clients.
	Address string `yaml:"address"`
	// Port to bind. Default 8080.
	Port int `yaml:"port"`
	// ModelHeader carries the model name chosen from the request body; routes match on it.
	// Default x-ai-eg-model (the seed's header).
	ModelHeader string `yaml:"modelHeader"`
	// MaxRequestBytes bounds a request body. Larger bodies get 413. Default 1 MiB.
	MaxRequestBytes int64 `yaml:"maxRequestBytes"`
	// RequestTimeout bounds a whole upstream request, including long streams. Default 300s.
	RequestTimeout Duration `yaml:"requestTimeout"`
	// MaxConcurrentRequests bounds the requests this gateway has in flight at once, streams
	// included, over all users. One more is refused at once with a JSON 503 and Retry-After
	// instead of queueing. Default 1024.
	MaxConcurrentRequests int `yaml:"maxConcurrentRequests"`
}

// Identity modes.
const (
	// IdentityHeader trusts the identity header as the client sent it. Safe only behind a proxy
	// that authenticates users and sets the header itself.
	IdentityHeader = "header"
	// IdentityAPIKeys identifies users by API keys ("Authorization: Bearer <key>" or
	// "x-api-key: <key>") whose SHA-256 hashes the policy lists.
	IdentityAPIKeys = "apiKeys"
	// IdentityJWT identifies users by a claim of a JSON Web Token that Envoy verifies.
	IdentityJWT = "jwt"
)

// IdentityModes lists the valid identity modes.
func IdentityModes() []string { return []string{IdentityHeader, IdentityAPIKeys, IdentityJWT} }

// Identity says how a request's user is known.
type Identity struct {
	// Mode is header (default), apiKeys or jwt.
	Mode string `yaml:"mode"`
	// Header carries the user id upstream and into the access log. Default x-user-id. In
	// header mode the client's value is the identity; in apiKeys and jwt modes the gateway
	// overwrites it.
	Header string `yaml:"header"`
	// APIKeys are the accepted API keys (apiKeys mode), by hash.
	APIKeys []APIKey `yaml:"apiKeys"`
	// APIKeysFile names a YAML file holding a list shaped like APIKeys, relative to the policy
	// file. It is read on every policy load, and the policy watcher reloads when it changes.
	APIKeysFile string `yaml:"apiKeysFile"`
	// JWT configures jwt mode.
	JWT JWT `yaml:"jwt"`
	// TeamHeader carries the caller's team upstream. In header mode the client's value is the
	// team (trusted like the identity header); in the other modes the gateway sets it from
	// the API key's team or the token's team claim, overwriting whatever the client sent.
	// Default x-team-id.
	TeamHeader string `yaml:"teamHeader"`

	// ResolvedAPIKeys is every accepted key: APIKeys, then those read from APIKeysFile.
	// Parse fills it; it is not written in the policy.
	ResolvedAPIKeys []APIKey `yaml:"-"`
}

// APIKey is one accepted API key. The policy holds only its SHA-256 hash (`tollgate hash-key`
// prints it), so a leaked policy leaks no key.
type APIKey struct {
	// User is the user id requests with this key are accounted to. A user may have several keys,
	// so a key can be rotated without downtime.
	User string `yaml:"user"`
	// SHA256 is the hex SHA-256 of the key: 64 lowercase hex digits.
	SHA256 string `yaml:"sha256"`
	// Team is the team the key's requests are accounted to in team quotas; optional.
	Team string `yaml:"team"`
}

// JWT configures identity from a JSON Web Token in "Authorization: Bearer <token>". Envoy
// verifies the token (signature, issuer, audiences, expiry); tollgate reads the user from a claim.
type JWT struct {
	// Issuer is the required "iss" claim.
	Issuer string `yaml:"issuer"`
	// Audiences, when set, are the accepted "aud" values; a token must name one of them.
	Audiences []string `yaml:"audiences"`
	// JWKSFile is a local JSON Web Key Set file (relative to the policy file), read on every
	// policy load. Set exactly one of JWKSFile and JWKSURI.
	JWKSFile string `yaml:"jwksFile"`
	// JWKSURI is an http(s) URL Envoy fetches the key set from, and caches.
	JWKSURI string `yaml:"jwksURI"`
	// JWKSCacheDuration is how long Envoy keeps a fetched key set. Default 10m.
	JWKSCacheDuration Duration `yaml:"jwksCacheDuration"`
	// UserClaim names the top-level claim holding the user id. Default "sub".
	UserClaim string `yaml:"userClaim"`
	// TeamClaim names the top-level claim holding the caller's team, for team quotas;
	// optional. A token without it belongs to no team.
	TeamClaim string `yaml:"teamClaim"`

	// JWKS is the content of JWKSFile. Parse fills it; it is not written in the policy.
	JWKS string `yaml:"-"`
}

// Endpoint is a host:port a service is reached at.
type Endpoint struct {
	// Address is a host name or IP. Default 127.0.0.1.
	Address string `yaml:"address"`
	// Port of the service.
	Port int `yaml:"port"`
}

// ExtProcEndpoint is a TCP endpoint, or a Unix domain socket when Envoy and the ext_proc server
// share a host.
type ExtProcEndpoint struct {
	Endpoint `yaml:",inline"`
	// Socket, when set, is the path of the Unix socket the ext_proc server listens on; Address
	// and Port are then not used. Every request's messages cross it, and a Unix socket costs
	// both ends less per message than loopback TCP.
	Socket string `yaml:"socket"`
	// StreamUsage says who reads a streamed answer's token usage: tollgate (default), which
	// gets every chunk and so charges a stream the client leaves early what it was served;
	// or envoy, whose usage filter reads it and hands tollgate one trailers message per
	// stream (four messages in all instead of one per chunk), but a stream left early
	// publishes no usage and is charged its reservation (prompt and whole output allowance).
	StreamUsage string `yaml:"streamUsage"`
}

// Who reads a streamed answer's usage (ExtProcEndpoint.StreamUsage).
const (
	StreamUsageTollgate = "tollgate"
	StreamUsageEnvoy    = "envoy"
)

// StreamUsageReaders lists the valid values of extProc.streamUsage.
func StreamUsageReaders() []string { return []string{StreamUsageTollgate, StreamUsageEnvoy} }

// RateLimit configures how the ext_proc server talks to the ratelimit service.
type RateLimit struct {
	Endpoint `yaml:",inline"`
	// Domain is the ratelimit domain the descriptors live in. Default "tollgate".
	Domain string `yaml:"domain"`
	// Timeout bounds one call to the ratelimit service. Default 100ms.
	Timeout Duration `yaml:"timeout"`
	// FailureMode is "open" (default: admit requests when the service is down) or "closed"
	// (answer 503).
	FailureMode string `yaml:"failureMode"`
	// DefaultMaxOutputTokens is the most output a request that names no ceiling of its own
	// (max_tokens and the like) is taken to produce: admission reserves it on the request's
	// quotas until the real usage replaces it, and an answer without usage is charged at most
	// this much output. Default 4096.
	DefaultMaxOutputTokens int64 `yaml:"defaultMaxOutputTokens"`
	// MaxConcurrentRequests caps the requests each user has in flight at once on one gateway
	// (a tier may set its own); beyond it a request is answered 429. 0: no cap.
	MaxConcurrentRequests int `yaml:"maxConcurrentRequests"`
}

// Backend is one upstream LLM server.
type Backend struct {
	// Name is how models refer to this backend.
	Name string `yaml:"name"`
	// URL is http:// or https:// with a host and optional port; a path is not allowed.
	URL string `yaml:"url"`
	// APIKey, when set, is sent upstream as "Authorization: Bearer <key>". Write it as
	// "${ENV_VAR}" or {file: path}; a literal key in the file is refused.
	APIKey Secret `yaml:"apiKey"`
	// ConnectTimeout bounds TCP (and TLS) connection setup. Default 5s.
	ConnectTimeout Duration `yaml:"connectTimeout"`
	// MaxConcurrentRequests bounds the requests in flight to this backend (and, over HTTP/1,
	// its connections); MaxPendingRequests those waiting for a connection. One more gets a
	// JSON 503 with Retry-After and is not charged. Defaults: listener.maxConcurrentRequests.
	MaxConcurrentRequests int `yaml:"maxConcurrentRequests"`
	MaxPendingRequests    int `yaml:"maxPendingRequests"`
}

// Model routes one model name to one backend.
type Model struct {
	// Name as clients send it in the body's "model" field.
	Name string `yaml:"name"`
	// Backend is the name of a backend.
	Backend string `yaml:"backend"`
	// Prices, per million tokens in the policy's currency, price the model's requests for
	// money quotas.
	Prices *Prices `yaml:"prices"`
}

// Cost types, as in the seed's llmRequestCosts.
const (
	CostInputToken  = "InputToken"
	CostOutputToken = "OutputToken"
	CostTotalToken  = "TotalToken"
	CostCEL         = "CEL"
)

// Cost is what one request costs, computed from the response's token usage.
type Cost struct {
	// Name is the key the cost is published under (dynamic metadata key) and how quotas refer to it.
	Name string `yaml:"name"`
	// Type is InputToken, OutputToken, TotalToken, or CEL (implied when cel is set).
	Type string `yaml:"type"`
	// CEL is an expression over input_tokens, output_tokens, total_tokens,
	// cached_input_tokens, reasoning_tokens (int) and model, backend (string); the result must be a
	// non-negative int or uint.
	CEL string `yaml:"cel"`
}

// Units a fixed quota window can have. Fixed windows are aligned to the Unix epoch.
var Units = []string{"second", "minute", "hour", "day", "week", "month", "year"}

// Quota is a budget of one cost over one window. Its scope says who shares a counter: every
// user has their own (user), a team's members share one (team), or all callers share one
// (global). It covers one model, or every model when Model is empty.
type Quota struct {
	// Name identifies the quota; default "<model or all-models>-<cost>-per-<per>", with the
	// scope in front for team and global quotas.
	Name string `yaml:"name"`
	// Model is the name of a model; empty: one pool for all models.
	Model string `yaml:"model"`
	// Scope is user (default), team or global.
	Scope string `yaml:"scope"`
	// Cost is the name of a cost, or a built-in one: requests (1 per request, charged when it
	// is admitted) or price (its price from the model's prices). Default price for a limit in
	// money.
	Cost string `yaml:"cost"`
	// Limit is how much one counter may spend per window: a count of cost units, or, for the
	// price cost, an amount of money ("$100"); must be > 0.
	Limit Limit `yaml:"limit"`
	// Per is the window: a fixed second, minute, hour, day, week, month (30 days) or year
	// (365 days), or a calendar-day, calendar-week (from Monday) or calendar-month (from the
	// 1st) in Timezone.
	Per string `yaml:"per"`
	// Timezone is the IANA zone calendar periods start in (such as Europe/Berlin); default UTC.
	Timezone string `yaml:"timezone"`
	// MaxTokensPerRequest is the most output one request under this quota may ask for (its
	// max_tokens or the like); a request asking more is refused with 400, and one naming no
	// ceiling is taken to produce up to it. 0: no ceiling.
	MaxTokensPerRequest int64 `yaml:"maxTokensPerRequest"`
	// Shadow counts and reports the quota but never rejects a request: a way to try a limit
	// on live traffic before enforcing it.
	Shadow bool `yaml:"shadow"`
	// Alerts report a counter crossing shares of its limit, once per threshold and window.
	Alerts *Alerts `yaml:"alerts"`
	// Overrides give some users, every user of a tier, or (team quotas) some teams a
	// different limit on this quota. A user's own override wins over their tier's.
	Overrides []Override `yaml:"overrides"`
}

// Alerts say when a counter's use is worth telling someone about.
type Alerts struct {
	// At are the thresholds, in percent of the limit; default 80, 90 and 100.
	At []int `yaml:"at"`
	// Webhook, when set, is an http(s) URL that gets one JSON event (POST) per threshold
	// crossed per window.
	Webhook string `yaml:"webhook"`
}

// Override replaces a quota's limit for one user, every user of one tier, or one team.
type Override struct {
	// User is a user id; set exactly one of User, Tier and Team.
	User string `yaml:"user"`
	// Tier is the name of a tier.
	Tier string `yaml:"tier"`
	// Team is a team id (team quotas only).
	Team string `yaml:"team"`
	// Limit replaces the quota's limit, written the same way; must be > 0.
	Limit Limit `yaml:"limit"`
}

// Duration is a time.Duration written in YAML as a Go duration string ("5s", "100ms").
type Duration struct {
	time.Duration
}
