package policies

import (
	"strings"
	"time"
)

// Defaults for fields a policy leaves out. The ports and headers match the envoy package's
// well-known values; they are repeated here because policies stays free of Envoy imports.
const (
	DefaultListenerAddress  = "127.0.0.1"
	DefaultListenerPort     = 8080
	DefaultModelHeader      = "x-ai-eg-model"
	DefaultMaxRequestBytes  = 1 << 20
	DefaultRequestTimeout   = 300 * time.Second
	DefaultIdentityHeader   = "x-user-id"
	DefaultExtProcAddress   = "127.0.0.1"
	DefaultExtProcPort      = 1063
	DefaultRateLimitAddress = "127.0.0.1"
	DefaultRateLimitPort    = 8081
	DefaultRateLimitDomain  = "tollgate"
	DefaultRateLimitTimeout = 100 * time.Millisecond
	DefaultFailureMode      = FailureModeOpen
	DefaultMaxOutputTokens  = 4096
	DefaultConnectTimeout   = 5 * time.Second
	DefaultIdentityMode     = IdentityHeader
	DefaultJWTUserClaim     = "sub"
	DefaultJWKSCache        = 10 * time.Minute
	DefaultTeamHeader       = "x-team-id"
	// DefaultMaxConcurrentRequests is Envoy's own default bound of a cluster's requests in
	// flight, made explicit and applied to the whole gateway.
	DefaultMaxConcurrentRequests = 1024
	// MaxConcurrentRequestsCeiling bounds every in-flight cap: far above what one gateway
	// serves, and the bound tollgate's ext_proc server puts on one connection's streams.
	MaxConcurrentRequestsCeiling = 1_000_000
)

// Rate limit failure modes.
const (
	// FailureModeOpen admits requests while the ratelimit service is unreachable.
	FailureModeOpen = "open"
	// FailureModeClosed answers 503 while the ratelimit service is unreachable.
	FailureModeClosed = "closed"
)

// MaxOutputTokensCeiling bounds rateLimit.defaultMaxOutputTokens: no model produces more in one
// answer, and a larger reservation would only refuse requests for nothing.
const MaxOutputTokensCeiling = 10_000_000

// Bounds of listener.maxRequestBytes: below 1 KiB no chat request fits; above 64 MiB Envoy
// would buffer unreasonable bodies in memory for every concurrent request.
const (
	MinRequestBytes = 1 << 10
	MaxRequestBytes = 64 << 20
)

// applyDefaults fills fields the file left out and normalises case-insensitive values.
// written reports whether the file gave a path a value: an explicit zero ("port: 0") is kept
// so validation can refuse it instead of quietly replacing it.
func applyDefaults(p *Policy, written func(path string) bool) {
	setString := func(path string, field *string, def string) {
		if *field == "" && !written(path) {
			*field = def
		}
	}
	setInt := func(path string, field *int, def int) {
		if *field == 0 && !written(path) {
			*field = def
		}
	}
	setDuration := func(path string, field *Duration, def time.Duration) {
		if field.Duration == 0 && !written(path) {
			field.Duration = def
		}
	}

	setString("listener.address", &p.Listener.Address, DefaultListenerAddress)
	setInt("listener.port", &p.Listener.Port, DefaultListenerPort)
	setString("listener.modelHeader", &p.Listener.ModelHeader, DefaultModelHeader)
	if p.Listener.MaxRequestBytes == 0 && !written("listener.maxRequestBytes") {
		p.Listener.MaxRequestBytes = DefaultMaxRequestBytes
	}
	setDuration("listener.requestTimeout", &p.Listener.RequestTimeout, DefaultRequestTimeout)
	setInt("listener.maxConcurrentRequests", &p.Listener.MaxConcurrentRequests, DefaultMaxConcurrentRequests)
	setString("identity.mode", &p.Identity.Mode, DefaultIdentityMode)
	// Modes are matched case-insensitively and kept in their documented spelling.
	for _, m := range IdentityModes() {
		if strings.EqualFold(p.Identity.Mode, m) {
			p.Identity.Mode = m
		}
	}
	setString("identity.header", &p.Identity.Header, DefaultIdentityHeader)
	setString("identity.teamHeader", &p.Identity.TeamHeader, DefaultTeamHeader)
	setString("currency.code", &p.Currency.Code, DefaultCurrencyCode)
	setInt("currency.decimals", &p.Currency.Decimals, DefaultCurrencyDecimals)
	p.Currency.Code = strings.ToUpper(p.Currency.Code)
	if p.Identity.Mode == IdentityJWT {
		setString("identity.jwt.userClaim", &p.Identity.JWT.UserClaim, DefaultJWTUserClaim)
		setDuration("identity.jwt.jwksCacheDuration", &p.Identity.JWT.JWKSCacheDuration, DefaultJWKSCache)
	}
	setString("extProc.address", &p.ExtProc.Address, DefaultExtProcAddress)
	setInt("extProc.port", &p.ExtProc.Port, DefaultExtProcPort)
	setString("extProc.streamUsage", &p.ExtProc.StreamUsage, StreamUsageTollgate)
	setString("rateLimit.address", &p.RateLimit.Address, DefaultRateLimitAddress)
	setInt("rateLimit.port", &p.RateLimit.Port, DefaultRateLimitPort)
	setString("rateLimit.domain", &p.RateLimit.Domain, DefaultRateLimitDomain)
	setDuration("rateLimit.timeout", &p.RateLimit.Timeout, DefaultRateLimitTimeout)
	setString("rateLimit.failureMode", &p.RateLimit.FailureMode, DefaultFailureMode)
	if p.RateLimit.DefaultMaxOutputTokens == 0 && !written("rateLimit.defaultMaxOutputTokens") {
		p.RateLimit.DefaultMaxOutputTokens = DefaultMaxOutputTokens
	}

	// HTTP header names are case-insensitive and Envoy keeps them lowercase.
	p.Listener.ModelHeader = strings.ToLower(p.Listener.ModelHeader)
	p.Identity.Header = strings.ToLower(p.Identity.Header)
	p.Identity.TeamHeader = strings.ToLower(p.Identity.TeamHeader)
	p.RateLimit.FailureMode = strings.ToLower(p.RateLimit.FailureMode)

	// A backend takes as many requests as the gateway does unless it says otherwise; an
	// invalid gateway bound is reported once, at the listener, not again at every backend.
	backendInFlight := p.Listener.MaxConcurrentRequests
	if backendInFlight < 1 || backendInFlight > MaxConcurrentRequestsCeiling {
		backendInFlight = DefaultMaxConcurrentRequests
	}
	for i := range p.Backends {
		b := &p.Backends[i]
		setDuration(indexPath("backends", i)+".connectTimeout", &b.ConnectTimeout, DefaultConnectTimeout)
		setInt(indexPath("backends", i)+".maxConcurrentRequests", &b.MaxConcurrentRequests, backendInFlight)
		setInt(indexPath("backends", i)+".maxPendingRequests", &b.MaxPendingRequests, backendInFlight)
	}
	for i := range p.Costs {
		c := &p.Costs[i]
		if c.CEL != "" {
			setString(indexPath("costs", i)+".type", &c.Type, CostCEL)
		}
	}
	for i := range p.Quotas {
		q := &p.Quotas[i]
		// The seed writes "Hour"; units are matched case-insensitively.
		q.Per = strings.ToLower(q.Per)
		q.Scope = strings.ToLower(q.Scope)
		path := indexPath("quotas", i)
		setString(path+".scope", &q.Scope, ScopeUser)
		if q.Limit.IsMoney() {
			setString(path+".cost", &q.Cost, CostPrice)
		}
		setString(path+".name", &q.Name, defaultQuotaName(q))
		if q.Alerts != nil && len(q.Alerts.At) == 0 && !written(path+".alerts.at") {
			q.Alerts.At = []int{80, 90, 100}
		}
	}
}

// defaultQuotaName names a quota after what it counts: "qwen3-tokens-per-hour",
// "team-all-models-price-per-calendar-month".
func defaultQuotaName(q *Quota) string {
	model := q.Model
	if model == "" {
		model = "all-models"
	}
	name := model + "-" + q.Cost + "-per-" + q.Per
	if q.Scope != ScopeUser && q.Scope != "" {
		name = q.Scope + "-" + name
	}
	return name
}
