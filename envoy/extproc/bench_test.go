package extproc

import (
	"context"
	"log/slog"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// BenchmarkJSONRoundTrip measures the server's per-request overhead as Envoy sees it: one gRPC
// stream carrying request headers, a chat request body, response headers and a JSON response
// body with usage, answered message by message, with metadata for four costs (one CEL).
func BenchmarkJSONRoundTrip(b *testing.B) {
	h := newHarness(b, testConfig(b))
	response := readTestdata(b, "chat_completion.json")
	b.ReportAllocs()
	for b.Loop() {
		c := h.open(b)
		c.send(chatHeaders(len(chatBody)))
		c.send(requestBody(chatBody))
		c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		if resp := c.send(responseBody(response, true)); resp.GetDynamicMetadata() == nil {
			b.Fatal("no metadata")
		}
		c.end()
		c.cancel()
	}
}

// BenchmarkExchangeJSON is the same request without gRPC: the cost of the server's own work.
func BenchmarkExchangeJSON(b *testing.B) {
	cfg := withDefaults(testConfig(b))
	metrics := NewMetrics(nil)
	logger := slog.New(slog.DiscardHandler)
	response := readTestdata(b, "chat_completion.json")
	reqHeaders := chatHeaders(len(chatBody))
	reqBody := requestBody(chatBody)
	respHeaders := responseHeaders(false, ":status", "200", "content-type", "application/json")
	respBody := responseBody(response, true)
	b.ReportAllocs()
	for b.Loop() {
		ex := newExchange(context.Background(), cfg, logger, metrics, nil, nil)
		ex.handle(reqHeaders)
		ex.handle(reqBody)
		ex.handle(respHeaders)
		if resp := ex.handle(respBody); resp.GetDynamicMetadata() == nil {
			b.Fatal("no metadata")
		}
		ex.close()
	}
}

// BenchmarkSSEChunk measures answering one streamed response chunk, the path every chunk of a
// long stream takes.
func BenchmarkSSEChunk(b *testing.B) {
	ex, chunk := streamingExchange(b)
	b.SetBytes(int64(len(chunk.GetResponseBody().GetBody())))
	b.ReportAllocs()
	for b.Loop() {
		if resp := ex.handle(chunk); resp.GetResponseBody() == nil {
			b.Fatal("no body response")
		}
	}
}

// BenchmarkSSEChunkSent is BenchmarkSSEChunk with the answer serialized as gRPC sends it: the
// running charge each chunk carries costs its encoding.
func BenchmarkSSEChunkSent(b *testing.B) {
	ex, chunk := streamingExchange(b)
	b.SetBytes(int64(len(chunk.GetResponseBody().GetBody())))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proto.Marshal(ex.handle(chunk)); err != nil {
			b.Fatal(err)
		}
	}
}

// streamingExchange is an exchange whose streamed answer has begun, and one chunk of it.
func streamingExchange(b *testing.B) (*exchange, *extprocv3.ProcessingRequest) {
	cfg := withDefaults(testConfig(b))
	ex := newExchange(context.Background(), cfg, slog.New(slog.DiscardHandler), NewMetrics(nil), nil, nil)
	ex.handle(chatHeaders(len(chatBody)))
	ex.handle(requestBody(`{"model":"qwen3","stream":true}`))
	ex.handle(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
	return ex, responseBody([]byte(`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello there"}}]}`+"\n\n"), false)
}
