package translate

import (
	"encoding/json"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aiprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ai_protocol_manager/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

// routeConfig builds the one route table: GET /v1/models answered from the policy, one route per
// model matched on the model header (which the ext_proc server sets from the request body), and a
// catch-all answering 404. The catch-all also matters before the body is read: Envoy matches a
// route when headers arrive, and the ext_proc filter must be active on that first match.
func routeConfig(p *input) (*routev3.RouteConfiguration, error) {
	var routes []*routev3.Route

	list, err := modelListRoute(p)
	if err != nil {
		return nil, err
	}
	routes = append(routes, list)

	for _, m := range p.Models {
		r, err := modelRoute(p, m)
		if err != nil {
			return nil, err
		}
		if envoyReadsStreams(p) {
			stream, err := streamUsageRoute(r)
			if err != nil {
				return nil, err
			}
			routes = append(routes, stream)
		}
		routes = append(routes, r)
	}

	unknown, err := unknownModelRoute(p)
	if err != nil {
		return nil, err
	}
	routes = append(routes, unknown)

	return &routev3.RouteConfiguration{
		Name: envoy.RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:                   envoy.VirtualHostName,
			Domains:                []string{"*"},
			Routes:                 routes,
			RequestBodyBufferLimit: wrapperspb.UInt64(uint64(p.Listener.MaxRequestBytes)),
		}},
		// Envoy validates that every referenced cluster exists before accepting the table.
		ValidateClusters: wrapperspb.Bool(true),
	}, nil
}

// modelRoute sends one model's requests to its backend and carries the model's quotas.
func modelRoute(p *input, m policies.Model) (*routev3.Route, error) {
	r := &routev3.Route{
		Name: envoy.ModelRoute(m.Name),
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{
				Name: p.Listener.ModelHeader,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Name},
				}},
			}},
		},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: envoy.BackendCluster(m.Backend)},
			// The backend's own host name, so virtual-hosted upstreams (and TLS SNI checks) work.
			HostRewriteSpecifier: &routev3.RouteAction_AutoHostRewrite{AutoHostRewrite: wrapperspb.Bool(true)},
			// Long streams are normal for LLMs; Envoy's 15 s default would cut them.
			Timeout: envoy.Duration(p.Listener.RequestTimeout.Duration),
		}},
	}
	if len(p.quotasByModel[m.Name]) > 0 {
		r.ResponseHeadersToAdd = rateLimitHeaders()
	}
	return r, nil
}

// streamUsageRoute is a model route for the streams Envoy reads: the model's route, matched
// only with envoy.HeaderStreamUsage (which it removes), with the usage filter turned on.
func streamUsageRoute(model *routev3.Route) (*routev3.Route, error) {
	enabled, err := envoy.Any(&aiprotocolv3.AiProtocolManagerPerRoute{Response: &aiprotocolv3.ResponsePerRoute{}})
	if err != nil {
		return nil, err
	}
	r := proto.Clone(model).(*routev3.Route)
	r.Name = model.GetName() + streamUsageRouteSuffix
	r.Match.Headers = append(r.Match.Headers, &routev3.HeaderMatcher{
		Name:                 envoy.HeaderStreamUsage,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
	})
	r.RequestHeadersToRemove = append(r.RequestHeadersToRemove, envoy.HeaderStreamUsage)
	r.TypedPerFilterConfig = map[string]*anypb.Any{envoy.FilterAIProtocolManager: enabled}
	return r, nil
}

// streamUsageRouteSuffix names a model's route for the streams Envoy reads.
const streamUsageRouteSuffix = "_stream"

// rateLimitHeaders tell a client of a model with quotas where it stands, in the headers
// envoy.RateLimitHeaders lists: limits, what is left of them and when they reset. The ext_proc
// server publishes the values when it checks the request; a request it did not check (the
// check failed open) gets none, as Envoy leaves out headers whose value comes out empty.
func rateLimitHeaders() []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for _, h := range envoy.RateLimitHeaders() {
		out = append(out, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: "%DYNAMIC_METADATA(" + envoy.MetadataNamespace + ":" + h.MetadataKey + ")%"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return out
}

// modelListRoute answers GET /v1/models with the policy's models, in the OpenAI list shape. The
// ext_proc filter is off here: the request has no body and needs no identity.
func modelListRoute(p *input) (*routev3.Route, error) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range p.Models {
		list.Data = append(list.Data, model{ID: m.Name, Object: "model", OwnedBy: m.Backend})
	}
	body, err := json.Marshal(list)
	if err != nil {
		return nil, fmt.Errorf("model list: %w", err)
	}
	disabled, err := envoy.Any(&extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Disabled{Disabled: true}})
	if err != nil {
		return nil, err
	}
	return &routev3.Route{
		Name:  envoy.RouteModelList,
		Match: modelListMatch(),
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 200,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(body)}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{jsonContentType()},
		TypedPerFilterConfig: map[string]*anypb.Any{envoy.FilterExtProc: disabled},
	}, nil
}

// unknownModelRoute answers 404 with an OpenAI-style error naming the model the client asked for.
func unknownModelRoute(p *input) (*routev3.Route, error) {
	body, err := openAIError(
		"The model '%REQ("+p.Listener.ModelHeader+")%' does not exist or is not served by this gateway.",
		"invalid_request_error", "model", "model_not_found")
	if err != nil {
		return nil, err
	}
	return &routev3.Route{
		Name:  envoy.RouteUnknownModel,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status:     404,
			BodyFormat: body,
		}},
	}, nil
}

// openAIError is a JSON body format {"error":{message,type,param,code}} whose strings may use
// Envoy's substitution operators; Envoy escapes the substituted values as JSON strings.
func openAIError(message, errType, param, code string) (*corev3.SubstitutionFormatString, error) {
	fields := map[string]any{"message": message, "type": errType}
	if param != "" {
		fields["param"] = param
	}
	if code != "" {
		fields["code"] = code
	}
	s, err := structpb.NewStruct(map[string]any{"error": fields})
	if err != nil {
		return nil, fmt.Errorf("error body: %w", err)
	}
	return &corev3.SubstitutionFormatString{
		Format:      &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s},
		ContentType: "application/json",
	}, nil
}

func jsonContentType() *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: "content-type", Value: "application/json"},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
