package translate

import (
	"fmt"
	"net/url"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

// jwksFetchTimeout bounds one fetch of a remote key set.
const jwksFetchTimeout = 5 * time.Second

// usesJWT reports whether the policy identifies users by JSON Web Token.
func usesJWT(p *input) bool { return p.Identity.Mode == policies.IdentityJWT }

// jwtAuthnFilter verifies the bearer token of every request before anything else runs: an
// invalid or missing token is answered 401 by Envoy itself, before the body is buffered or the
// ext_proc server and the ratelimit service see the request. The verified payload goes into
// dynamic metadata, where the ext_proc server reads the user claim.
func jwtAuthnFilter(p *input) (*hcmv3.HttpFilter, error) {
	j := p.Identity.JWT
	provider := &jwtv3.JwtProvider{
		Issuer:    j.Issuer,
		Audiences: j.Audiences,
		// Only the Authorization header: a token in a query string ends up in access logs.
		FromHeaders: []*jwtv3.JwtHeader{{Name: "Authorization", ValuePrefix: "Bearer "}},
		// The token is for the gateway, not the backend; false removes it after verification.
		Forward:           false,
		PayloadInMetadata: envoy.JWTPayloadKey,
		// A token without an expiry would be a credential that never ends.
		RequireExpiration: true,
	}
	if j.JWKSURI != "" {
		provider.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
			HttpUri: &corev3.HttpUri{
				Uri:              j.JWKSURI,
				HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: envoy.ClusterJWKS},
				Timeout:          envoy.Duration(jwksFetchTimeout),
			},
			CacheDuration: envoy.Duration(j.JWKSCacheDuration.Duration),
		}}
	} else {
		provider.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: j.JWKS},
		}}
	}
	requireToken := &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
		RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: envoy.JWTProvider},
	}}
	return httpFilter(envoy.FilterJWTAuthn, &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{envoy.JWTProvider: provider},
		Rules: []*jwtv3.RequirementRule{
			// The model list is answered from the policy without identity in every mode.
			{Match: modelListMatch()},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, RequirementType: requireToken},
		},
	})
}

// modelListMatch matches GET /v1/models, the route answered from the policy.
func modelListMatch() *routev3.RouteMatch {
	return &routev3.RouteMatch{
		PathSpecifier: &routev3.RouteMatch_Path{Path: "/v1/models"},
		Headers: []*routev3.HeaderMatcher{{
			Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"},
			}},
		}},
	}
}

// jwksCluster is the cluster Envoy fetches a remote key set through; https gets TLS with SNI.
func jwksCluster(p *input) (*clusterv3.Cluster, error) {
	u, err := url.Parse(p.Identity.JWT.JWKSURI)
	if err != nil {
		return nil, fmt.Errorf("jwksURI: %w", err)
	}
	return urlCluster(envoy.ClusterJWKS, u, policies.DefaultConnectTimeout)
}

// jwtReplyMappers give jwt_authn's own rejections ("Jwt is expired", plain text) the
// OpenAI-style JSON body every other error has. They match on the response code details
// jwt_authn sets, so the ext_proc server's 401s, which already have a JSON body, keep theirs.
func jwtReplyMappers() ([]*hcmv3.ResponseMapper, error) {
	// jwt_authn's details are "jwt_authn_access_denied{<its message, spaces as _>}".
	const denied = "jwt_authn_access_denied"
	mappers := []struct {
		expression  string
		etype, code string
	}{
		{"response.code == 401 && response.code_details == '" + denied + "{Jwt_is_missing}'", "authentication_error", "missing_token"},
		{"response.code == 401 && response.code_details.startsWith('" + denied + "')", "authentication_error", "invalid_token"},
		// jwt_authn answers 403 for a valid token of an audience the policy does not accept.
		{"response.code == 403 && response.code_details.startsWith('" + denied + "')", "permission_error", "invalid_audience"},
	}
	var out []*hcmv3.ResponseMapper
	for _, m := range mappers {
		body, err := openAIError("Authentication failed: %LOCAL_REPLY_BODY%.", m.etype, "", m.code)
		if err != nil {
			return nil, err
		}
		mapper, err := celMapper(m.expression, body)
		if err != nil {
			return nil, err
		}
		out = append(out, mapper)
	}
	return out, nil
}
