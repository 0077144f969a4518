package nullproc

import (
	"bufio"
	"errors"
	"net"
	"sync/atomic"
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

// With a round trip set, each request body waits for one before it is answered, and a failed
// one fails the request; RedisPinger's round trip is a PING answered PONG, over connections it
// reuses.
func TestRoundTripPerRequestBody(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	var pings, conns atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer func() { _ = c.Close() }()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					answer := "-ERR unknown\r\n"
					if line == "PING\r\n" {
						pings.Add(1)
						answer = "+PONG\r\n"
					}
					if _, err := c.Write([]byte(answer)); err != nil {
						return
					}
				}
			}()
		}
	}()

	s := New("x-model", "qwen3", false)
	s.RoundTrip = RedisPinger(l.Addr().String(), 2)
	body := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{EndOfStream: true}}}
	for range 3 {
		if resp := s.Answer(body); resp.GetRequestBody() == nil {
			t.Fatalf("request body answered %v", resp)
		}
	}
	s.Answer(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{}}})
	if pings.Load() != 3 || conns.Load() != 1 {
		t.Errorf("%d pings over %d connections, want 3 over 1 (one per request body, reused)", pings.Load(), conns.Load())
	}

	s.RoundTrip = func() error { return errors.New("redis away") }
	if resp := s.Answer(body); resp != nil {
		t.Errorf("a failed round trip answered %v, want no answer (the request fails)", resp)
	}
}
