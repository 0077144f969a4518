package llmapi

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestStreamOutputTextBytesFixtures(t *testing.T) {
	tests := []struct {
		file   string
		format Format
		want   int64
	}{
		{"chat_stream_usage.sse", ChatCompletions, int64(len("Hello") + len("! How") + len(" can I help — 日本語?"))},
		{"completions_stream.sse", Completions, int64(len("\n\n") + len("This is") + len(" a test"))},
		{"responses_stream.sse", Responses, int64(len("Hi") + len(" there!"))},
		{"anthropic_stream.sse", AnthropicMessages, int64(len("Hello") + len("!"))},
	}
	for _, tt := range tests {
		data := readFixture(t, tt.file)
		s := NewStream(tt.format, 0)
		_ = s.Write(data)
		if got := s.OutputTextBytes(); got != tt.want {
			t.Errorf("%s: OutputTextBytes = %d, want %d", tt.file, got, tt.want)
		}
		// Byte by byte: the count must not depend on how the stream is split.
		s = NewStream(tt.format, 0)
		for i := range data {
			_ = s.Write(data[i : i+1])
		}
		if got := s.OutputTextBytes(); got != tt.want {
			t.Errorf("%s byte by byte: OutputTextBytes = %d, want %d", tt.file, got, tt.want)
		}
	}
}

func TestStreamOutputTextBytes(t *testing.T) {
	toolCalls := `[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]`
	tests := []struct {
		name   string
		format Format
		data   string
		want   int64
	}{
		{"chat all fields", ChatCompletions,
			`data: {"choices":[{"delta":{"role":"assistant","content":"ab","reasoning_content":"cde","reasoning":"f","refusal":"gh"}}]}` + "\n\n",
			2 + 3 + 1 + 2},
		{"chat escapes decoded", ChatCompletions,
			`data: {"choices":[{"delta":{"content":"a\nb\u00e9\ud83d\ude00\"\\"}}]}` + "\n\n",
			int64(len("a\nbé😀\"\\"))},
		{"chat lone surrogate", ChatCompletions,
			`data: {"choices":[{"delta":{"content":"\ud800x"}}]}` + "\n\n", int64(len("\uFFFDx"))},
		{"chat tool calls raw", ChatCompletions,
			`data: {"choices":[{"delta":{"tool_calls":` + toolCalls + `}}]}` + "\n\n", int64(len(toolCalls))},
		{"chat empty tool calls", ChatCompletions,
			`data: {"choices":[{"delta":{"tool_calls":[ ],"content":null}}]}` + "\n\n", 0},
		{"chat several choices and chunks", ChatCompletions,
			`data: {"choices":[{"delta":{"content":"ab"}},{"delta":{"content":"cd"}}]}` + "\n\n" +
				`data: {"choices":[{"delta":{"content":"e"}}],"usage":null}` + "\n\ndata: [DONE]\n\n", 5},
		{"chat ignores other members", ChatCompletions,
			`data: {"id":"x","model":"long model name","choices":[{"delta":{"role":"assistant"},"finish_reason":"stop","logprobs":{"content":"zz"}}]}` + "\n\n", 0},
		{"chat skipped event", ChatCompletions,
			`data: {"choices":[{"delta":{"content":"ab"}}]` + "\n\n", 0},
		{"completions", Completions,
			`data: {"choices":[{"text":"abc"},{"text":"\t"}]}` + "\n\n", 4},
		{"responses delta events only", Responses,
			"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"abc\"}\n\n" +
				"data: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{\\\"x\\\":1}\"}\n\n" +
				"data: {\"type\":\"response.output_text.done\",\"delta\":\"ignored\",\"text\":\"abc\"}\n\n" +
				"data: {\"delta\":\"xy\",\"type\":\"response.reasoning_summary_text.delta\"}\n\n",
			3 + int64(len(`{"x":1}`)) + 2},
		{"responses type from event name", Responses,
			"event: response.output_text.delta\ndata: {\"delta\":\"abcd\"}\n\n", 4},
		{"anthropic deltas", AnthropicMessages,
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n" +
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n" +
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}\n\n" +
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n" +
				"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"text\":\"no\"},\"usage\":{\"output_tokens\":3}}\n\n",
			2 + 3 + int64(len(`{"a"`))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStream(tt.format, 0)
			_ = s.Write([]byte(tt.data))
			if got := s.OutputTextBytes(); got != tt.want {
				t.Errorf("OutputTextBytes = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestStreamOutputEventsUnchanged pins the output event rules the text counting shares code with.
func TestStreamOutputEventsUnchanged(t *testing.T) {
	data := `data: {"choices":[{"delta":{"content":""}}]}` + "\n\n" +
		`data: {"choices":[{"delta":{"tool_calls":[]}}]}` + "\n\n" +
		`data: {"choices":[{"delta":{"tool_calls":[{}]}}]}` + "\n\n" +
		`data: {"choices":[{"text":""}]}` + "\n\n" +
		`data: {"choices":[{"text":"x"}]}` + "\n\n"
	s := NewStream(ChatCompletions, 0)
	_ = s.Write([]byte(data))
	if s.OutputEvents() != 2 {
		t.Errorf("OutputEvents = %d, want 2", s.OutputEvents())
	}
	if s.OutputTextBytes() != int64(len("[{}]")+1) {
		t.Errorf("OutputTextBytes = %d, want %d", s.OutputTextBytes(), len("[{}]")+1)
	}
}

func TestResponseTextBytesFixtures(t *testing.T) {
	var chatContent string
	{
		var v struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(readFixture(t, "chat.json"), &v); err != nil {
			t.Fatal(err)
		}
		chatContent = v.Choices[0].Message.Content
	}
	tests := []struct {
		file   string
		format Format
		want   int64
	}{
		{"chat.json", ChatCompletions, int64(len(chatContent))},
		{"completions.json", Completions, -1},
		{"responses.json", Responses, int64(len("The image depicts a scenic landscape."))},
		{"anthropic.json", AnthropicMessages, int64(len("Hi! My name is Claude."))},
	}
	for _, tt := range tests {
		body := readFixture(t, tt.file)
		got := tt.format.ResponseTextBytes(body)
		if tt.want < 0 {
			if got <= 0 {
				t.Errorf("%s: ResponseTextBytes = %d, want > 0", tt.file, got)
			}
			continue
		}
		if got != tt.want {
			t.Errorf("%s: ResponseTextBytes = %d, want %d", tt.file, got, tt.want)
		}
	}
}

func TestResponseTextBytes(t *testing.T) {
	toolCalls := `[{"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Oslo\"}"}}]`
	input := `{"city": "Oslo"}`
	tests := []struct {
		name   string
		format Format
		body   string
		want   int64
	}{
		{"chat", ChatCompletions,
			`{"choices":[{"message":{"role":"assistant","content":"ab\u00e9","reasoning_content":"cd","reasoning":"e","refusal":"no"}},` +
				`{"message":{"content":null,"tool_calls":` + toolCalls + `}}],"usage":null}`,
			int64(len("abé")+2+1+2) + int64(len(toolCalls))},
		{"chat delta ignored", ChatCompletions, `{"choices":[{"delta":{"content":"ab"}}]}`, 0},
		{"completions", Completions, `{"choices":[{"text":"abc"},{"text":"d"}]}`, 4},
		{"responses", Responses, `{"output":[` +
			`{"type":"reasoning","summary":[{"type":"summary_text","text":"think"}]},` +
			`{"content":[{"text":"hello","type":"output_text","annotations":[{"text":"ignored"}]},{"type":"refusal","refusal":"nope"}],"type":"message"},` +
			`{"type":"function_call","name":"get","arguments":"{\"a\":1}"}],` +
			`"output_text":"hellonope","instructions":"ignored","text":{"format":{"type":"text"}}}`,
			int64(len("think") + len("hello") + len("nope") + len(`{"a":1}`))},
		{"anthropic", AnthropicMessages, `{"content":[{"type":"thinking","thinking":"hmm","signature":"s"},` +
			`{"type":"text","text":"Hi\n"},{"type":"tool_use","id":"t","name":"get","input":` + input + `}],"usage":{}}`,
			int64(3+3) + int64(len(input))},
		{"anthropic content not an array", AnthropicMessages, `{"content":"x"}`, 0},
		{"malformed", ChatCompletions, `{"choices":[{"message":{"content":"abc"}}]`, 0},
		{"trailing data", ChatCompletions, `{"choices":[{"message":{"content":"abc"}}]} x`, 0},
		{"not an object", Completions, `[{"text":"abc"}]`, 0},
		{"empty", Completions, ``, 0},
		{"too deep", ChatCompletions, `{"x":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `,"choices":[{"text":"a"}]}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.format.ResponseTextBytes([]byte(tt.body)); got != tt.want {
				t.Errorf("ResponseTextBytes = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestResponseTextBytesLinear guards against quadratic work on many choices or parts.
func TestResponseTextBytesLinear(t *testing.T) {
	const n = 200_000
	body := []byte(`{"choices":[` + strings.TrimSuffix(strings.Repeat(`{"text":"ab"},`, n), ",") + `]}`)
	if got := Completions.ResponseTextBytes(body); got != 2*n {
		t.Fatalf("ResponseTextBytes = %d, want %d", got, 2*n)
	}
	allocs := testing.AllocsPerRun(5, func() { Completions.ResponseTextBytes(body) })
	if allocs != 0 {
		t.Errorf("ResponseTextBytes allocates %v times, want 0", allocs)
	}
}

func TestUnescapedLen(t *testing.T) {
	for _, raw := range []string{
		``, `abc`, `\n`, `\"\\\/\b\f\n\r\t`, `\u0041`, `\u00e9`, `\u20ac`, `\ud83d\ude00`, `\ud83d`, `\ude00`,
		`\ud83dx`, `\ud83d\u0041`, `\ud83d\ud83d\ude00`, `x\ud800\udbff\udfff`, `日本\u8a9e`, `a\\u0041`,
	} {
		want := len(appendUnescaped(nil, []byte(raw)))
		if got := unescapedLen([]byte(raw)); got != want {
			t.Errorf("unescapedLen(%s) = %d, appendUnescaped gives %d bytes", raw, got, want)
		}
	}
}

func TestStreamOutputTextBytesAllocations(t *testing.T) {
	events := bytes.SplitAfter(readFixture(t, "chat_stream_usage.sse"), []byte("\n\n"))
	s := NewStream(ChatCompletions, 0)
	_ = s.Write(events[1]) // the first write sizes the event buffer
	allocs := testing.AllocsPerRun(100, func() { _ = s.Write(events[3]) })
	if allocs != 0 {
		t.Errorf("a content chunk allocates %v times, want 0", allocs)
	}
}
