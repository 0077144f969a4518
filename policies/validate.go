package policies

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
)

// maxNameBytes bounds every name; names end up in Envoy resource names and Redis keys.
const maxNameBytes = 256

// validator collects every problem instead of stopping at the first.
type validator struct {
	errs []FieldError
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

// validate checks a defaulted policy. celEnv may be nil when the CEL environment could not be
// built; CEL costs are then reported as uncheckable.
func validate(p *Policy, celEnv *cel.Env, celEnvErr error) []FieldError {
	v := &validator{}
	v.listener(p)
	v.identity(p.Identity)
	v.extProc(p.ExtProc)
	v.endpoint("rateLimit", p.RateLimit.Endpoint)
	v.rateLimit(p.RateLimit)
	v.portClashes(p)
	backends := v.backends(p.Backends)
	models := v.models(p.Models, backends)
	costs := v.costs(p.Costs, celEnv, celEnvErr)
	tiers := v.tiers(p.Tiers)
	v.currency(p.Currency)
	v.quotas(p, models, costs, tiers)
	if path := p.UsageLog.Path; path != "" && (!filepath.IsAbs(path) || strings.ContainsAny(path, "%\x00\n")) {
		v.add("usageLog.path", "must be an absolute file path (Envoy opens it), got %q", path)
	}
	return v.errs
}

func (v *validator) listener(p *Policy) {
	l := p.Listener
	if l.Address == "" {
		v.add("listener.address", "required")
	} else if _, err := netip.ParseAddr(l.Address); err != nil {
		// Envoy binds listeners to IP literals only; a host name would be NACKed.
		v.add("listener.address", "must be an IP address such as 127.0.0.1 or 0.0.0.0, got %q", l.Address)
	}
	v.port("listener.port", l.Port)
	v.header("listener.modelHeader", l.ModelHeader)
	if l.MaxRequestBytes < MinRequestBytes || l.MaxRequestBytes > MaxRequestBytes {
		v.add("listener.maxRequestBytes", "must be between %d (1 KiB) and %d (64 MiB), got %d", MinRequestBytes, MaxRequestBytes, l.MaxRequestBytes)
	}
	v.positive("listener.requestTimeout", l.RequestTimeout)
	v.concurrency("listener.maxConcurrentRequests", l.MaxConcurrentRequests)
	v.header("identity.header", p.Identity.Header)
	if l.ModelHeader != "" && l.ModelHeader == p.Identity.Header {
		v.add("identity.header", "must differ from listener.modelHeader (both are %q)", l.ModelHeader)
	}
	if p.Identity.TeamHeader != "" {
		v.header("identity.teamHeader", p.Identity.TeamHeader)
	}
	if t := p.Identity.TeamHeader; t != "" && (t == l.ModelHeader || t == p.Identity.Header) {
		v.add("identity.teamHeader", "must differ from listener.modelHeader and identity.header (%q)", t)
	}
}

// identity checks the mode and that each mode's settings appear only with it. API keys and the
// files are checked where Parse reads them (resolveIdentity).
func (v *validator) identity(id Identity) {
	if !slices.Contains(IdentityModes(), id.Mode) {
		v.add("identity.mode", "must be one of %s, got %q", strings.Join(IdentityModes(), ", "), id.Mode)
		return
	}
	if id.Mode != IdentityAPIKeys {
		if len(id.APIKeys) > 0 {
			v.add("identity.apiKeys", "only allowed when identity.mode is %s", IdentityAPIKeys)
		}
		if id.APIKeysFile != "" {
			v.add("identity.apiKeysFile", "only allowed when identity.mode is %s", IdentityAPIKeys)
		}
	}
	if id.Mode != IdentityJWT && !reflect.ValueOf(id.JWT).IsZero() {
		v.add("identity.jwt", "only allowed when identity.mode is %s", IdentityJWT)
	}
	if id.Mode != IdentityHeader {
		// These headers carry credentials and are removed before the request goes upstream;
		// the user id would go with them.
		for _, h := range []struct{ path, name string }{{"identity.header", id.Header}, {"identity.teamHeader", id.TeamHeader}} {
			switch h.name {
			case "authorization", "x-api-key":
				v.add(h.path, "must not be %s in %s mode: the gateway removes it", h.name, id.Mode)
			}
		}
	}
	switch id.Mode {
	case IdentityAPIKeys:
		if len(id.APIKeys) == 0 && id.APIKeysFile == "" {
			v.add("identity", "%s mode needs apiKeys, apiKeysFile or both", IdentityAPIKeys)
		}
	case IdentityJWT:
		v.jwt(id.JWT)
	}
}

// prices checks a model's prices: input and output are required, each within bounds.
func (v *validator) prices(path string, p *Prices) {
	for _, f := range []struct {
		name     string
		price    *float64
		required bool
	}{{"input", p.Input, true}, {"output", p.Output, true}, {"cachedInput", p.CachedInput, false}} {
		switch {
		case f.price == nil && f.required:
			v.add(path+"."+f.name, "required: the price per million %s tokens", strings.TrimSuffix(f.name, "Input"))
		case f.price != nil:
			if msg := checkPrice(*f.price); msg != "" {
				v.add(path+"."+f.name, "%s", msg)
			}
		}
	}
}

func (v *validator) jwt(j JWT) {
	const path = "identity.jwt"
	switch {
	case j.Issuer == "":
		v.add(path+".issuer", "required: the token's \"iss\" claim")
	case !isPrintableWord(j.Issuer):
		v.add(path+".issuer", "must be printable and contain no whitespace")
	}
	for i, a := range j.Audiences {
		if !isPrintableWord(a) {
			v.add(indexPath(path+".audiences", i), "must be a non-empty printable string without whitespace")
		}
	}
	switch {
	case (j.JWKSFile == "") == (j.JWKSURI == ""):
		v.add(path, "set exactly one of jwksFile and jwksURI")
	case j.JWKSURI != "":
		if msg := checkHTTPURL(j.JWKSURI); msg != "" {
			v.add(path+".jwksURI", "%s", msg)
		}
	}
	v.positive(path+".jwksCacheDuration", j.JWKSCacheDuration)
	switch {
	case j.UserClaim == "":
		v.add(path+".userClaim", "required")
	case !isPrintableWord(j.UserClaim):
		v.add(path+".userClaim", "must be printable and contain no whitespace")
	}
	if j.TeamClaim != "" && !isPrintableWord(j.TeamClaim) {
		v.add(path+".teamClaim", "must be printable and contain no whitespace")
	}
}

// checkHTTPURL returns a problem with an http(s) URL (a key set, a webhook), or "".
func checkHTTPURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("not a valid URL: %v", unwrapURLError(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("scheme must be https or http, got %q", u.Scheme)
	case u.User != nil:
		return "must not contain user info"
	case u.Hostname() == "" || !validHost(u.Hostname()):
		return "needs a host name or IP address"
	case u.Fragment != "":
		return "must not have a fragment"
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port must be between 1 and 65535, got %q", p)
		}
	}
	return ""
}

func (v *validator) endpoint(path string, e Endpoint) {
	if e.Address == "" {
		v.add(path+".address", "required")
	} else if !validHost(e.Address) {
		v.add(path+".address", "must be an IP address or a host name (without a port), got %q", e.Address)
	}
	v.port(path+".port", e.Port)
}

// maxSocketPath is the longest Unix socket path Linux takes (sun_path holds 108 bytes, the
// last a NUL).
const maxSocketPath = 107

func (v *validator) extProc(e ExtProcEndpoint) {
	if !slices.Contains(StreamUsageReaders(), e.StreamUsage) {
		v.add("extProc.streamUsage", "must be one of %s, got %q", strings.Join(StreamUsageReaders(), ", "), e.StreamUsage)
	}
	if e.Socket == "" {
		v.endpoint("extProc", e.Endpoint)
		return
	}
	switch {
	case !filepath.IsAbs(e.Socket):
		v.add("extProc.socket", "must be an absolute path, got %q", e.Socket)
	case len(e.Socket) > maxSocketPath:
		v.add("extProc.socket", "must be at most %d bytes long (a Unix socket path's limit), got %d", maxSocketPath, len(e.Socket))
	case strings.ContainsRune(e.Socket, 0):
		v.add("extProc.socket", "must not contain a NUL byte")
	}
}

func (v *validator) rateLimit(r RateLimit) {
	if r.Domain == "" {
		v.add("rateLimit.domain", "required")
	} else if !isPrintableWord(r.Domain) {
		v.add("rateLimit.domain", "must be printable and contain no spaces")
	}
	v.positive("rateLimit.timeout", r.Timeout)
	if r.FailureMode != FailureModeOpen && r.FailureMode != FailureModeClosed {
		v.add("rateLimit.failureMode", "must be %q or %q, got %q", FailureModeOpen, FailureModeClosed, r.FailureMode)
	}
	if r.MaxConcurrentRequests < 0 {
		v.add("rateLimit.maxConcurrentRequests", "must not be negative, got %d", r.MaxConcurrentRequests)
	}
	if r.DefaultMaxOutputTokens < 1 || r.DefaultMaxOutputTokens > MaxOutputTokensCeiling {
		v.add("rateLimit.defaultMaxOutputTokens", "must be from 1 to %d, got %d", MaxOutputTokensCeiling, r.DefaultMaxOutputTokens)
	}
}

// portClashes catches two services told to bind the same address and port on one machine,
// which otherwise surfaces later as a confusing "address already in use".
func (v *validator) portClashes(p *Policy) {
	type bind struct {
		path, addr string
		port       int
	}
	binds := []bind{{"listener.port", p.Listener.Address, p.Listener.Port}}
	if p.ExtProc.Socket == "" {
		binds = append(binds, bind{"extProc.port", p.ExtProc.Address, p.ExtProc.Port})
	}
	binds = append(binds, bind{"rateLimit.port", p.RateLimit.Address, p.RateLimit.Port})
	for i, b := range binds {
		for _, earlier := range binds[:i] {
			if b.port != 0 && b.port == earlier.port && b.addr == earlier.addr {
				v.add(b.path, "clashes with %s (both %s)", earlier.path, net.JoinHostPort(b.addr, strconv.Itoa(b.port)))
			}
		}
	}
}

func (v *validator) port(path string, port int) {
	if port < 1 || port > 65535 {
		v.add(path, "must be between 1 and 65535, got %d", port)
	}
}

func (v *validator) positive(path string, d Duration) {
	if d.Duration <= 0 {
		v.add(path, "must be greater than 0")
	}
}

// header checks an HTTP header name (already lowercased by defaults).
func (v *validator) header(path, name string) {
	if name == "" {
		v.add(path, "required")
		return
	}
	for _, r := range name {
		if !isTokenChar(r) {
			v.add(path, "%q is not a valid HTTP header name", name)
			return
		}
	}
}

// isTokenChar reports whether r may appear in an HTTP token (RFC 9110 section 5.6.2).
func isTokenChar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
}

// validHost accepts an IP literal or a DNS host name.
func validHost(host string) bool {
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	if len(host) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// isPrintableWord reports a non-empty, valid UTF-8 string of printable characters without spaces.
func isPrintableWord(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// isIdentifier reports whether s uses only [A-Za-z0-9_.-]: such names are safe in Envoy cluster
// names and metadata keys without escaping.
func isIdentifier(s string) bool {
	for _, r := range s {
		if !(r == '_' || r == '.' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// nameRule says what a list's names may look like.
type nameRule struct {
	kind       string // "backend", "model", ...: used in messages
	identifier bool   // restrict to [A-Za-z0-9_.-]
	maxBytes   int    // 0: no limit
}

// nameSet is the names a list defines, in file order for messages and as a set for lookups.
type nameSet struct {
	list []string
	has  map[string]bool
}

func (n *nameSet) add(name string) {
	if name == "" || n.has[name] {
		return
	}
	if n.has == nil {
		n.has = map[string]bool{}
	}
	n.has[name] = true
	n.list = append(n.list, name)
}

// name validates one item's name and reports duplicates against seen (name → first path).
func (v *validator) name(path string, name string, rule nameRule, seen map[string]string) {
	switch {
	case name == "":
		v.add(path, "required")
		return
	case rule.maxBytes > 0 && len(name) > rule.maxBytes:
		v.add(path, "must be at most %d bytes, got %d", rule.maxBytes, len(name))
	case rule.identifier && !isIdentifier(name):
		v.add(path, "%q may contain only letters, digits, '_', '.' and '-'", name)
	case !rule.identifier && !isPrintableWord(name):
		v.add(path, "%q must be printable and contain no whitespace", name)
	}
	if first, dup := seen[name]; dup {
		v.add(path, "duplicate %s name %q (also %s)", rule.kind, name, parentPath(first))
		return
	}
	seen[name] = path
}

func (v *validator) backends(bs []Backend) nameSet {
	seen := map[string]string{}
	var names nameSet
	for i, b := range bs {
		path := indexPath("backends", i)
		v.name(path+".name", b.Name, nameRule{kind: "backend", identifier: true, maxBytes: maxNameBytes}, seen)
		names.add(b.Name)
		if msg := checkBackendURL(b.URL); msg != "" {
			v.add(path+".url", "%s", msg)
		}
		v.positive(path+".connectTimeout", b.ConnectTimeout)
		v.concurrency(path+".maxConcurrentRequests", b.MaxConcurrentRequests)
		v.concurrency(path+".maxPendingRequests", b.MaxPendingRequests)
	}
	return names
}

// concurrency checks an in-flight cap.
func (v *validator) concurrency(path string, n int) {
	if n < 1 || n > MaxConcurrentRequestsCeiling {
		v.add(path, "must be between 1 and %d, got %d", MaxConcurrentRequestsCeiling, n)
	}
}

// checkBackendURL returns a problem with a backend URL, or "".
func checkBackendURL(raw string) string {
	if raw == "" {
		return "required"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("not a valid URL: %v", unwrapURLError(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("scheme must be http or https, got %q", u.Scheme)
	case u.User != nil:
		// Credentials in a URL end up in logs and config dumps; apiKey keeps them out.
		return "must not contain user info; use apiKey for credentials"
	case u.Hostname() == "":
		return "host required"
	case u.Path != "" && u.Path != "/":
		return fmt.Sprintf("must not have a path (got %q): requests keep their own path", u.Path)
	case u.RawQuery != "" || u.ForceQuery:
		return "must not have a query"
	case u.Fragment != "":
		return "must not have a fragment"
	case u.Opaque != "":
		return "must be scheme://host[:port]"
	}
	if !validHost(u.Hostname()) {
		return fmt.Sprintf("host %q is not an IP address or host name", u.Hostname())
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port must be between 1 and 65535, got %q", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return "port is empty"
	}
	return ""
}

// unwrapURLError drops url.Error's "parse <url>:" prefix, which repeats the whole URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (v *validator) models(ms []Model, backends nameSet) nameSet {
	if len(ms) == 0 {
		v.add("models", "at least one model is required")
	}
	seen := map[string]string{}
	var names nameSet
	for i, m := range ms {
		path := indexPath("models", i)
		v.name(path+".name", m.Name, nameRule{kind: "model", maxBytes: maxNameBytes}, seen)
		names.add(m.Name)
		switch {
		case m.Backend == "":
			v.add(path+".backend", "required")
		case !backends.has[m.Backend]:
			v.add(path+".backend", "unknown backend %q (%s)", m.Backend, have(backends.list))
		}
		if m.Prices != nil {
			v.prices(path+".prices", m.Prices)
		}
	}
	return names
}

// costTypes lists the valid cost types.
func costTypes() []string {
	return []string{CostInputToken, CostOutputToken, CostTotalToken, CostCEL}
}

func (v *validator) costs(cs []Cost, env *cel.Env, envErr error) nameSet {
	seen := map[string]string{}
	var names nameSet
	for i, c := range cs {
		path := indexPath("costs", i)
		v.name(path+".name", c.Name, nameRule{kind: "cost", identifier: true, maxBytes: maxNameBytes}, seen)
		names.add(c.Name)
		if slices.Contains(BuiltinCosts(), c.Name) {
			v.add(path+".name", "%q is a built-in cost; quotas can name it without defining it", c.Name)
		}
		switch {
		case c.Type == "":
			v.add(path+".type", "required (one of %s, or set cel)", strings.Join(costTypes(), ", "))
		case !slices.Contains(costTypes(), c.Type):
			v.add(path+".type", "must be one of %s, got %q", strings.Join(costTypes(), ", "), c.Type)
		case c.Type == CostCEL && c.CEL == "":
			v.add(path+".cel", "required when type is CEL")
		case c.Type != CostCEL && c.CEL != "":
			v.add(path+".cel", "only allowed when type is CEL (type is %s)", c.Type)
		case c.Type == CostCEL && env == nil:
			v.add(path+".cel", "cannot check expression: %v", envErr)
		case c.Type == CostCEL:
			if _, err := compileCost(env, c.CEL); err != nil {
				v.add(path+".cel", "%v", err)
			}
		}
	}
	return names
}

// maxLimit is the largest limit the ratelimit service can hold (requests_per_unit is uint32).
const maxLimit = 1<<32 - 1

func (v *validator) tiers(ts []Tier) nameSet {
	seen := map[string]string{}
	memberOf := map[string]string{}
	var names nameSet
	for i, t := range ts {
		path := indexPath("tiers", i)
		v.name(path+".name", t.Name, nameRule{kind: "tier", identifier: true, maxBytes: maxNameBytes}, seen)
		names.add(t.Name)
		if len(t.Users) == 0 {
			v.add(path+".users", "a tier needs at least one user")
		}
		if t.MaxConcurrentRequests < 0 {
			v.add(path+".maxConcurrentRequests", "must not be negative, got %d", t.MaxConcurrentRequests)
		}
		v.maxTokens(path+".maxTokensPerRequest", t.MaxTokensPerRequest)
		for j, u := range t.Users {
			upath := indexPath(path+".users", j)
			switch {
			case !v.checkUserID(upath, u):
				// reported; an invalid id joins no tier
			case memberOf[u] != "":
				v.add(upath, "user %q is already in tier %q; a user belongs to at most one tier", u, memberOf[u])
			default:
				memberOf[u] = t.Name
			}
		}
	}
	return names
}

// MaxUserIDBytes bounds a user id. An id becomes a ratelimit descriptor value and part of one
// Redis key per quota and window, whoever chose it: a client in header mode, a token issuer in
// jwt mode, the policy's author in apiKeys mode.
const MaxUserIDBytes = maxNameBytes

// CheckUserID returns why s cannot be a user id, or nil. One rule holds wherever an id comes
// from (tiers, overrides and API keys in the policy; the identity header, an API key or a token
// claim at request time), so every id a request is metered under can also be named in a tier or
// an override:
//
//   - 1 to MaxUserIDBytes bytes. Each distinct id costs a Redis key, and the bound keeps it small.
//   - Valid UTF-8. The ratelimit service receives ids as protobuf strings, and a request it
//     cannot decode is answered with an error, which Envoy treats as "not limited" when the
//     failure mode is open.
//   - Printable characters only (unicode.IsPrint): no C0 or C1 control characters, no DEL, no
//     format characters such as zero-width or bidirectional controls, no private-use or
//     unassigned code points. Such characters corrupt logs and make ids that look alike in
//     `tollgate quota` and the access log but count separately.
//   - No whitespace at all. HTTP parsers trim it at the ends of a header value, so such an id
//     may not arrive as it was sent; inside an id it makes log lines and `tollgate quota` output
//     ambiguous. The policy has always refused it, and a client must not be metered under an
//     id the policy could not name.
//
// Letters of any script are fine: "josé" and "用户" are valid ids.
func CheckUserID(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxUserIDBytes:
		return fmt.Errorf("%d bytes, more than %d", len(s), MaxUserIDBytes)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return fmt.Errorf("contains whitespace (%U)", r)
		case !unicode.IsPrint(r):
			return fmt.Errorf("contains a non-printable character (%U)", r)
		}
	}
	return nil
}

// UserIDRule describes the ids CheckUserID accepts, for messages.
const UserIDRule = "printable UTF-8 without whitespace, at most 256 bytes"

// validUserID is CheckUserID as a predicate.
func validUserID(u string) bool { return CheckUserID(u) == nil }

// checkUserID reports an invalid user id at path and returns whether the id is valid.
func (v *validator) checkUserID(path, user string) bool {
	if err := CheckUserID(user); err != nil {
		v.add(path, "%q is not a valid user id: %v; a user id is %s", user, err, UserIDRule)
		return false
	}
	return true
}

func (v *validator) overrides(path string, q Quota, tiers nameSet, currency Currency) {
	seen := map[string]string{}
	for i, o := range q.Overrides {
		opath := indexPath(path, i)
		set := 0
		for _, s := range []string{o.User, o.Tier, o.Team} {
			if s != "" {
				set++
			}
		}
		var key string
		switch {
		case q.Scope == ScopeGlobal:
			v.add(opath, "a global quota has one counter for everyone; change its limit instead")
		case set != 1 && q.Scope == ScopeTeam:
			v.add(opath, "set exactly one of user, tier and team")
		case set != 1:
			v.add(opath, "set exactly one of user and tier")
		case o.Team != "" && q.Scope != ScopeTeam:
			v.add(opath+".team", "only for quotas with scope team")
		case o.Team != "" && !v.checkID(opath+".team", "team", o.Team):
			// reported
		case o.Team != "":
			key = "team " + o.Team
		case q.Scope == ScopeTeam:
			// A team's counter is shared by members of any tier; a user's own limit inside a
			// team is a user quota.
			v.add(opath, "a team quota's overrides name teams; give users their own limits with a user quota")
		case o.User != "" && !v.checkUserID(opath+".user", o.User):
			// reported
		case o.User != "":
			key = "user " + o.User
		case !tiers.has[o.Tier]:
			v.add(opath+".tier", "unknown tier %q (%s)", o.Tier, have(tiers.list))
		default:
			key = "tier " + o.Tier
		}
		if key != "" {
			if first, dup := seen[key]; dup {
				v.add(opath, "second override for %s (also %s)", key, first)
			} else {
				seen[key] = opath
			}
		}
		v.limit(opath+".limit", q, o.Limit, currency)
	}
}

// limit checks one limit of quota q: written in money exactly when q is charged in money, and
// within what the ratelimit service can hold once converted to counter units.
func (v *validator) limit(path string, q Quota, l Limit, currency Currency) {
	if currency.Decimals < 0 || currency.Decimals > MaxCurrencyDecimals {
		return // reported at currency.decimals; no amount can be converted
	}
	switch {
	case q.Cost == CostPrice && !l.IsMoney():
		v.add(path, "the price cost counts money: write the limit with its currency, such as \"%s100\"", currency.Symbol())
		return
	case q.Cost != CostPrice && l.IsMoney():
		v.add(path, "%s is an amount of money; a limit in money needs cost price (this quota's cost is %q)", l, q.Cost)
		return
	case l.IsMoney() && l.Currency != currency.Code:
		v.add(path, "%s is not in the policy's currency %s (currency.code)", l, currency.Code)
		return
	}
	units, err := l.Units(currency)
	switch {
	case err != nil:
		v.add(path, "%v", err)
	case units == 0:
		v.add(path, "must be greater than 0")
	case units > maxLimit && l.IsMoney():
		v.add(path, "%s is %d counter units of 10^-%d %s, more than the ratelimit service's maximum %d; "+
			"lower currency.decimals to count coarser units", l, units, currency.Decimals, currency.Code, uint64(maxLimit))
	case units > maxLimit:
		v.add(path, "must be at most %d (the ratelimit service's maximum), got %d", uint64(maxLimit), units)
	}
}

// quotaKey is what two quotas must not share: a name derived from it would collide, and two
// such quotas would count the same thing twice.
type quotaKey struct{ model, scope, cost, per, timezone string }

func (v *validator) quotas(p *Policy, models, costs, tiers nameSet) {
	seen := map[string]string{}
	windows := map[quotaKey]string{}
	priced := map[string]bool{}
	for _, m := range p.Models {
		priced[m.Name] = m.Prices != nil
	}
	costNames := append(slices.Clone(costs.list), BuiltinCosts()...)
	periods := append(slices.Clone(Units), CalendarPeriods()...)
	for i, q := range p.Quotas {
		path := indexPath("quotas", i)
		key := quotaKey{q.Model, q.Scope, q.Cost, q.Per, q.Timezone}
		if first, dup := windows[key]; dup {
			v.add(path, "same model, scope, cost and per as %s", first)
		} else {
			windows[key] = path
			v.name(path+".name", q.Name, nameRule{kind: "quota"}, seen)
		}
		if q.Model != "" && !models.has[q.Model] {
			v.add(path+".model", "unknown model %q (%s)", q.Model, have(models.list))
		}
		if !slices.Contains(Scopes(), q.Scope) {
			v.add(path+".scope", "must be one of %s, got %q", strings.Join(Scopes(), ", "), q.Scope)
		}
		switch {
		case q.Cost == "":
			v.add(path+".cost", "required (a cost's name, %s or %s)", CostRequests, CostPrice)
		case !slices.Contains(costNames, q.Cost):
			v.add(path+".cost", "unknown cost %q (%s)", q.Cost, have(costNames))
		case q.Cost == CostPrice:
			v.pricedModels(path, q, p.Models, priced)
		}
		v.limit(path+".limit", q, q.Limit, p.Currency)
		v.overrides(path+".overrides", q, tiers, p.Currency)
		switch {
		case q.Per == "":
			v.add(path+".per", "required (one of %s)", strings.Join(periods, ", "))
		case !slices.Contains(periods, q.Per):
			v.add(path+".per", "must be one of %s, got %q", strings.Join(periods, ", "), q.Per)
		case q.Timezone != "" && !IsCalendar(q.Per):
			v.add(path+".timezone", "only for calendar periods (%s); fixed windows are aligned to the Unix epoch", strings.Join(CalendarPeriods(), ", "))
		}
		if _, err := LoadTimezone(q.Timezone); err != nil {
			v.add(path+".timezone", "unknown timezone %q: %v", q.Timezone, err)
		}
		v.maxTokens(path+".maxTokensPerRequest", q.MaxTokensPerRequest)
		if q.Alerts != nil {
			v.alerts(path+".alerts", *q.Alerts)
		}
	}
}

// maxAlertPercent bounds a threshold: past 1000 % of a limit there is nothing left to warn of.
const maxAlertPercent = 1000

// alerts checks a quota's alert thresholds and webhook.
func (v *validator) alerts(path string, a Alerts) {
	if len(a.At) == 0 {
		v.add(path+".at", "at least one threshold, in percent of the limit")
	}
	for i, p := range a.At {
		switch {
		case p < 1 || p > maxAlertPercent:
			v.add(indexPath(path+".at", i), "must be a percentage from 1 to %d, got %d", maxAlertPercent, p)
		case i > 0 && p <= a.At[i-1]:
			v.add(indexPath(path+".at", i), "thresholds must rise (%d after %d)", p, a.At[i-1])
		}
	}
	if a.Webhook != "" {
		if msg := checkHTTPURL(a.Webhook); msg != "" {
			v.add(path+".webhook", "%s", msg)
		}
	}
}

// pricedModels checks that every model a money quota covers has prices.
func (v *validator) pricedModels(path string, q Quota, models []Model, priced map[string]bool) {
	if q.Model != "" {
		if has, known := priced[q.Model]; known && !has {
			v.add(path+".model", "model %q has no prices; a quota in money needs models[].prices", q.Model)
		}
		return
	}
	var unpriced []string
	for _, m := range models {
		if !priced[m.Name] {
			unpriced = append(unpriced, m.Name)
		}
	}
	if len(unpriced) > 0 {
		v.add(path+".cost", "a quota in money over all models needs prices for each; without: %s", strings.Join(unpriced, ", "))
	}
}

// maxTokens checks a per-request output ceiling (0: none).
func (v *validator) maxTokens(path string, n int64) {
	if n < 0 || n > MaxOutputTokensCeiling {
		v.add(path, "must be from 1 to %d (or 0 for none), got %d", MaxOutputTokensCeiling, n)
	}
}

// currency checks the currency block.
func (v *validator) currency(c Currency) {
	if !isCurrencyCode(c.Code) {
		v.add("currency.code", "must be an ISO 4217 code such as USD or EUR, got %q", c.Code)
	}
	if c.Decimals < 0 || c.Decimals > MaxCurrencyDecimals {
		v.add("currency.decimals", "must be from 0 to %d, got %d", MaxCurrencyDecimals, c.Decimals)
	}
}

// checkID reports an invalid team id at path (the user id rule) and returns whether it is valid.
func (v *validator) checkID(path, kind, id string) bool {
	if err := CheckUserID(id); err != nil {
		v.add(path, "%q is not a valid %s id: %v; an id is %s", id, kind, err, UserIDRule)
		return false
	}
	return true
}

// have lists the names an unknown reference could have meant.
func have(names []string) string {
	if len(names) == 0 {
		return "none defined"
	}
	const maxListed = 10
	if len(names) > maxListed {
		return "have: " + strings.Join(names[:maxListed], ", ") + fmt.Sprintf(", and %d more", len(names)-maxListed)
	}
	return "have: " + strings.Join(names, ", ")
}
