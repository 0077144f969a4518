package sim_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

func TestChatCompletionReproducesSeedUsage(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", seedRequest)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("content-type %q", got)
	}
	body := decodeJSON(t, readAll(t, resp.Body))

	for _, c := range []struct {
		path []any
		want int
	}{
		{[]any{"usage", "prompt_tokens"}, 6},
		{[]any{"usage", "completion_tokens"}, 6},
		{[]any{"usage", "total_tokens"}, 12},
		{[]any{"usage", "prompt_tokens_details", "cached_tokens"}, 0},
		{[]any{"usage", "completion_tokens_details", "reasoning_tokens"}, 0},
	} {
		if got := number(t, body, c.path...); got != c.want {
			t.Errorf("%v = %d, want %d", c.path, got, c.want)
		}
	}
	if got := field(t, body, "object"); got != "chat.completion" {
		t.Errorf("object %v", got)
	}
	if got := field(t, body, "model"); got != "qwen3" {
		t.Errorf("model %v, want the requested qwen3", got)
	}
	if got := field(t, body, "choices", 0, "message", "content"); got != defaultText {
		t.Errorf("content %q, want %q", got, defaultText)
	}
	if got := field(t, body, "choices", 0, "message", "role"); got != "assistant" {
		t.Errorf("role %v", got)
	}
	if got := field(t, body, "choices", 0, "finish_reason"); got != "stop" {
		t.Errorf("finish_reason %v", got)
	}
}

func TestResponseHeaders(t *testing.T) {
	srv := startServer(t, sim.Options{Name: "backend-b"})
	for _, c := range []struct {
		name    string
		headers []string
		wantSaw string
	}{
		{"without authorization", nil, "false"},
		{"with authorization", []string{"Authorization", "Bearer sk-secret-canary"}, "true"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"gpt-4"}`, c.headers...)
			body := string(readAll(t, resp.Body))
			if got := resp.Header.Get(sim.HeaderBackend); got != "backend-b" {
				t.Errorf("%s = %q", sim.HeaderBackend, got)
			}
			if got := resp.Header.Get(sim.HeaderSawAuthorization); got != c.wantSaw {
				t.Errorf("%s = %q, want %q", sim.HeaderSawAuthorization, got, c.wantSaw)
			}
			if got := resp.Header.Get(sim.HeaderRequestModel); got != "gpt-4" {
				t.Errorf("%s = %q", sim.HeaderRequestModel, got)
			}
			for name, values := range resp.Header {
				if strings.Contains(strings.Join(values, ","), "canary") {
					t.Errorf("header %s echoes the authorization value", name)
				}
			}
			if strings.Contains(body, "canary") {
				t.Error("body echoes the authorization value")
			}
		})
	}
}

func TestTokenCountsFollowOptionsAndKnobs(t *testing.T) {
	srv := startServer(t, sim.Options{InputTokens: 10, OutputTokens: 3})
	for _, c := range []struct {
		name              string
		headers           []string
		wantIn, wantOut   int
		wantContentPrefix string
	}{
		{"options", nil, 10, 3, "Hello from the"},
		{"output knob", []string{sim.HeaderOutputTokens, "9"}, 10, 9, "Hello from the LLM simulator today. Hello from the"},
		{"input knob", []string{sim.HeaderInputTokens, "2"}, 2, 3, "Hello from the"},
		{"zero output", []string{sim.HeaderOutputTokens, "0"}, 10, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m"}`, c.headers...)
			body := decodeJSON(t, readAll(t, resp.Body))
			if got := number(t, body, "usage", "prompt_tokens"); got != c.wantIn {
				t.Errorf("prompt_tokens %d, want %d", got, c.wantIn)
			}
			if got := number(t, body, "usage", "completion_tokens"); got != c.wantOut {
				t.Errorf("completion_tokens %d, want %d", got, c.wantOut)
			}
			if got := number(t, body, "usage", "total_tokens"); got != c.wantIn+c.wantOut {
				t.Errorf("total_tokens %d, want %d", got, c.wantIn+c.wantOut)
			}
			content, _ := field(t, body, "choices", 0, "message", "content").(string)
			if content != c.wantContentPrefix {
				t.Errorf("content %q, want %q", content, c.wantContentPrefix)
			}
			if words := len(strings.Fields(content)); words != c.wantOut {
				t.Errorf("content has %d words, want one per token (%d)", words, c.wantOut)
			}
		})
	}
}

func TestCompletionsJSON(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/completions", `{"model":"gpt-3.5-turbo","prompt":"Say hi"}`)
	body := decodeJSON(t, readAll(t, resp.Body))
	if got := field(t, body, "object"); got != "text_completion" {
		t.Errorf("object %v", got)
	}
	if got := field(t, body, "choices", 0, "text"); got != defaultText {
		t.Errorf("text %q", got)
	}
	if in, out, total := number(t, body, "usage", "prompt_tokens"), number(t, body, "usage", "completion_tokens"),
		number(t, body, "usage", "total_tokens"); in != 6 || out != 6 || total != 12 {
		t.Errorf("usage %d/%d/%d, want 6/6/12", in, out, total)
	}
}

func TestOpenAIStreamFraming(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct {
		path, object, body string
		wantUsage          bool
	}{
		{"/v1/chat/completions", "chat.completion.chunk", `{"model":"qwen3","stream":true}`, false},
		{"/v1/chat/completions", "chat.completion.chunk", `{"model":"qwen3","stream":true,"stream_options":{"include_usage":false}}`, false},
		{"/v1/chat/completions", "chat.completion.chunk", `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`, true},
		{"/v1/completions", "text_completion", `{"model":"qwen3","prompt":"x","stream":true}`, false},
		{"/v1/completions", "text_completion", `{"model":"qwen3","prompt":"x","stream":true,"stream_options":{"include_usage":true}}`, true},
	} {
		t.Run(c.path+" usage="+strconv.FormatBool(c.wantUsage), func(t *testing.T) {
			resp := post(t, t.Context(), srv, c.path, c.body)
			if got := resp.Header.Get("Content-Type"); got != "text/event-stream" {
				t.Errorf("content-type %q", got)
			}
			events, err := readSSE(t, resp.Body)
			if err != nil {
				t.Fatalf("stream ended with %v", err)
			}
			if len(events) == 0 || events[len(events)-1].data != "[DONE]" {
				t.Fatalf("stream does not end with [DONE]: %v", events)
			}
			for _, e := range events {
				if e.name != "" {
					t.Errorf("OpenAI streams use data-only events, got event %q", e.name)
				}
			}
			chunks := dataObjects(t, events)
			if len(chunks) != len(events)-1 {
				t.Fatalf("[DONE] appears before the end")
			}

			var text strings.Builder
			var tokenChunks, finishChunks, usageChunks int
			for i, chunk := range chunks {
				if got := field(t, chunk, "object"); got != c.object {
					t.Errorf("chunk %d object %v", i, got)
				}
				if got := field(t, chunk, "model"); got != "qwen3" {
					t.Errorf("chunk %d model %v", i, got)
				}
				choices, _ := field(t, chunk, "choices").([]any)
				if len(choices) == 0 {
					usageChunks++
					if i != len(chunks)-1 {
						t.Errorf("usage chunk %d is not the last", i)
					}
					if in, out, total := number(t, chunk, "usage", "prompt_tokens"), number(t, chunk, "usage", "completion_tokens"),
						number(t, chunk, "usage", "total_tokens"); in != 6 || out != 6 || total != 12 {
						t.Errorf("usage %d/%d/%d, want 6/6/12", in, out, total)
					}
					continue
				}
				if usage, ok := chunk["usage"]; ok && (!c.wantUsage || usage != nil) {
					t.Errorf("chunk %d has usage %v", i, usage)
				}
				if reason := field(t, chunk, "choices", 0, "finish_reason"); reason != nil {
					finishChunks++
					if reason != "stop" {
						t.Errorf("finish_reason %v", reason)
					}
					continue
				}
				tokenChunks++
				if c.object == "text_completion" {
					text.WriteString(field(t, chunk, "choices", 0, "text").(string))
				} else {
					text.WriteString(field(t, chunk, "choices", 0, "delta", "content").(string))
				}
			}
			if tokenChunks != 6 {
				t.Errorf("%d token chunks, want one per token (6)", tokenChunks)
			}
			if finishChunks != 1 {
				t.Errorf("%d finish chunks, want 1", finishChunks)
			}
			if want := map[bool]int{true: 1, false: 0}[c.wantUsage]; usageChunks != want {
				t.Errorf("%d usage chunks, want %d", usageChunks, want)
			}
			if text.String() != defaultText {
				t.Errorf("streamed text %q, want %q", text.String(), defaultText)
			}
		})
	}
}

func TestChatStreamNamesRoleOnce(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m","stream":true}`)
	events, err := readSSE(t, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var roles int
	for _, chunk := range dataObjects(t, events) {
		if _, ok := field(t, chunk, "choices", 0, "delta").(map[string]any)["role"]; ok {
			roles++
		}
	}
	if roles != 1 {
		t.Errorf("role appears in %d chunks, want 1", roles)
	}
}
