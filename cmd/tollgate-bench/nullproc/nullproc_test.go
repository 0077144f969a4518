package nullproc

import (
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/tollgate-dev/tollgate/envoy"
)

// The server routes on the request's last part and answers every other message with the
// empty answer of its own kind, which is what Envoy requires.
func TestAnswerRoutesOnTheLastPartOfTheRequest(t *testing.T) {
	s := New("x-model", "qwen3", false)
	routedBy := func(resp *extprocv3.ProcessingResponse) string {
		var common *extprocv3.CommonResponse
		switch r := resp.GetResponse().(type) {
		case *extprocv3.ProcessingResponse_RequestHeaders:
			common = r.RequestHeaders.GetResponse()
		case *extprocv3.ProcessingResponse_RequestBody:
			common = r.RequestBody.GetResponse()
		}
		for _, h := range common.GetHeaderMutation().GetSetHeaders() {
			if h.GetHeader().GetKey() == "x-model" && common.GetClearRouteCache() {
				return string(h.GetHeader().GetRawValue())
			}
		}
		return ""
	}

	headers := s.Answer(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}})
	if headers.GetRequestHeaders() == nil || routedBy(headers) != "" {
		t.Errorf("headers with a body to follow: %v", headers)
	}
	body := s.Answer(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{EndOfStream: true}}})
	if body.GetRequestBody() == nil || routedBy(body) != "qwen3" {
		t.Errorf("request body: %v", body)
	}
	only := s.Answer(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}}})
	if only.GetRequestHeaders() == nil || routedBy(only) != "qwen3" {
		t.Errorf("headers that end the request: %v", only)
	}
	for name, tc := range map[string]struct {
		req  *extprocv3.ProcessingRequest
		kind func(*extprocv3.ProcessingResponse) bool
	}{
		"response headers": {&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		"response body": {&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseBody() != nil }},
		"request trailers": {&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestTrailers() != nil }},
		"response trailers": {&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseTrailers() != nil }},
	} {
		if resp := s.Answer(tc.req); !tc.kind(resp) || routedBy(resp) != "" {
			t.Errorf("%s: answered %v", name, resp)
		}
	}
}

// With streams marked, a body asking for a stream also carries the mark that routes it where
// Envoy reads its usage; any other body does not.
func TestAnswerMarksStreams(t *testing.T) {
	marked := func(s *Server, body string) bool {
		resp := s.Answer(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true}}})
		for _, h := range resp.GetRequestBody().GetResponse().GetHeaderMutation().GetSetHeaders() {
			if h.GetHeader().GetKey() == envoy.HeaderStreamUsage {
				return true
			}
		}
		return false
	}
	const stream, json = `{"model":"m","stream":true}`, `{"model":"m"}`
	if s := New("x-model", "qwen3", true); !marked(s, stream) || marked(s, json) {
		t.Errorf("marking streams: stream marked %v, JSON marked %v", marked(s, stream), marked(s, json))
	}
	if s := New("x-model", "qwen3", false); marked(s, stream) {
		t.Error("a stream marked without marking on")
	}
}
