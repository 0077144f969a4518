package sim_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

const streamWithUsage = `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`

// looseEvents splits a stream into events the way the SSE rules do (an event ends at a blank
// line; a trailing event without one is returned separately as unterminated) and returns each
// event's data lines joined with "\n". Comments and other fields are dropped.
func looseEvents(body string) (events []string, unterminated string) {
	var data []string
	var sawField bool
	lines := strings.Split(body, "\n")
	// What follows the last newline is no line of its own unless it has content.
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for _, line := range lines {
		switch {
		case line == "":
			if len(data) > 0 {
				events = append(events, strings.Join(data, "\n"))
			}
			data, sawField = nil, false
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			sawField = true
		default:
			sawField = true
		}
	}
	if sawField && len(data) > 0 {
		unterminated = strings.Join(data, "\n")
	}
	return events, unterminated
}

func TestSSEFaultGarbageKeepsRealEventsIntact(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", streamWithUsage, sim.HeaderSSEFault, "garbage")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	body := string(readAll(t, resp.Body))
	events, open := looseEvents(body)
	if open != "" {
		t.Fatalf("stream ends inside an event: %q", open)
	}
	var objects, junk int
	var usage string
	for _, e := range events {
		if strings.HasPrefix(e, "{\"") {
			objects++
			if strings.Contains(e, `"total_tokens":12`) {
				usage = e
			}
		} else if e != "[DONE]" {
			junk++
		}
	}
	// 6 tokens + finish + usage, each preceded by the garbage block's 4 non-object events.
	if objects != 8 || junk != 8*4 {
		t.Errorf("%d JSON object events and %d junk events, want 8 and 32", objects, junk)
	}
	if usage == "" {
		t.Errorf("no usage chunk survived the garbage")
	}
	for _, want := range []string{": llmsim garbage follows\n", "retry: soon\n", "data: {not json\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("stream lacks %q", want)
		}
	}
}

func TestSSEFaultOversizeEvent(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", streamWithUsage, sim.HeaderSSEFault, "oversize-event")
	events, open := looseEvents(string(readAll(t, resp.Body)))
	if open != "" || len(events) != 10 {
		t.Fatalf("%d events (open %q), want the oversize one + 6 tokens + finish + usage + [DONE]", len(events), open)
	}
	if got := len(events[0]); got != sim.OversizeEventBytes {
		t.Errorf("first event has %d bytes of data, want %d", got, sim.OversizeEventBytes)
	}
	decodeJSON(t, []byte(events[0])) // only its size is wrong
	if !strings.Contains(events[8], `"total_tokens":12`) || events[9] != "[DONE]" {
		t.Errorf("stream does not end with usage and [DONE]: %q, %q", events[8], events[9])
	}
}

func TestSSEFaultUnterminatedLastEvent(t *testing.T) {
	for _, c := range []struct {
		path, body, lastData string
	}{
		{"/v1/chat/completions", streamWithUsage, `"total_tokens":12`},
		{"/v1/responses", `{"model":"m","stream":true}`, `"type":"response.completed"`},
		{"/v1/messages", `{"model":"m","stream":true}`, `"type":"message_stop"`},
	} {
		t.Run(c.path, func(t *testing.T) {
			srv := startServer(t, sim.Options{})
			resp := post(t, t.Context(), srv, c.path, c.body, sim.HeaderSSEFault, "unterminated")
			raw := readAll(t, resp.Body) // a clean end: readAll fails the test otherwise
			if bytes.HasSuffix(raw, []byte("\n\n")) {
				t.Errorf("stream ends with a blank line")
			}
			events, open := looseEvents(string(raw))
			if !strings.Contains(open, c.lastData) {
				t.Errorf("unterminated event %q, want the one with %s", open, c.lastData)
			}
			for _, e := range events {
				if e == "[DONE]" || strings.Contains(e, c.lastData) {
					t.Errorf("a dispatched event ends the answer: %q", e)
				}
			}
			if len(events) < 6 {
				t.Errorf("only %d events before the open one", len(events))
			}
		})
	}
}

func TestSSEFaultNeedsAStream(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct{ body, fault string }{
		{`{"model":"m"}`, "garbage"},
		{streamWithUsage, "confetti"},
	} {
		resp := post(t, t.Context(), srv, "/v1/chat/completions", c.body, sim.HeaderSSEFault, c.fault)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s on %s: status %d, want 400", c.fault, c.body, resp.StatusCode)
		}
		checkOpenAIError(t, decodeJSON(t, readAll(t, resp.Body)), sim.HeaderSSEFault)
	}
}

func TestEchoHeaders(t *testing.T) {
	srv := startServer(t, sim.Options{})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(sim.HeaderEchoHeaders, "X-User-Id, x-ai-eg-model,x-absent")
	req.Header.Add("x-user-id", "alice")
	req.Header.Add("x-user-id", "bob")
	req.Header.Set("x-ai-eg-model", "m")
	resp, err := rawClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Values(sim.HeaderEchoPrefix + "x-user-id"); strings.Join(got, ",") != "alice,bob" {
		t.Errorf("echoed x-user-id %q, want both values", got)
	}
	if got := resp.Header.Get(sim.HeaderEchoPrefix + "x-ai-eg-model"); got != "m" {
		t.Errorf("echoed model header %q", got)
	}
	if _, ok := resp.Header[http.CanonicalHeaderKey(sim.HeaderEchoPrefix+"x-absent")]; ok {
		t.Errorf("a header the request lacked was echoed")
	}
}

func TestEchoHeadersRefusesCredentials(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, name := range []string{"Authorization", "cookie", "x-api-key", "bad name"} {
		resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m"}`,
			sim.HeaderEchoHeaders, name, "Authorization", "Bearer sk-canary")
		body := readAll(t, resp.Body)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("echo %q: status %d, want 400", name, resp.StatusCode)
		}
		if bytes.Contains(body, []byte("sk-canary")) {
			t.Errorf("echo %q: the credential appears in the answer", name)
		}
		for key := range resp.Header {
			if strings.HasPrefix(strings.ToLower(key), sim.HeaderEchoPrefix) {
				t.Errorf("echo %q: response header %s", name, key)
			}
		}
	}
}
