package sim_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

// BenchmarkChatCompletion measures one non-streamed seed request through the handler, without
// the network, to show the simulator is far cheaper than the Envoy hop it is compared against.
func BenchmarkChatCompletion(b *testing.B) {
	h := sim.NewHandler(sim.Options{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(seedRequest))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

// BenchmarkChatCompletionStream measures one streamed request (6 token events, usage, [DONE]).
func BenchmarkChatCompletionStream(b *testing.B) {
	h := sim.NewHandler(sim.Options{}, nil)
	body := `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
	}
}
