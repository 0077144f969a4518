package policies

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
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
	v.endpoint("extProc", p.ExtProc)
	v.endpoint("rateLimit", p.RateLimit.Endpoint)
	v.rateLimit(p.RateLimit)
	v.portClashes(p)
	backends := v.backends(p.Backends)
	models := v.models(p.Models, backends)
	costs := v.costs(p.Costs, celEnv, celEnvErr)
	tiers := v.tiers(p.Tiers)
	v.quotas(p.Quotas, models, costs, tiers)
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
	v.header("identity.header", p.Identity.Header)
	if l.ModelHeader != "" && l.ModelHeader == p.Identity.Header {
		v.add("identity.header", "must differ from listener.modelHeader (both are %q)", l.ModelHeader)
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
		switch id.Header {
		case "authorization", "x-api-key":
			v.add("identity.header", "must not be %s in %s mode: the gateway removes it", id.Header, id.Mode)
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
		if msg := checkJWKSURI(j.JWKSURI); msg != "" {
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
}

// checkJWKSURI returns a problem with a key set URL, or "".
func checkJWKSURI(raw string) string {
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
	binds := []bind{
		{"listener.port", p.Listener.Address, p.Listener.Port},
		{"extProc.port", p.ExtProc.Address, p.ExtProc.Port},
		{"rateLimit.port", p.RateLimit.Address, p.RateLimit.Port},
	}
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
	}
	return names
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

func (v *validator) overrides(path string, os []Override, tiers nameSet) {
	seen := map[string]string{}
	for i, o := range os {
		opath := indexPath(path, i)
		var key string
		switch {
		case (o.User == "") == (o.Tier == ""):
			v.add(opath, "set exactly one of user and tier")
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
		v.limit(opath+".limit", o.Limit)
	}
}

func (v *validator) limit(path string, limit uint64) {
	switch {
	case limit == 0:
		v.add(path, "must be greater than 0")
	case limit > maxLimit:
		v.add(path, "must be at most %d (the ratelimit service's maximum), got %d", uint64(maxLimit), limit)
	}
}

func (v *validator) quotas(qs []Quota, models, costs nameSet, tiers nameSet) {
	seen := map[string]string{}
	windows := map[[3]string]string{}
	for i, q := range qs {
		path := indexPath("quotas", i)
		// Two quotas on one window would share a ratelimit descriptor and fight over it.
		// Report that once; the derived names of such quotas collide too, which says nothing new.
		key := [3]string{q.Model, q.Cost, q.Per}
		if first, dup := windows[key]; dup {
			v.add(path, "same model, cost and per as %s", first)
		} else {
			windows[key] = path
			v.name(path+".name", q.Name, nameRule{kind: "quota"}, seen)
		}
		switch {
		case q.Model == "":
			v.add(path+".model", "required")
		case !models.has[q.Model]:
			v.add(path+".model", "unknown model %q (%s)", q.Model, have(models.list))
		}
		switch {
		case q.Cost == "":
			v.add(path+".cost", "required")
		case !costs.has[q.Cost]:
			v.add(path+".cost", "unknown cost %q (%s)", q.Cost, have(costs.list))
		}
		v.limit(path+".limit", q.Limit)
		v.overrides(path+".overrides", q.Overrides, tiers)
		switch {
		case q.Per == "":
			v.add(path+".per", "required (one of %s)", strings.Join(Units, ", "))
		case !slices.Contains(Units, q.Per):
			v.add(path+".per", "must be one of %s, got %q", strings.Join(Units, ", "), q.Per)
		}
	}
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
