package sim_test

import (
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

func TestResponsesAPIJSON(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/responses", `{"model":"gpt-4","input":"Hello from Alice!"}`)
	body := decodeJSON(t, readAll(t, resp.Body))
	if got := field(t, body, "object"); got != "response" {
		t.Errorf("object %v", got)
	}
	if got := field(t, body, "model"); got != "gpt-4" {
		t.Errorf("model %v", got)
	}
	if got := field(t, body, "output", 0, "content", 0, "text"); got != defaultText {
		t.Errorf("output text %q", got)
	}
	checkResponsesUsage(t, body)
}

func checkResponsesUsage(t *testing.T, response any) {
	t.Helper()
	for _, c := range []struct {
		path []any
		want int
	}{
		{[]any{"usage", "input_tokens"}, 6},
		{[]any{"usage", "output_tokens"}, 6},
		{[]any{"usage", "total_tokens"}, 12},
		{[]any{"usage", "input_tokens_details", "cached_tokens"}, 0},
		{[]any{"usage", "output_tokens_details", "reasoning_tokens"}, 0},
	} {
		if got := number(t, response, c.path...); got != c.want {
			t.Errorf("%v = %d, want %d", c.path, got, c.want)
		}
	}
}

func TestResponsesAPIStream(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/responses", `{"model":"gpt-4","input":"hi","stream":true}`)
	if got := resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Errorf("content-type %q", got)
	}
	events, err := readSSE(t, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	objects := dataObjects(t, events)
	if len(objects) != len(events) {
		t.Fatal("the Responses stream must not send [DONE]")
	}
	var text strings.Builder
	var deltas int
	for i, e := range events {
		if e.name == "" {
			t.Fatalf("event %d has no event: line", i)
		}
		if got := field(t, objects[i], "type"); got != e.name {
			t.Errorf("event %q carries type %v", e.name, got)
		}
		if got := number(t, objects[i], "sequence_number"); got != i {
			t.Errorf("event %d has sequence_number %d", i, got)
		}
		if e.name == "response.output_text.delta" {
			deltas++
			text.WriteString(field(t, objects[i], "delta").(string))
		}
	}
	if events[0].name != "response.created" {
		t.Errorf("first event %q, want response.created", events[0].name)
	}
	if field(t, objects[0], "response", "usage") != nil {
		t.Error("response.created already carries usage")
	}
	last := len(events) - 1
	if events[last].name != "response.completed" {
		t.Fatalf("last event %q, want response.completed", events[last].name)
	}
	if got := field(t, objects[last], "response", "status"); got != "completed" {
		t.Errorf("final status %v", got)
	}
	checkResponsesUsage(t, field(t, objects[last], "response"))
	if deltas != 6 || text.String() != defaultText {
		t.Errorf("%d deltas making %q, want 6 making %q", deltas, text.String(), defaultText)
	}
}

func TestAnthropicMessagesJSON(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/messages",
		`{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"Hello from Alice!"}]}`)
	body := decodeJSON(t, readAll(t, resp.Body))
	if got := field(t, body, "type"); got != "message" {
		t.Errorf("type %v", got)
	}
	if got := field(t, body, "model"); got != "claude-x" {
		t.Errorf("model %v", got)
	}
	if got := field(t, body, "content", 0, "text"); got != defaultText {
		t.Errorf("text %q", got)
	}
	if got := field(t, body, "stop_reason"); got != "end_turn" {
		t.Errorf("stop_reason %v", got)
	}
	if in, out := number(t, body, "usage", "input_tokens"), number(t, body, "usage", "output_tokens"); in != 6 || out != 6 {
		t.Errorf("usage %d/%d, want 6/6", in, out)
	}
}

func TestAnthropicMessagesStream(t *testing.T) {
	srv := startServer(t, sim.Options{OutputTokens: 9, InputTokens: 4})
	resp := post(t, t.Context(), srv, "/v1/messages", `{"model":"claude-x","max_tokens":100,"stream":true}`)
	events, err := readSSE(t, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	objects := dataObjects(t, events)
	var names []string
	var deltas int
	for i, e := range events {
		if got := field(t, objects[i], "type"); got != e.name {
			t.Errorf("event %q carries type %v", e.name, got)
		}
		if e.name == "content_block_delta" {
			deltas++
			continue
		}
		names = append(names, e.name)
	}
	want := "message_start content_block_start ping content_block_stop message_delta message_stop"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("events %q, want %q around the deltas", got, want)
	}
	if deltas != 9 {
		t.Errorf("%d deltas, want 9", deltas)
	}
	if in := number(t, objects[0], "message", "usage", "input_tokens"); in != 4 {
		t.Errorf("message_start input_tokens %d, want 4", in)
	}
	if out := number(t, objects[0], "message", "usage", "output_tokens"); out != 1 {
		t.Errorf("message_start output_tokens %d, want 1", out)
	}
	delta := objects[len(objects)-2]
	if out := number(t, delta, "usage", "output_tokens"); out != 9 {
		t.Errorf("message_delta output_tokens %d, want the cumulative 9", out)
	}
	if got := field(t, delta, "delta", "stop_reason"); got != "end_turn" {
		t.Errorf("stop_reason %v", got)
	}
}
