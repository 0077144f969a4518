package extproc

import (
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// identify works out who sends the request. It returns the user, or the rejection to answer
// with. Every mode rejects before the quota check, so unidentified traffic is never counted
// (or, worse, let through unlimited) and creates no counters.
//
// Whatever the mode, the id must pass the policy's user id rule. An id the ratelimit service
// cannot decode (bytes that are not UTF-8) makes its check fail, and with failureMode open such
// a request would go through unlimited; the other rules keep ids legible in logs and equal to
// what the policy can name.
func (ex *exchange) identify(headers *corev3.HeaderMap, meta *corev3.Metadata) (user, team string, rejected *rejection) {
	switch ex.cfg.Identity {
	case IdentityFromAPIKey:
		user, team, rejected = ex.userFromAPIKey(headers)
	case IdentityFromJWT:
		user, team, rejected = ex.userFromJWT(meta)
	default:
		user, rejected = ex.userFromHeader(headers)
		if rejected == nil {
			team, rejected = ex.teamFromHeader(headers)
		}
	}
	if rejected != nil {
		return "", "", rejected
	}
	if err := ex.cfg.CheckUserID(user); err != nil {
		return "", "", ex.invalidUser(user, err)
	}
	if team != "" {
		if err := ex.cfg.CheckUserID(team); err != nil {
			return "", "", ex.invalidTeam(team, err)
		}
	}
	return user, team, nil
}

// teamFromHeader trusts the team header like the identity header (header mode). Without it the
// caller belongs to no team, and team quotas do not count the request.
func (ex *exchange) teamFromHeader(headers *corev3.HeaderMap) (string, *rejection) {
	if ex.cfg.TeamHeader == "" {
		return "", nil
	}
	teams := headerValues(headers, ex.cfg.TeamHeader)
	if len(teams) > 1 {
		return "", badRequest("ambiguous_team", fmt.Sprintf("the %s header must appear at most once", ex.cfg.TeamHeader))
	}
	if len(teams) == 0 || strings.TrimSpace(teams[0]) == "" {
		return "", nil
	}
	return teams[0], nil
}

// invalidTeam answers a request whose team id breaks the id rule; like invalidUser, it never
// repeats the id.
func (ex *exchange) invalidTeam(team string, problem error) *rejection {
	ex.logger.Debug("request with an invalid team id rejected", "team", userForLog(team), "problem", problem.Error())
	return badRequest("invalid_team", fmt.Sprintf("invalid team: the team id is not valid: %v", problem))
}

// invalidUser answers a request whose user id breaks the rule. The message names the problem
// but never repeats the id: it may be arbitrary bytes, and the client already has it.
func (ex *exchange) invalidUser(user string, problem error) *rejection {
	var source string
	switch ex.cfg.Identity {
	case IdentityFromAPIKey:
		source = "the API key's user"
	case IdentityFromJWT:
		source = fmt.Sprintf("the token's %q claim", ex.cfg.JWTClaim)
	default:
		source = fmt.Sprintf("the %s header", ex.cfg.IdentityHeader)
	}
	ex.logger.Debug("request with an invalid user id rejected", "mode", ex.cfg.Identity.String(),
		"user", userForLog(user), "problem", problem.Error())
	return badRequest("invalid_user", fmt.Sprintf("invalid user: %s is not a valid user id: %v", source, problem))
}

// userForLog quotes an untrusted id and cuts it short, so that the log stays one readable line
// whatever the id holds.
func userForLog(user string) string {
	const maxLogged = 64
	if len(user) > maxLogged {
		return strconv.Quote(user[:maxLogged]) + "..."
	}
	return strconv.Quote(user)
}

// userFromHeader trusts the identity header: safe only behind a proxy that authenticates users
// and sets it. A blank header counts as missing; identify checks what the value holds.
func (ex *exchange) userFromHeader(headers *corev3.HeaderMap) (string, *rejection) {
	users := headerValues(headers, ex.cfg.IdentityHeader)
	if len(users) == 0 || strings.TrimSpace(users[0]) == "" {
		return "", unauthorized("missing_user", fmt.Sprintf("missing user: the %s header is required", ex.cfg.IdentityHeader))
	}
	if len(users) > 1 {
		// Two values leave it to each filter which user pays; refuse instead of guessing.
		return "", badRequest("ambiguous_user", fmt.Sprintf("the %s header must appear once", ex.cfg.IdentityHeader))
	}
	return users[0], nil
}

// userFromAPIKey looks the client's key up by its hash. A lookup by hash leaks nothing useful
// through timing: at most how a hash begins, which does not help find a key.
func (ex *exchange) userFromAPIKey(headers *corev3.HeaderMap) (user, team string, rejected *rejection) {
	keys, otherScheme := presentedKeys(headers)
	if len(keys) == 0 {
		msg := "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
		if otherScheme {
			msg = "missing API key: the Authorization header must use the Bearer scheme"
		}
		return "", "", unauthorized("missing_api_key", msg)
	}
	for _, k := range keys[1:] {
		if k != keys[0] {
			return "", "", unauthorized("invalid_api_key", "the request carries more than one API key")
		}
	}
	hash := HashKey(keys[0])
	user, ok := ex.cfg.APIKeys[hash]
	if !ok {
		// Never echo the key: it may be a real credential sent to the wrong place.
		ex.logger.Debug("request with an unknown API key rejected")
		return "", "", unauthorized("invalid_api_key", "invalid API key")
	}
	return user, ex.cfg.APIKeyTeams[hash], nil
}

// presentedKeys returns every API key the request carries in "authorization: Bearer <key>" or
// "x-api-key", and whether an authorization header used another scheme.
func presentedKeys(headers *corev3.HeaderMap) (keys []string, otherScheme bool) {
	for _, v := range headerValues(headers, envoy.HeaderAuthorization) {
		scheme, credentials, _ := strings.Cut(strings.TrimSpace(v), " ")
		if !strings.EqualFold(scheme, "bearer") {
			otherScheme = true
			continue
		}
		if key := strings.TrimSpace(credentials); key != "" {
			keys = append(keys, key)
		}
	}
	for _, v := range headerValues(headers, envoy.HeaderAPIKey) {
		if key := strings.TrimSpace(v); key != "" {
			keys = append(keys, key)
		}
	}
	return keys, otherScheme
}

// userFromJWT reads the user claim from the payload Envoy's jwt_authn filter verified. The
// filter already refused requests without a valid token; a request that arrives here without a
// payload means the filter did not run for it, and it must not pass unidentified. The team,
// when a team claim is configured, is that claim; a token without it belongs to no team.
func (ex *exchange) userFromJWT(meta *corev3.Metadata) (user, team string, rejected *rejection) {
	payload := meta.GetFilterMetadata()[envoy.FilterJWTAuthn].GetFields()[envoy.JWTPayloadKey].GetStructValue()
	if payload == nil {
		return "", "", unauthorized("missing_token", "missing or unverified bearer token")
	}
	user, ok := claimString(payload.GetFields()[ex.cfg.JWTClaim])
	if !ok || user == "" {
		// identify checks a claim that names someone; one that names no one is a token
		// problem, answered like the other token problems.
		return "", "", unauthorized("invalid_token", fmt.Sprintf("the token's %q claim does not name a user", ex.cfg.JWTClaim))
	}
	if ex.cfg.JWTTeamClaim != "" {
		if v, present := payload.GetFields()[ex.cfg.JWTTeamClaim]; present {
			if team, ok = claimString(v); !ok {
				return "", "", unauthorized("invalid_token", fmt.Sprintf("the token's %q claim does not name a team", ex.cfg.JWTTeamClaim))
			}
		}
	}
	return user, team, nil
}

// claimString renders a string or integral number claim as a user id.
func claimString(v *structpb.Value) (string, bool) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue, true
	case *structpb.Value_NumberValue:
		n := k.NumberValue
		if n != float64(int64(n)) {
			return "", false
		}
		return strconv.FormatInt(int64(n), 10), true
	default:
		return "", false
	}
}

// identityMutation is what the request headers answer changes so that only the gateway decides
// who the user is: the identity header is overwritten with the identified user, and the
// client's credentials for the gateway are removed before anything goes upstream.
func (ex *exchange) identityMutation(user, team string) *extprocv3.HeaderMutation {
	m := &extprocv3.HeaderMutation{}
	if ex.cfg.Identity != IdentityFromHeader && ex.cfg.TeamHeader != "" {
		// The gateway names the team as it names the user; the client's header never passes.
		if team != "" {
			m.SetHeaders = append(m.SetHeaders, overwrite(ex.cfg.TeamHeader, team))
		} else {
			m.RemoveHeaders = append(m.RemoveHeaders, ex.cfg.TeamHeader)
		}
	}
	switch ex.cfg.Identity {
	case IdentityFromAPIKey:
		m.SetHeaders = append(m.SetHeaders, overwrite(ex.cfg.IdentityHeader, user))
		m.RemoveHeaders = append(m.RemoveHeaders, envoy.HeaderAuthorization, envoy.HeaderAPIKey)
	case IdentityFromJWT:
		// jwt_authn removes the token it verified; a second authorization header would
		// still be the client's.
		m.SetHeaders = append(m.SetHeaders, overwrite(ex.cfg.IdentityHeader, user))
		m.RemoveHeaders = append(m.RemoveHeaders, envoy.HeaderAuthorization)
	}
	return m
}

// upstreamKey returns the API key of the backend serving the request's model, if it has one.
func (ex *exchange) upstreamKey() (Credential, bool) {
	backend, ok := ex.cfg.Models[ex.model]
	if !ok {
		return "", false
	}
	key, ok := ex.cfg.BackendKeys[backend]
	return key, ok && key != ""
}

// setUpstreamKey adds the backend's key to m as the authorization header, and drops a removal
// of that header from m: with both in one answer the outcome would hang on the order Envoy
// applies them in.
func (ex *exchange) setUpstreamKey(m *extprocv3.HeaderMutation) {
	key, ok := ex.upstreamKey()
	if !ok {
		return
	}
	m.SetHeaders = append(m.SetHeaders, overwrite(envoy.HeaderAuthorization, "Bearer "+string(key)))
	kept := m.RemoveHeaders[:0]
	for _, h := range m.RemoveHeaders {
		if h != envoy.HeaderAuthorization {
			kept = append(kept, h)
		}
	}
	m.RemoveHeaders = kept
}
