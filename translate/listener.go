package translate

import (
	"fmt"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	fileaccesslogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	aiprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ai_protocol_manager/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

const (
	// defaultConnectionBufferBytes is Envoy's own per-connection buffer limit, kept for
	// policies that allow smaller bodies.
	defaultConnectionBufferBytes = 1 << 20
	// ExtProcMessageTimeout bounds one ext_proc round trip. The server answers in microseconds;
	// a stall this long means it is gone, and the request fails closed rather than hanging.
	ExtProcMessageTimeout = 5 * time.Second
	// requestHeadersTimeout closes clients that never finish sending headers (slowloris).
	requestHeadersTimeout = 10 * time.Second
	// requestReceiveTimeout bounds receiving a whole request, body included, so a client
	// trickling its body cannot hold a connection forever. It stops counting once the request
	// is received: responses, however long they stream, are not cut by it.
	requestReceiveTimeout = time.Minute
	// streamIdleTimeout cuts a stream that has been silent this long in both directions; a
	// healthy LLM stream sends tokens far more often, and a slow first token stays well below it.
	streamIdleTimeout = 5 * time.Minute
	// maxParsedStreamEvents bounds the events of one stream Envoy parses for usage: above
	// any output length a model produces (one event per token at most, plus a few).
	maxParsedStreamEvents = 1 << 20
	// retryAfterSeconds is what Envoy's own 503s tell clients to wait: a full in-flight bound
	// or an overloaded gateway frees up within a second or so, and SDKs retry sooner anyway.
	retryAfterSeconds = "1"
)

// listener builds the client-facing listener: one HTTP connection manager with the filter chain
// buffer → ext_proc → router (buffer → ext_proc → ai_protocol_manager → router when Envoy reads
// streams' usage; jwt_authn first in jwt identity mode), routes over RDS, and an access log
// of every request's user, model and tokens. Quotas are the ext_proc server's: it checks them
// with the ratelimit service before a request goes upstream and charges them when it ends, so
// Envoy itself never calls the ratelimit service.
func listener(p *input) (*listenerv3.Listener, error) {
	extProc, err := extProcFilter(p)
	if err != nil {
		return nil, err
	}
	router, err := httpFilter(envoy.FilterRouter, &routerv3.Router{})
	if err != nil {
		return nil, err
	}
	accessLog, err := accessLog(p)
	if err != nil {
		return nil, err
	}
	localReply, err := localReplyConfig(p)
	if err != nil {
		return nil, err
	}
	// The whole request is read before the ext_proc stream opens. A request refused there
	// (the in-flight bound, the ext_proc server away) then leaves the connection reusable:
	// refused mid-body, an HTTP/1 connection cannot be, and a refusal during a spike would
	// cost every client a new connection. And a client still sending its body holds no
	// ext_proc stream, so slow uploads do not count against the in-flight bound.
	buffer, err := httpFilter(envoy.FilterBuffer, &bufferv3.Buffer{
		MaxRequestBytes: wrapperspb.UInt32(uint32(p.Listener.MaxRequestBytes)),
	})
	if err != nil {
		return nil, err
	}
	filters := []*hcmv3.HttpFilter{buffer, extProc, router}
	if envoyReadsStreams(p) {
		usage, err := usageFilter()
		if err != nil {
			return nil, err
		}
		// On the response path filters run in reverse: the usage filter reads the response
		// before the ext_proc filter sees its trailers.
		filters = []*hcmv3.HttpFilter{buffer, extProc, usage, router}
	}
	if usesJWT(p) {
		jwt, err := jwtAuthnFilter(p)
		if err != nil {
			return nil, err
		}
		filters = append([]*hcmv3.HttpFilter{jwt}, filters...)
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "tollgate",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: envoy.RouteConfigName,
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		}},
		HttpFilters:           filters,
		AccessLog:             []*accesslogv3.AccessLog{accessLog},
		LocalReplyConfig:      localReply,
		RequestHeadersTimeout: envoy.Duration(requestHeadersTimeout),
		RequestTimeout:        envoy.Duration(requestReceiveTimeout),
		StreamIdleTimeout:     envoy.Duration(streamIdleTimeout),
		NormalizePath:         wrapperspb.Bool(true),
		MergeSlashes:          true,
		// "/v1/chat%2Fcompletions" is "/v1/chat/completions" to most backends, so it becomes
		// that before anything looks at the path: the ext_proc server meters (and the backend
		// receives) the path as decoded, never a spelling that only the backend decodes.
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD,
		UseRemoteAddress:             wrapperspb.Bool(true),
	}
	hcmAny, err := envoy.Any(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    envoy.ListenerName,
		Address: envoy.SocketAddress(p.Listener.Address, p.Listener.Port),
		// The ext_proc filter buffers a request's whole body, and Envoy bounds what one
		// stream may buffer by its connection's buffer limit (1 MiB unless set): without this
		// a policy's larger maxRequestBytes would still end in a 413 at 1 MiB.
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(uint32(max(p.Listener.MaxRequestBytes, defaultConnectionBufferBytes))),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny},
			}},
		}},
	}, nil
}

// extProcFilter sends request headers and the buffered request body to the ext_proc server
// (model routing, identity, include_usage), and the response body as it streams, with the
// response status as an attribute of its first chunk. A JSON answer is usually one chunk, so a
// non-streamed request costs four messages (the last an empty end of stream), a stream one per
// chunk. When Envoy reads streams' usage (envoy.ExtProcEnvoyUsageMode) a stream's response
// headers and trailers are sent instead, the usage with them: four messages. It fails closed:
// without it a request has no trustworthy model or user.
func extProcFilter(p *input) (*hcmv3.HttpFilter, error) {
	metadata := &extprocfilterv3.MetadataOptions{
		ReceivingNamespaces: &extprocfilterv3.MetadataOptions_MetadataNamespaces{
			Untyped: []string{envoy.MetadataNamespace},
		},
	}
	forwarded := &extprocfilterv3.MetadataOptions_MetadataNamespaces{}
	if usesJWT(p) {
		// The verified token payload, which names the user.
		forwarded.Untyped = append(forwarded.Untyped, envoy.FilterJWTAuthn)
	}
	mode := envoy.ExtProcMode()
	fromEnvoy := envoyReadsStreams(p)
	if fromEnvoy {
		// The usage Envoy read, which arrives with the response trailers.
		forwarded.Typed = []string{envoy.MetadataTokenUsage}
		mode = envoy.ExtProcEnvoyUsageMode()
	}
	if usesJWT(p) || fromEnvoy {
		metadata.ForwardingNamespaces = forwarded
	}
	return httpFilter(envoy.FilterExtProc, &extprocfilterv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
				ClusterName: envoy.ClusterExtProc,
			}},
		},
		ProcessingMode:    mode,
		AllowModeOverride: fromEnvoy,
		// The response status rides on the first body chunk: one round trip fewer per
		// response than a headers message of its own.
		ResponseAttributes: []string{envoy.AttributeResponseCode},
		MessageTimeout:     envoy.Duration(ExtProcMessageTimeout),
		FailureModeAllow:   false,
		StatusOnError:      &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		MetadataOptions:    metadata,
	})
}

// envoyReadsStreams says whether Envoy reads streams' usage (extProc.streamUsage).
func envoyReadsStreams(p *input) bool {
	return p.ExtProc.StreamUsage == policies.StreamUsageEnvoy
}

// usageFilter reads token usage from a stream into typed metadata and, once it is published,
// ends the stream with trailers: the ext_proc server then gets one trailers message with the
// usage instead of every chunk. It is on only in the routes of streams Envoy reads (see
// envoy.HeaderStreamUsage). The API is told from the response itself.
func usageFilter() (*hcmv3.HttpFilter, error) {
	return httpFilter(envoy.FilterAIProtocolManager, &aiprotocolv3.AiProtocolManager{
		ResponseHandling: &aiprotocolv3.ResponseHandling{
			TokenUsage: &aiprotocolv3.TokenUsageExtraction{
				UsageSignal: aiprotocolv3.TokenUsageExtraction_SYNTHESIZE_TRAILERS,
				Limits: &aiprotocolv3.TokenUsageExtractionLimits{
					// Chat Completions parses every chunk; the default (65,536) would drop
					// the usage of a longer stream, which is then charged its reservation.
					MaxParsedSseEvents: wrapperspb.UInt32(maxParsedStreamEvents),
				},
			},
		},
	})
}

// accessLog is the usage log: one JSON line per request (docs/operations.md lists the fields),
// to Envoy's standard output or to usageLog.path. Who sent it, the model and backend, what it
// was charged and on which basis, and the quota check's result come from the metadata the
// ext_proc server publishes.
func accessLog(p *input) (*accesslogv3.AccessLog, error) {
	meta := func(key string) string {
		return "%DYNAMIC_METADATA(" + envoy.MetadataNamespace + ":" + key + ")%"
	}
	fields := map[string]any{
		"time":                "%START_TIME%",
		"request_id":          "%REQ(X-REQUEST-ID)%",
		"method":              "%REQ(:METHOD)%",
		"path":                "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
		"status":              "%RESPONSE_CODE%",
		"details":             "%RESPONSE_CODE_DETAILS%",
		"user":                "%REQ(" + p.Identity.Header + ")%",
		"model":               meta("model"),
		"backend":             meta("backend"),
		"route":               "%ROUTE_NAME%",
		"upstream":            "%UPSTREAM_CLUSTER%",
		"duration_ms":         "%DURATION%",
		"input_tokens":        meta("input_tokens"),
		"cached_input_tokens": meta("cached_input_tokens"),
		"output_tokens":       meta("output_tokens"),
		"total_tokens":        meta("total_tokens"),
		"usage_basis":         meta("usage_basis"),
		"quota_decision":      meta("quota_decision"),
		"quota_refused_by":    meta("quota_refused_by"),
	}
	if p.Identity.TeamHeader != "" {
		fields["team"] = "%REQ(" + p.Identity.TeamHeader + ")%"
	}
	for _, m := range p.Models {
		if m.Prices != nil {
			fields["price"] = meta("price")
			fields["currency"] = p.Currency.Code
			break
		}
	}
	for _, c := range p.Costs {
		fields["cost_"+c.Name] = meta(c.Name)
	}
	format, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, err
	}
	logFormat := &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: format}}
	if path := p.UsageLog.Path; path != "" {
		cfg, err := envoy.Any(&fileaccesslogv3.FileAccessLog{
			Path:            path,
			AccessLogFormat: &fileaccesslogv3.FileAccessLog_LogFormat{LogFormat: logFormat},
		})
		if err != nil {
			return nil, err
		}
		return &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}, nil
	}
	cfg, err := envoy.Any(&streamv3.StdoutAccessLog{
		AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: logFormat},
	})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{
		Name:       "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg},
	}, nil
}

// localReplyConfig gives Envoy's own replies an OpenAI-style JSON body, so clients see the same
// error shape whether tollgate, Envoy or a backend answered. Replies the ext_proc server made
// keep their body and headers: their details start with "tollgate_", and no mapper matches them.
// Refusals of load the gateway may take again in a moment carry Retry-After.
func localReplyConfig(p *input) (*hcmv3.LocalReplyConfig, error) {
	const notTollgate = "!response.code_details.startsWith('tollgate_')"
	// An ext_proc stream refused by the ext_proc cluster's circuit breaker is the gateway's
	// in-flight bound; a backend's overflow is the router's (upstream_reset_..{overflow}).
	const extProcOverflow = "response.code_details.startsWith('ext_proc_error') && response.code_details.contains('overflow')"
	replies := []struct {
		status         int
		when           string // a CEL condition besides the status, or ""
		message, etype string
		code           string
		retryAfter     bool
	}{
		// request_headers_timeout: the client took too long to send its headers.
		{status: 408, message: "The request headers did not arrive in time.", etype: "invalid_request_error"},
		{status: 413, message: "Request body too large for this gateway.", etype: "invalid_request_error"},
		// Envoy's own 502: the backend answered with something that is not valid HTTP, or
		// reset the connection mid-answer before the client got headers.
		{status: 502, message: "The upstream model server sent an invalid response (%RESPONSE_CODE_DETAILS%).", etype: "bad_gateway"},
		{status: 503, when: extProcOverflow, retryAfter: true, etype: "service_unavailable", code: "gateway_at_capacity",
			message: fmt.Sprintf("The gateway is serving as many requests as it takes at once (%d, listener.maxConcurrentRequests). Try again in a moment.", p.Listener.MaxConcurrentRequests)},
		// The overload manager refuses new requests while Envoy's heap is nearly full.
		{status: 503, when: "response.code_details == 'overload'", retryAfter: true, etype: "service_unavailable", code: "gateway_overloaded",
			message: "The gateway is overloaded. Try again in a moment."},
		{status: 503, when: "response.code_details.contains('overflow')", retryAfter: true, etype: "service_unavailable", code: "backend_at_capacity",
			message: "The gateway is sending this backend as many requests as it takes at once (backends[].maxConcurrentRequests). Try again in a moment."},
		{status: 503, retryAfter: true, etype: "service_unavailable",
			message: "The gateway could not process the request (%RESPONSE_CODE_DETAILS%). Try again later."},
		{status: 504, message: "The upstream model server did not answer in time.", etype: "timeout"},
	}
	cfg := &hcmv3.LocalReplyConfig{}
	if usesJWT(p) {
		mappers, err := jwtReplyMappers()
		if err != nil {
			return nil, err
		}
		cfg.Mappers = append(cfg.Mappers, mappers...)
	}
	for _, r := range replies {
		body, err := openAIError(r.message, r.etype, "", r.code)
		if err != nil {
			return nil, err
		}
		expression := fmt.Sprintf("response.code == %d && %s", r.status, notTollgate)
		if r.when != "" {
			expression += " && " + r.when
		}
		m, err := celMapper(expression, body)
		if err != nil {
			return nil, err
		}
		if r.retryAfter {
			m.HeadersToAdd = []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "retry-after", Value: retryAfterSeconds},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}}
		}
		cfg.Mappers = append(cfg.Mappers, m)
	}
	return cfg, nil
}

// celMapper rewrites the body of the local replies the CEL expression matches.
func celMapper(expression string, body *corev3.SubstitutionFormatString) (*hcmv3.ResponseMapper, error) {
	cel, err := envoy.Any(&celfilterv3.ExpressionFilter{Expression: expression})
	if err != nil {
		return nil, err
	}
	return &hcmv3.ResponseMapper{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
			ExtensionFilter: &accesslogv3.ExtensionFilter{
				Name:       "envoy.access_loggers.extension_filters.cel",
				ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: cel},
			},
		}},
		BodyFormatOverride: body,
	}, nil
}

func httpFilter(name string, cfg proto.Message) (*hcmv3.HttpFilter, error) {
	a, err := envoy.Any(cfg)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}
