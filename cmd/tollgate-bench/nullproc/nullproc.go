// Package nullproc is the benchmark's do-nothing ext_proc server (system X): it answers every
// message Envoy sends and does nothing else — no parsing, no identity, no quota, no
// accounting. Behind the same Envoy configuration as tollgate it is the floor of the
// architecture: what an ext_proc exchange costs before any work is done in it.
//
// The one thing it must do for the request to be routed at all is what every ext_proc server
// in front of tollgate's routes does: name the model in the routing header, with the route
// cache cleared. It names the same fixed model on every request, read from nowhere. Behind a
// configuration where Envoy reads streams' usage, it also marks a body that asks for a stream
// (a substring test, not a parse), so that streams take the route Envoy reads them on.
package nullproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Server answers ext_proc streams. Every answer is built once and shared by all streams, as
// nothing in them varies.
type Server struct {
	// routed answers a request body: the fixed model header, route cache cleared.
	routed *extprocv3.ProcessingResponse
	// routedStream answers a request body that asks for a stream when streams are marked:
	// routed's header and envoy.HeaderStreamUsage; nil when they are not.
	routedStream *extprocv3.ProcessingResponse
	// routedOnHeaders answers request headers that end the request (no body follows).
	routedOnHeaders *extprocv3.ProcessingResponse
	// The answers that carry nothing.
	requestHeaders, requestTrailers, responseHeaders, responseBody, responseTrailers *extprocv3.ProcessingResponse
	// RoundTrip, when set, is made once per request, before the request body is answered:
	// the do-nothing server with one network round trip on each request's path, as a quota
	// check has (a PING to Redis, see RedisPinger). A failed one fails the request.
	RoundTrip func() error
}

// New returns a server that routes every request to model through modelHeader, and marks
// streams with envoy.HeaderStreamUsage when markStreams is set.
func New(modelHeader, model string, markStreams bool) *Server {
	routeHeader := &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: modelHeader, RawValue: []byte(model)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
	common := &extprocv3.CommonResponse{
		HeaderMutation:  &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{routeHeader}},
		ClearRouteCache: true,
	}
	var routedStream *extprocv3.ProcessingResponse
	if markStreams {
		routedStream = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
				HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{routeHeader, {
					Header:       &corev3.HeaderValue{Key: envoy.HeaderStreamUsage, RawValue: []byte("1")},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
				}}},
				ClearRouteCache: true,
			}},
		}}
	}
	return &Server{
		routed: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{Response: common},
		}},
		routedStream: routedStream,
		routedOnHeaders: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{Response: common},
		}},
		requestHeaders: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{},
		}},
		requestTrailers: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{},
		}},
		responseHeaders: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{},
		}},
		responseBody: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: &extprocv3.BodyResponse{},
		}},
		responseTrailers: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{},
		}},
	}
}

// Answer is the reply to one message: nothing, except the route on the message that carries
// the request's last part Envoy sends (its body, or its headers when the body is not sent).
func (s *Server) Answer(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch m := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if m.RequestHeaders.GetEndOfStream() {
			return s.routedOnHeaders
		}
		return s.requestHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		if s.RoundTrip != nil {
			if err := s.RoundTrip(); err != nil {
				return nil
			}
		}
		if s.routedStream != nil && bytes.Contains(m.RequestBody.GetBody(), []byte(`"stream":true`)) {
			return s.routedStream
		}
		return s.routed
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return s.requestTrailers
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return s.responseHeaders
	case *extprocv3.ProcessingRequest_ResponseBody:
		return s.responseBody
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return s.responseTrailers
	}
	return nil
}

// Process implements the ext_proc service.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := s.Answer(req)
		if resp == nil && req.GetRequestBody() != nil {
			return status.Error(codes.Unavailable, "round trip failed")
		}
		if resp == nil || req.GetObservabilityMode() {
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Network splits a listen address, host:port or unix:PATH for a Unix socket, into the network
// and address net.Listen and net.Dial take.
func Network(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	return "tcp", addr
}

// Serve listens on addr (see Network) and serves until ctx ends.
func Serve(ctx context.Context, addr string, s *Server) error {
	l, err := net.Listen(Network(addr))
	if err != nil {
		return fmt.Errorf("ext_proc listen: %w", err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, s)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	if err := g.Serve(l); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// RedisPinger returns a RoundTrip that sends PING to the Redis at addr and reads its answer,
// over connections kept open and reused (up to conns idle at once).
func RedisPinger(addr string, conns int) func() error {
	type conn struct {
		net.Conn
		r *bufio.Reader
	}
	idle := make(chan conn, conns)
	ping := func(c conn) error {
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		line, err := c.r.ReadString('\n')
		if err != nil {
			return err
		}
		if line != "+PONG\r\n" {
			return fmt.Errorf("redis answered %q", line)
		}
		return nil
	}
	return func() error {
		var c conn
		select {
		case c = <-idle:
		default:
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			c = conn{nc, bufio.NewReader(nc)}
		}
		if err := ping(c); err != nil {
			_ = c.Close()
			return err
		}
		select {
		case idle <- c:
		default: // enough idle connections already
			_ = c.Close()
		}
		return nil
	}
}
