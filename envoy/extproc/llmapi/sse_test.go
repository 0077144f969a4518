package llmapi

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// streamResult is everything a Stream reports, for comparing runs.
type streamResult struct {
	Usage         Usage
	Done          bool
	OutputEvents  int
	SkippedEvents int
	Err           string
}

func runStream(format Format, maxEventBytes int, chunks ...[]byte) streamResult {
	s := NewStream(format, maxEventBytes)
	for _, c := range chunks {
		_ = s.Write(c) // the error is also reported by Err
	}
	r := streamResult{Usage: s.Usage(), Done: s.Done(), OutputEvents: s.OutputEvents(), SkippedEvents: s.SkippedEvents()}
	if err := s.Err(); err != nil {
		r.Err = err.Error()
	}
	return r
}

var streamFixtures = []struct {
	file   string
	format Format
	want   streamResult
}{
	{"chat_stream_usage.sse", ChatCompletions, streamResult{
		Usage: Usage{InputTokens: 19, OutputTokens: 10, TotalTokens: 29, Known: true}, Done: true, OutputEvents: 3}},
	{"chat_stream_no_usage.sse", ChatCompletions, streamResult{Done: true, OutputEvents: 2}},
	{"chat_stream_continuous_usage.sse", ChatCompletions, streamResult{
		Usage: Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, Known: true}, Done: true, OutputEvents: 3}},
	{"chat_stream_crlf.sse", ChatCompletions, streamResult{
		Usage: Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, Known: true}, Done: true, OutputEvents: 2}},
	{"chat_stream_cr.sse", ChatCompletions, streamResult{
		Usage: Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, Known: true}, Done: true, OutputEvents: 2}},
	{"completions_stream.sse", Completions, streamResult{
		Usage: Usage{InputTokens: 5, OutputTokens: 7, TotalTokens: 12, Known: true}, Done: true, OutputEvents: 3}},
	{"responses_stream.sse", Responses, streamResult{
		Usage: Usage{InputTokens: 37, OutputTokens: 11, TotalTokens: 48, Known: true}, Done: true, OutputEvents: 2}},
	{"responses_stream_incomplete.sse", Responses, streamResult{
		Usage: Usage{InputTokens: 20, OutputTokens: 16, TotalTokens: 36, ReasoningTokens: 15, Known: true},
		Done:  true, OutputEvents: 2}},
	{"anthropic_stream.sse", AnthropicMessages, streamResult{
		Usage: Usage{InputTokens: 25 + 100 + 50, OutputTokens: 15, TotalTokens: 190, CachedInputTokens: 50,
			CacheCreationInputTokens: 100, Known: true}, Done: true, OutputEvents: 2}},
	{"anthropic_stream_late_input.sse", AnthropicMessages, streamResult{
		Usage: Usage{InputTokens: 15, OutputTokens: 4, TotalTokens: 19, CachedInputTokens: 3, Known: true},
		Done:  true, OutputEvents: 1}},
	{"garbage.sse", ChatCompletions, streamResult{
		Usage: Usage{InputTokens: 3, OutputTokens: 2, TotalTokens: 5, Known: true}, Done: true, OutputEvents: 1,
		SkippedEvents: 4}},
}

func TestStreamFixtures(t *testing.T) {
	for _, tt := range streamFixtures {
		t.Run(tt.file, func(t *testing.T) {
			got := runStream(tt.format, 0, readFixture(t, tt.file))
			if got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestStreamFixturesEverySplit feeds each fixture in two and in three pieces at every split
// point, and byte by byte, and expects the same result as in one piece.
func TestStreamFixturesEverySplit(t *testing.T) {
	for _, tt := range streamFixtures {
		t.Run(tt.file, func(t *testing.T) {
			data := readFixture(t, tt.file)
			if got := runStream(tt.format, 0, bytesOneByOne(data)...); got != tt.want {
				t.Fatalf("byte by byte: got %+v\nwant %+v", got, tt.want)
			}
			for i := 0; i <= len(data); i++ {
				if got := runStream(tt.format, 0, data[:i], data[i:]); got != tt.want {
					t.Fatalf("split at %d: got %+v\nwant %+v", i, got, tt.want)
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for range 200 {
				i := rng.IntN(len(data) + 1)
				j := i + rng.IntN(len(data)-i+1)
				if got := runStream(tt.format, 0, data[:i], data[i:j], data[j:]); got != tt.want {
					t.Fatalf("split at %d and %d: got %+v\nwant %+v", i, j, got, tt.want)
				}
			}
		})
	}
}

func bytesOneByOne(data []byte) [][]byte {
	chunks := make([][]byte, len(data))
	for i := range data {
		chunks[i] = data[i : i+1]
	}
	return chunks
}

func TestStreamFraming(t *testing.T) {
	usage := func(in, out int64) Usage {
		return Usage{InputTokens: in, OutputTokens: out, TotalTokens: in + out, Known: true}
	}
	tests := []struct {
		name   string
		stream string
		want   streamResult
	}{
		{"no space after colon", "data:{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
			streamResult{Usage: usage(1, 2)}},
		{"two spaces after colon keeps one", "data:  {\"usage\":{\"prompt_tokens\":1}}\n\n",
			streamResult{Usage: usage(1, 0)}},
		{"multi-line data", "data: {\"usage\":\ndata: {\"prompt_tokens\":4}}\n\n", streamResult{Usage: usage(4, 0)}},
		{"data without colon adds an empty line", "data: {\"usage\":\ndata\ndata: {\"prompt_tokens\":4}}\n\n",
			streamResult{Usage: usage(4, 0)}},
		{"event without final blank line is not dispatched", "data: {\"usage\":{\"prompt_tokens\":1}}\n",
			streamResult{}},
		{"done needs its blank line", "data: [DONE]", streamResult{}},
		{"done", "data: [DONE]\n\n", streamResult{Done: true}},
		{"done ignores what follows", "data: [DONE]\n\ndata: {\"usage\":{\"prompt_tokens\":1}}\n\n",
			streamResult{Done: true}},
		{"comment only", ": ping\n\n: {\"usage\":{\"prompt_tokens\":1}}\n\n", streamResult{}},
		{"field name with usage is not data", "datum: {\"usage\":{\"prompt_tokens\":1}}\n\n", streamResult{}},
		{"long unknown field name", "eventsource-extra: x\ndata: {\"usage\":{\"prompt_tokens\":2}}\n\n",
			streamResult{Usage: usage(2, 0)}},
		{"empty data is not skipped", "data:\n\ndata: \n\n", streamResult{}},
		{"blank lines only", "\n\n\r\n\r\r", streamResult{}},
		{"CR then LF across lines", "data: {\"usage\":{\"prompt_tokens\":1}}\r\r\n", streamResult{Usage: usage(1, 0)}},
		{"LF then CR is two lines", "data: {\"usage\":{\"prompt_tokens\":1}}\n\r", streamResult{Usage: usage(1, 0)}},
		{"usage null then usage", "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n" +
			"data: {\"usage\":null}\n\ndata: {\"usage\":{\"completion_tokens\":5}}\n\n",
			streamResult{Usage: usage(1, 5)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runStream(ChatCompletions, 0, []byte(tt.stream))
			if got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
			if byByte := runStream(ChatCompletions, 0, bytesOneByOne([]byte(tt.stream))...); byByte != got {
				t.Fatalf("byte by byte got %+v, in one piece %+v", byByte, got)
			}
		})
	}
}

func TestStreamEventTypeFallback(t *testing.T) {
	// Without a "type" member, the SSE event name decides.
	stream := "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":7}}}\n\n" +
		"event: content_block_delta\ndata: {}\n\n" +
		"event: message_delta\ndata: {\"usage\":{\"output_tokens\":3}}\n\n" +
		"event: message_stop\ndata: {}\n\n"
	got := runStream(AnthropicMessages, 0, []byte(stream))
	want := streamResult{Usage: Usage{InputTokens: 7, OutputTokens: 3, TotalTokens: 10, Known: true},
		Done: true, OutputEvents: 1}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	// The JSON type wins over the event name.
	stream = "event: message_stop\ndata: {\"type\":\"ping\"}\n\n"
	if got := runStream(AnthropicMessages, 0, []byte(stream)); got.Done {
		t.Fatal("event name overrode the JSON type")
	}
}

func TestStreamResponsesUsageOnlyFromTerminalEvents(t *testing.T) {
	stream := `data: {"type":"response.in_progress","response":{"usage":{"input_tokens":99}}}` + "\n\n" +
		`data: {"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}` + "\n\n"
	got := runStream(Responses, 0, []byte(stream))
	want := streamResult{Usage: Usage{InputTokens: 5, OutputTokens: 6, TotalTokens: 11, Known: true}, Done: true}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestStreamEventTooLarge(t *testing.T) {
	const limit = 64
	small := "data: {\"usage\":{\"prompt_tokens\":1}}\n\n"
	big := "data: " + strings.Repeat("x", limit+1) + "\n\n"
	after := "data: {\"usage\":{\"prompt_tokens\":9}}\n\n"
	for _, chunks := range [][][]byte{
		{[]byte(small + big + after)},
		bytesOneByOne([]byte(small + big + after)),
	} {
		s := NewStream(ChatCompletions, limit)
		var firstErr error
		for _, c := range chunks {
			if err := s.Write(c); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		var tooLarge *EventTooLargeError
		if !errors.As(s.Err(), &tooLarge) || tooLarge.Limit != limit {
			t.Fatalf("Err() = %v, want *EventTooLargeError{%d}", s.Err(), limit)
		}
		if firstErr != s.Err() { //nolint:errorlint // Write must return the very error Err() reports
			t.Fatalf("Write returned %v, Err() %v", firstErr, s.Err())
		}
		if got := s.Usage().InputTokens; got != 1 {
			t.Fatalf("usage after the oversized event = %d, want the earlier 1", got)
		}
	}
	// Multi-line data counts as a whole, newlines included.
	s := NewStream(ChatCompletions, 10)
	_ = s.Write([]byte("data: 12345\ndata: 6789\n"))
	if s.Err() != nil {
		t.Fatalf("10 bytes of data under a limit of 10: %v", s.Err())
	}
	_ = s.Write([]byte("data:\n"))
	if s.Err() == nil {
		t.Fatal("11 bytes of data under a limit of 10: no error")
	}
}

// TestStreamMemoryBounded sends a never-ending event and never-ending comment and checks the
// parser's buffer never grows past the limit.
func TestStreamMemoryBounded(t *testing.T) {
	const limit = 4096
	s := NewStream(ChatCompletions, limit)
	_ = s.Write([]byte(": "))
	chunk := bytes.Repeat([]byte("c"), 1000)
	for range 1000 {
		_ = s.Write(chunk)
	}
	if s.Err() != nil || cap(s.data) != 0 {
		t.Fatalf("an endless comment buffered %d bytes (err %v)", cap(s.data), s.Err())
	}
	_ = s.Write([]byte("\ndata: "))
	for range 1000 {
		_ = s.Write(chunk)
		if cap(s.data) > limit {
			t.Fatalf("data buffer grew to %d, over the limit %d", cap(s.data), limit)
		}
	}
	if s.Err() == nil {
		t.Fatal("an endless data line did not fail")
	}
}

func TestStreamAllocationsDoNotGrow(t *testing.T) {
	fixture := readFixture(t, "chat_stream_usage.sse")
	events := bytes.SplitAfter(fixture, []byte("\n\n"))
	chunk := events[1] // a content chunk
	allocs := func(n int) float64 {
		return testing.AllocsPerRun(20, func() {
			s := NewStream(ChatCompletions, 0)
			for range n {
				_ = s.Write(chunk)
			}
		})
	}
	few, many := allocs(10), allocs(1000)
	if many > few {
		t.Fatalf("allocations grow with stream length: %v for 10 chunks, %v for 1000", few, many)
	}
}

func TestStreamAfterDoneAndErrIgnoresInput(t *testing.T) {
	s := NewStream(ChatCompletions, 0)
	_ = s.Write([]byte("data: [DONE]\n\n"))
	if err := s.Write([]byte("data: {\"usage\":{\"prompt_tokens\":1}}\n\n")); err != nil {
		t.Fatal(err)
	}
	if s.Usage().Known {
		t.Fatal("usage after [DONE] was counted")
	}
}

func ExampleStream() {
	s := NewStream(ChatCompletions, 0)
	for _, chunk := range []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":6,\"comp",
		"letion_tokens\":6}}\n\ndata: [DONE]\n\n",
	} {
		if err := s.Write([]byte(chunk)); err != nil {
			fmt.Println(err)
		}
	}
	u := s.Usage()
	fmt.Println(u.InputTokens, u.OutputTokens, u.TotalTokens, s.Done(), s.OutputEvents())
	// Output: 6 6 12 true 1
}
