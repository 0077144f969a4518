package extproc

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

// responseTrailers is the trailers message Envoy sends after its usage filter ended a stream,
// with usage as the filter's typed metadata (nil: the filter published none).
func responseTrailers(t *testing.T, usage *aiv3.TokenUsage) *extprocv3.ProcessingRequest {
	t.Helper()
	meta := &corev3.Metadata{}
	if usage != nil {
		typed, err := anypb.New(usage)
		if err != nil {
			t.Fatal(err)
		}
		meta.TypedFilterMetadata = map[string]*anypb.Any{envoy.MetadataTokenUsage: typed}
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}},
		MetadataContext: meta,
	}
}

// marksStream reports whether a request body answer marks the request for Envoy's usage filter.
func marksStream(t *testing.T, resp *extprocv3.ProcessingResponse) bool {
	t.Helper()
	h, ok := setHeaders(t, resp.GetRequestBody().GetResponse().GetHeaderMutation())[envoy.HeaderStreamUsage]
	return ok && string(h.GetHeader().GetRawValue()) == "1"
}

const streamBody = `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"hi"}]}`

// A stream Envoy reads is marked for it, its response headers leave the body unsent and
// publish the reservation (what a stream that breaks off is charged), and the trailers settle
// it: a complete record exactly, anything less as a stream without usage.
func TestStreamSettledFromEnvoysUsage(t *testing.T) {
	u := wrapperspb.UInt64
	complete := &aiv3.TokenUsage{InputTokens: u(11), OutputTokens: u(23), TotalTokens: u(34), ProviderTotalTokens: u(35),
		InputTokenDetails: &aiv3.InputTokenDetails{CachedTokens: u(5)}, ExtractionStatus: aiv3.TokenUsage_COMPLETE}
	partial := &aiv3.TokenUsage{InputTokens: u(11), OutputTokens: u(3), ExtractionStatus: aiv3.TokenUsage_PARTIAL}
	ceiling := float64(policies.DefaultMaxOutputTokens)
	tests := []struct {
		name                 string
		usage                *aiv3.TokenUsage
		basis                string
		input, output, total float64
		outcome              string
	}{
		{"complete", complete, basisUsage, 11, 23, 35, outcomeOK},
		{"partial", partial, basisEstimate, 0, ceiling, 0, outcomeUsageMissing},
		{"none published", nil, basisEstimate, 0, ceiling, 0, outcomeUsageMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.EnvoyReadsStreams = true
			h := newHarness(t, cfg)
			c := h.open(t)
			if !marksStream(t, sendChat(t, c, streamBody)) {
				t.Fatal("the stream is not marked for Envoy's usage filter")
			}
			resp := c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
			if resp.GetModeOverride() != nil {
				t.Fatalf("the body of a stream Envoy reads is switched on: %v", resp.GetModeOverride())
			}
			if f := metadataFields(resp); f[metadataUsageBasis] != basisEstimate || f[metadataOutputTokens] != ceiling {
				t.Errorf("published before the trailers: %v, want the reservation (output %v)", f, ceiling)
			}
			f := metadataFields(c.send(responseTrailers(t, tt.usage)))
			if f[metadataUsageBasis] != tt.basis || f[metadataOutputTokens] != tt.output {
				t.Errorf("settled with %v, want basis %s and output %v", f, tt.basis, tt.output)
			}
			if tt.basis == basisUsage && (f[metadataInputTokens] != tt.input || f[metadataTotalTokens] != tt.total || f[metadataCached] != float64(5)) {
				t.Errorf("settled with %v, want input %v, total %v (the provider's) and 5 cached", f, tt.input, tt.total)
			}
			c.end()
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(tt.outcome)); n != 1 {
				t.Errorf("%s outcomes = %v, want 1", tt.outcome, n)
			}
		})
	}
}

// Only streams of the APIs Envoy reads are marked, and only when Envoy reads streams.
func TestOnlyStreamsEnvoyReadsAreMarked(t *testing.T) {
	tests := []struct {
		name, path, body string
		envoyReads, want bool
	}{
		{"chat stream", "/v1/chat/completions", streamBody, true, true},
		{"chat JSON", "/v1/chat/completions", chatBody, true, false},
		{"legacy completions stream", "/v1/completions", `{"model":"qwen3","stream":true,"prompt":"hi"}`, true, false},
		{"chat stream, tollgate reads streams", "/v1/chat/completions", streamBody, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.EnvoyReadsStreams = tt.envoyReads
			c := newHarness(t, cfg).open(t)
			c.send(requestHeaders(false, ":method", "POST", ":path", tt.path, "content-type", "application/json",
				policies.DefaultIdentityHeader, "alice"))
			if got := marksStream(t, c.send(requestBody(tt.body))); got != tt.want {
				t.Errorf("marked %v, want %v", got, tt.want)
			}
		})
	}
}

// A stream Envoy was to read that the backend answers with JSON is not read here as well: the
// body stays unsent, and without trailers the request is charged its reservation when it ends.
func TestJSONAnswerToAStreamEnvoyReadsStaysUnsent(t *testing.T) {
	cfg := testConfig(t)
	cfg.EnvoyReadsStreams = true
	h := newHarness(t, cfg)
	c := h.open(t)
	sendChat(t, c, streamBody)
	resp := c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	if resp.GetModeOverride() != nil {
		t.Fatalf("body switched on: %v", resp.GetModeOverride())
	}
	c.end()
	if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeCancelled)); n != 1 {
		t.Errorf("cancelled outcomes = %v, want 1 (charged as a stream left early)", n)
	}
}
