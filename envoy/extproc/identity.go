package extproc

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// maxUserBytes bounds a user id taken from a token, as the policy bounds the ones it names:
// it becomes a ratelimit descriptor value and part of a Redis key.
const maxUserBytes = 256

// identify works out who sends the request. It returns the user, or the rejection to answer
// with. Every mode rejects before the request reaches the ratelimit filter, so unidentified
// traffic is never counted (or, worse, let through unlimited) and creates no counters.
func (ex *exchange) identify(headers *corev3.HeaderMap, meta *corev3.Metadata) (string, *rejection) {
	switch ex.cfg.Identity {
	case IdentityFromAPIKey:
		return ex.userFromAPIKey(headers)
	case IdentityFromJWT:
		return ex.userFromJWT(meta)
	default:
		return ex.userFromHeader(headers)
	}
}

// userFromHeader trusts the identity header: safe only behind a proxy that authenticates users
// and sets it.
func (ex *exchange) userFromHeader(headers *corev3.HeaderMap) (string, *rejection) {
	users := headerValues(headers, ex.cfg.IdentityHeader)
	if len(users) == 0 || strings.TrimSpace(users[0]) == "" {
		return "", &rejection{
			status:  401,
			outcome: outcomeRejected401,
			err: apiError{
				Message: fmt.Sprintf("missing user: the %s header is required", ex.cfg.IdentityHeader),
				Type:    errorTypeAuthentication,
				Code:    optional("missing_user"),
			},
			details: "tollgate_missing_user",
		}
	}
	if len(users) > 1 {
		// Two values leave it to each filter which user pays; refuse instead of guessing.
		return "", &rejection{
			status:  400,
			outcome: outcomeRejected400,
			err: apiError{
				Message: fmt.Sprintf("the %s header must appear once", ex.cfg.IdentityHeader),
				Type:    errorTypeInvalidRequest,
				Code:    optional("ambiguous_user"),
			},
			details: "tollgate_ambiguous_user",
		}
	}
	return users[0], nil
}

// userFromAPIKey looks the client's key up by its hash. A lookup by hash leaks nothing useful
// through timing: at most how a hash begins, which does not help find a key.
func (ex *exchange) userFromAPIKey(headers *corev3.HeaderMap) (string, *rejection) {
	keys, otherScheme := presentedKeys(headers)
	if len(keys) == 0 {
		msg := "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
		if otherScheme {
			msg = "missing API key: the Authorization header must use the Bearer scheme"
		}
		return "", apiKeyRejection(msg, "missing_api_key")
	}
	for _, k := range keys[1:] {
		if k != keys[0] {
			return "", apiKeyRejection("the request carries more than one API key", "invalid_api_key")
		}
	}
	user, ok := ex.cfg.APIKeys[HashKey(keys[0])]
	if !ok {
		// Never echo the key: it may be a real credential sent to the wrong place.
		ex.logger.Debug("request with an unknown API key rejected")
		return "", apiKeyRejection("invalid API key", "invalid_api_key")
	}
	return user, nil
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

func apiKeyRejection(message, code string) *rejection {
	return &rejection{
		status:  401,
		outcome: outcomeRejected401,
		err:     apiError{Message: message, Type: errorTypeAuthentication, Code: optional(code)},
		details: "tollgate_" + code,
	}
}

// userFromJWT reads the user claim from the payload Envoy's jwt_authn filter verified. The
// filter already refused requests without a valid token; a request that arrives here without a
// payload means the filter did not run for it, and it must not pass unidentified.
func (ex *exchange) userFromJWT(meta *corev3.Metadata) (string, *rejection) {
	payload := meta.GetFilterMetadata()[envoy.FilterJWTAuthn].GetFields()[envoy.JWTPayloadKey].GetStructValue()
	if payload == nil {
		return "", tokenRejection("missing or unverified bearer token", "missing_token")
	}
	user, ok := claimString(payload.GetFields()[ex.cfg.JWTClaim])
	if !ok || !usableUserID(user) {
		return "", tokenRejection(fmt.Sprintf("the token's %q claim does not name a user", ex.cfg.JWTClaim), "invalid_token")
	}
	return user, nil
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

func tokenRejection(message, code string) *rejection {
	return &rejection{
		status:  401,
		outcome: outcomeRejected401,
		err:     apiError{Message: message, Type: errorTypeAuthentication, Code: optional(code)},
		details: "tollgate_" + code,
	}
}

// usableUserID accepts what the policy accepts as a user id: printable, no whitespace, bounded.
func usableUserID(s string) bool {
	if s == "" || len(s) > maxUserBytes || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// identityMutation is what the request headers answer changes so that only the gateway decides
// who the user is: the identity header is overwritten with the identified user, and the
// client's credentials for the gateway are removed before anything goes upstream.
func (ex *exchange) identityMutation(user string) *extprocv3.HeaderMutation {
	m := &extprocv3.HeaderMutation{}
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
