package extproc

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
)

// headerValue reads a header Envoy sent. Envoy fills raw_value (bytes) by default and value
// only when its send_header_raw_value runtime flag is off, so both are read.
func headerValue(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

// headerValues returns every value of the named (lowercase) header, in order.
func headerValues(headers *corev3.HeaderMap, name string) []string {
	var values []string
	for _, h := range headers.GetHeaders() {
		if h.GetKey() == name {
			values = append(values, headerValue(h))
		}
	}
	return values
}

// responseStatusFromAttributes reads a response's status from the attributes Envoy sends with
// the first chunk of its body; Envoy files them under the filter's name. It returns "" when
// the status is not there.
func responseStatusFromAttributes(attributes map[string]*structpb.Struct) string {
	for _, attrs := range attributes {
		if n, ok := attrs.GetFields()[envoy.AttributeResponseCode].GetKind().(*structpb.Value_NumberValue); ok {
			return strconv.FormatFloat(n.NumberValue, 'f', -1, 64)
		}
	}
	return ""
}

// firstHeader returns the first value of the named header, or "".
func firstHeader(headers *corev3.HeaderMap, name string) string {
	for _, h := range headers.GetHeaders() {
		if h.GetKey() == name {
			return headerValue(h)
		}
	}
	return ""
}

// overwrite is a header mutation entry that replaces every existing value. It sets raw_value
// only: Envoy rejects an entry with both fields set and, by default, reads raw_value.
func overwrite(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func requestHeadersResponse(common *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: common},
	}}
}

func requestBodyResponse(common *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
		RequestBody: &extprocv3.BodyResponse{Response: common},
	}}
}

func responseHeadersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{},
	}}
}

func responseBodyResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
		ResponseBody: &extprocv3.BodyResponse{},
	}}
}

// emptyResponseFor answers a message the server has nothing to say about (trailers, or
// messages after the exchange is settled) with the matching empty response, which is
// what Envoy requires for every message it sends outside observability mode.
func emptyResponseFor(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return requestHeadersResponse(nil)
	case *extprocv3.ProcessingRequest_RequestBody:
		return requestBodyResponse(nil)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return responseHeadersResponse()
	case *extprocv3.ProcessingRequest_ResponseBody:
		return responseBodyResponse()
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{},
		}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return responseTrailersResponse()
	default:
		return nil
	}
}

// responseBodyModeOverride switches how Envoy sends the rest of a response whose headers it
// sent (envoy.ExtProcEnvoyUsageMode): its body in mode and, when the body is sent, the
// trailers Envoy's usage filter may end it with, which then end the body. Envoy replaces the
// whole processing mode with the override, so every field is spelled out.
func responseBodyModeOverride(mode extprocfilterv3.ProcessingMode_BodySendMode) *extprocfilterv3.ProcessingMode {
	override := envoy.ExtProcEnvoyUsageMode()
	override.ResponseBodyMode = mode
	if mode == extprocfilterv3.ProcessingMode_NONE {
		override.ResponseTrailerMode = extprocfilterv3.ProcessingMode_SKIP
	}
	return override
}

func responseTrailersResponse() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
		ResponseTrailers: &extprocv3.TrailersResponse{},
	}}
}

// OpenAI error types used in error bodies.
const (
	errorTypeInvalidRequest = "invalid_request_error"
	errorTypeAuthentication = "authentication_error"
	errorTypeRateLimit      = "rate_limit_exceeded"
	errorTypeUnavailable    = "service_unavailable"
)

// apiError is the body of an OpenAI-style error response. Param and code are null when
// unknown, as OpenAI sends them.
type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// rejection describes a request the server answers itself.
type rejection struct {
	status  int
	outcome string
	err     apiError
	// details shows up in Envoy's %RESPONSE_CODE_DETAILS%; no spaces.
	details string
	// headers are set on the answer besides content-type.
	headers map[string]string
}

// refusal is an answer of the gateway's own: an OpenAI-style error of type typ with code, known
// in Envoy's response details as tollgate_<code>.
func refusal(status int, outcome, typ, code, message string) *rejection {
	return &rejection{
		status:  status,
		outcome: outcome,
		err:     apiError{Message: message, Type: typ, Code: optional(code)},
		details: "tollgate_" + code,
	}
}

// badRequest is a 400 invalid_request_error.
func badRequest(code, message string) *rejection {
	return refusal(400, outcomeRejected400, errorTypeInvalidRequest, code, message)
}

// unauthorized is a 401 authentication_error: no identity, or one the gateway does not accept.
func unauthorized(code, message string) *rejection {
	return refusal(401, outcomeRejected401, errorTypeAuthentication, code, message)
}

// missingModel answers a request to a generation path that names no model in its body.
func missingModel() rejection {
	return rejection{
		status:  400,
		outcome: outcomeRejected400,
		err: apiError{
			Message: "missing required parameter: model (a JSON body naming the model is required)",
			Type:    errorTypeInvalidRequest,
			Param:   optional("model"),
		},
		details: "tollgate_missing_model",
	}
}

// unknownPath answers a request for a path whose token usage tollgate cannot read.
func unknownPath(method, path string) rejection {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	return rejection{
		status:  404,
		outcome: outcomeRejected404,
		err: apiError{
			Message: fmt.Sprintf("Unknown request URL: %s %s. This gateway serves POST %s, GET /v1/models and GET "+QuotaPath+".",
				method, path, strings.Join(llmapi.Paths(), ", ")),
			Type: errorTypeInvalidRequest,
			Code: optional("unknown_url"),
		},
		details: "tollgate_unknown_path",
	}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// rejectionHeaders are an answer's headers: content-type, then headers in name order.
func rejectionHeaders(headers map[string]string) []*corev3.HeaderValueOption {
	out := []*corev3.HeaderValueOption{overwrite("content-type", "application/json")}
	for _, name := range slices.Sorted(maps.Keys(headers)) {
		out = append(out, overwrite(name, headers[name]))
	}
	return out
}

// immediateResponse answers the client directly with a JSON error body.
func immediateResponse(r rejection) *extprocv3.ProcessingResponse {
	body, err := json.Marshal(struct {
		Error apiError `json:"error"`
	}{r.err})
	if err != nil {
		// Marshalling strings and string pointers cannot fail; keep a valid body regardless.
		body = []byte(`{"error":{"message":"request rejected","type":"invalid_request_error","param":null,"code":null}}`)
	}
	return jsonResponse(r.status, r.headers, body, r.details)
}

// jsonResponse answers the client directly with a JSON body.
func jsonResponse(status int, headers map[string]string, body []byte, details string) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			// Envoy sets content-length of a local reply itself.
			Headers: &extprocv3.HeaderMutation{SetHeaders: rejectionHeaders(headers)},
			Body:    body,
			Details: details,
		},
	}}
}
