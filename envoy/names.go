// Package envoy holds the well-known names tollgate shares between the resources it generates
// (translate), the Envoy bootstrap (envoy/bootstrap) and its ext_proc server (envoy/extproc),
// plus small builders for the protobuf messages they all need. Keeping the names in one place
// means a header or metadata key can never drift between the side that writes it and the side
// that reads it.
package envoy

// HTTP filter names, as Envoy registers them.
const (
	FilterExtProc = "envoy.filters.http.ext_proc"
	FilterRouter  = "envoy.filters.http.router"
	// FilterBuffer holds a request until its body has arrived whole.
	FilterBuffer = "envoy.filters.http.buffer"
	// FilterJWTAuthn verifies JSON Web Tokens. It writes verified payloads into dynamic
	// metadata under its own name as the namespace.
	FilterJWTAuthn = "envoy.filters.http.jwt_authn"
)

// JSON Web Token identity.
const (
	// JWTProvider is the name of the one jwt_authn provider tollgate configures.
	JWTProvider = "tollgate"
	// JWTPayloadKey is the key, inside the FilterJWTAuthn metadata namespace, of a verified
	// token's payload; the ext_proc server reads the user claim from it.
	JWTPayloadKey = "payload"
	// ClusterJWKS is the cluster Envoy fetches a remote JSON Web Key Set through.
	ClusterJWKS = "tollgate_jwks"
)

// Credential headers a client authenticates with in API key mode. Both are removed before a
// request goes upstream.
const (
	HeaderAuthorization = "authorization"
	HeaderAPIKey        = "x-api-key"
)

// Resource names tollgate generates.
const (
	// ListenerName is the client-facing HTTP listener.
	ListenerName = "tollgate_http"
	// RouteConfigName is the route table the listener loads over RDS.
	RouteConfigName = "tollgate_routes"
	// VirtualHostName is the single virtual host inside the route table.
	VirtualHostName = "llm"
	// ClusterExtProc is the cluster Envoy uses to reach tollgate's ext_proc server.
	ClusterExtProc = "tollgate_extproc"
	// ClusterXDS is the bootstrap's static cluster pointing at tollgate's ADS server.
	ClusterXDS = "tollgate_xds"
	// BackendClusterPrefix prefixes a backend's name to form its cluster name.
	BackendClusterPrefix = "backend_"
	// ModelRoutePrefix prefixes a model's name to form its route name.
	ModelRoutePrefix = "model_"
	// RouteModelList is the route answering GET /v1/models from the policy.
	RouteModelList = "list_models"
	// RouteUnknownModel is the catch-all route answering 404 for models the policy lacks.
	RouteUnknownModel = "unknown_model"
)

// Node identity. Every Envoy of one deployment shares one snapshot; the ratelimit service
// connects with its own node id and gets only its RateLimitConfig resources.
const (
	NodeCluster        = "tollgate"
	DefaultEnvoyNodeID = "tollgate-envoy"
	// NodeMetadataBounds is the key of the node metadata where a bootstrap from tollgate
	// states the bounds it gave Envoy (heap, client connections), so the control plane can
	// show every connected Envoy's.
	NodeMetadataBounds   = "tollgate_bounds"
	DefaultRateLimitNode = "tollgate-ratelimit"
)

// Headers and metadata.
const (
	// MetadataNamespace is the dynamic metadata namespace the ext_proc server writes costs and
	// usage into. Envoy drops ext_proc metadata in any namespace the filter does not list in
	// metadata_options.receiving_namespaces.
	MetadataNamespace = "io.tollgate"
	// Metadata keys, in MetadataNamespace, of the x-ratelimit-* response headers (draft 03 of
	// the IETF RateLimit header fields): the ext_proc server writes them when it checks a
	// request's quotas, the routes of models with quotas turn them into headers.
	MetadataRateLimitLimit     = "ratelimit_limit"
	MetadataRateLimitRemaining = "ratelimit_remaining"
	MetadataRateLimitReset     = "ratelimit_reset"
)

// RateLimitHeader is a response header whose value the ext_proc server publishes as metadata.
type RateLimitHeader struct{ Name, MetadataKey string }

// RateLimitHeaders are the x-ratelimit-* headers a checked request's answer carries: draft 03
// of the IETF RateLimit header fields for the enforced quota with the smallest share left, and
// OpenAI's names for the tightest token quota and the tightest request quota (a header whose
// value is not published, such as the requests ones without a request quota, is left out).
func RateLimitHeaders() []RateLimitHeader {
	return []RateLimitHeader{
		{"x-ratelimit-limit", MetadataRateLimitLimit},
		{"x-ratelimit-remaining", MetadataRateLimitRemaining},
		{"x-ratelimit-reset", MetadataRateLimitReset},
		{"x-ratelimit-limit-tokens", "ratelimit_limit_tokens"},
		{"x-ratelimit-remaining-tokens", "ratelimit_remaining_tokens"},
		{"x-ratelimit-reset-tokens", "ratelimit_reset_tokens"},
		{"x-ratelimit-limit-requests", "ratelimit_limit_requests"},
		{"x-ratelimit-remaining-requests", "ratelimit_remaining_requests"},
		{"x-ratelimit-reset-requests", "ratelimit_reset_requests"},
	}
}

// AttributeResponseCode is the response attribute holding the status code. Envoy sends it with
// the first chunk of a response body, in place of a response headers message. (Header values
// cannot be attributes: Envoy does not evaluate an index into a header map.)
const AttributeResponseCode = "response.code"

// Default addresses of tollgate's own processes (all configurable). The policy's addresses
// (listener, ext_proc, ratelimit service) have their defaults in the policy.
const (
	DefaultAdminAddress = "127.0.0.1:19000"
	DefaultXDSAddress   = "127.0.0.1:18000"
	DefaultMetricsPort  = 1064
)

// BackendCluster returns the cluster name of a backend.
func BackendCluster(backend string) string { return BackendClusterPrefix + backend }

// ModelRoute returns the route name of a model.
func ModelRoute(model string) string { return ModelRoutePrefix + model }
