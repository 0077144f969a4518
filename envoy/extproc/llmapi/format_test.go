package llmapi

import "testing"

// TestFormatFacts pins what the exchange takes from each format besides parsing: the name in
// logs, the GenAI operation name in metrics, whether streams need include_usage forced, and
// whether Envoy reads their streams' usage.
func TestFormatFacts(t *testing.T) {
	tests := []struct {
		format                        Format
		name, operation               string
		needsIncludeUsage, envoyReads bool
	}{
		{ChatCompletions, "chat_completions", "chat", true, true},
		{Completions, "completions", "text_completion", true, false},
		{Responses, "responses", "responses", false, true},
		{AnthropicMessages, "anthropic_messages", "messages", false, true},
	}
	for _, tt := range tests {
		if got := tt.format.Name(); got != tt.name {
			t.Errorf("Name() = %q, want %q", got, tt.name)
		}
		if got := tt.format.Operation(); got != tt.operation {
			t.Errorf("%s: Operation() = %q, want %q", tt.name, got, tt.operation)
		}
		if got := tt.format.NeedsIncludeUsage(); got != tt.needsIncludeUsage {
			t.Errorf("%s: NeedsIncludeUsage() = %v, want %v", tt.name, got, tt.needsIncludeUsage)
		}
		if got := tt.format.EnvoyReadsStreamUsage(); got != tt.envoyReads {
			t.Errorf("%s: EnvoyReadsStreamUsage() = %v, want %v", tt.name, got, tt.envoyReads)
		}
		body := []byte(`{"model":"m","stream":true}`)
		if req, err := tt.format.ParseRequest(body, 0); err != nil || req.Model != "m" || !req.Stream {
			t.Errorf("%s: ParseRequest = %+v, %v", tt.name, req, err)
		}
	}
}
