package sim_test

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

// guard bounds how long a test waits for something that should happen promptly, so a broken
// handler fails the test instead of hanging it. It is never the thing being measured.
const guard = 30 * time.Second

func TestGzipJSON(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", seedRequest, sim.HeaderGzip, "1")
	if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
		t.Fatalf("content-encoding %q, want gzip", got)
	}
	checkSeedUsage(t, gunzip(t, readAll(t, resp.Body)))
}

func checkSeedUsage(t *testing.T, body []byte) {
	t.Helper()
	m := decodeJSON(t, body)
	if total := number(t, m, "usage", "total_tokens"); total != 12 {
		t.Errorf("total_tokens %d, want 12", total)
	}
}

func TestGzipStreamDecodesAndIsFlushedPerEvent(t *testing.T) {
	t.Run("complete stream", func(t *testing.T) {
		srv := startServer(t, sim.Options{})
		resp := post(t, t.Context(), srv, "/v1/chat/completions",
			`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, sim.HeaderGzip, "1")
		if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
			t.Fatalf("content-encoding %q, want gzip", got)
		}
		events, err := readSSE(t, strings.NewReader(string(gunzip(t, readAll(t, resp.Body)))))
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != 9 || events[8].data != "[DONE]" {
			t.Fatalf("got %d events, want 6 tokens + finish + usage + [DONE]", len(events))
		}
	})

	t.Run("first event decodes while the stream is still open", func(t *testing.T) {
		// With an hour between tokens, the first event can only be read if the handler
		// flushed both gzip and the connection right after writing it.
		srv := startServer(t, sim.Options{TokenDelay: time.Hour})
		ctx, cancel := context.WithTimeout(t.Context(), guard)
		defer cancel()
		resp := post(t, ctx, srv, "/v1/chat/completions", `{"model":"m","stream":true}`, sim.HeaderGzip, "1")
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatalf("gzip header: %v", err)
		}
		line, err := bufio.NewReader(zr).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the first event: %v", err)
		}
		if !strings.HasPrefix(line, "data: ") || !strings.Contains(line, `"content":"Hello"`) {
			t.Errorf("first line %q", line)
		}
	})
}

func TestCutAfterEndsStreamWithoutDone(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct {
		name, path, body, cutAfter string
		wantTokenEvents            int
		isToken                    func(sseEvent) bool
	}{
		{
			"chat mid-stream", "/v1/chat/completions",
			`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, "2", 2,
			func(e sseEvent) bool { return strings.Contains(e.data, `"content":`) },
		},
		{
			"chat after every token", "/v1/chat/completions",
			`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, "6", 6,
			func(e sseEvent) bool { return strings.Contains(e.data, `"content":`) },
		},
		{
			"chat before the first token", "/v1/chat/completions",
			`{"model":"m","stream":true}`, "0", 0,
			func(e sseEvent) bool { return true },
		},
		{
			"completions", "/v1/completions", `{"model":"m","stream":true}`, "3", 3,
			func(e sseEvent) bool { return true },
		},
		{
			"responses", "/v1/responses", `{"model":"m","stream":true}`, "1", 1,
			func(e sseEvent) bool { return e.name == "response.output_text.delta" },
		},
		{
			"messages", "/v1/messages", `{"model":"m","stream":true}`, "4", 4,
			func(e sseEvent) bool { return e.name == "content_block_delta" },
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, t.Context(), srv, c.path, c.body, sim.HeaderCutAfter, c.cutAfter)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			events, err := readSSE(t, resp.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("stream ended with %v, want an abrupt end (unexpected EOF)", err)
			}
			var tokens int
			for _, e := range events {
				if isEndOfAnswer(e) {
					t.Errorf("cut stream carries an end-of-answer event: %s %s", e.name, e.data)
				}
				if c.isToken(e) {
					tokens++
				}
			}
			if tokens != c.wantTokenEvents {
				t.Errorf("%d token events before the cut, want %d", tokens, c.wantTokenEvents)
			}
		})
	}
}

// isEndOfAnswer reports events that only a complete stream may carry: finish, usage, [DONE].
func isEndOfAnswer(e sseEvent) bool {
	switch e.name {
	case "response.output_text.done", "response.completed", "content_block_stop", "message_delta", "message_stop":
		return true
	}
	return e.data == "[DONE]" || strings.Contains(e.data, `"finish_reason":"stop"`) || strings.Contains(e.data, `"choices":[]`)
}

// doneHandler records when each ServeHTTP call has returned.
func doneHandler(h http.Handler, started, done chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		close(started)
		h.ServeHTTP(w, r)
	})
}

func TestClientCancelStopsHandler(t *testing.T) {
	for _, c := range []struct {
		name      string
		opts      sim.Options
		body      string
		readFirst bool // read one event before cancelling
	}{
		{"between tokens", sim.Options{TokenDelay: time.Hour}, `{"model":"m","stream":true}`, true},
		{"waiting for the first token of a stream", sim.Options{TimeToFirstToken: time.Hour}, `{"model":"m","stream":true}`, false},
		{"waiting for a non-streamed answer", sim.Options{TokenDelay: time.Hour}, `{"model":"m"}`, false},
		{"anthropic stream", sim.Options{TokenDelay: time.Hour}, `{"model":"m","stream":true}`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			started, done := make(chan struct{}), make(chan struct{})
			srv := httptest.NewServer(doneHandler(sim.NewHandler(c.opts, nil), started, done))
			t.Cleanup(func() {
				select {
				case <-done:
					srv.Close()
				default:
					// Close would wait forever for the stuck handler this test just reported.
					srv.CloseClientConnections()
				}
			})
			path := "/v1/chat/completions"
			if strings.HasPrefix(c.name, "anthropic") {
				path = "/v1/messages"
			}

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			client := rawClient(t)
			responded := make(chan *http.Response, 1)
			go func() {
				resp, err := client.Do(req)
				if err != nil {
					responded <- nil
					return
				}
				responded <- resp
			}()

			if c.readFirst {
				resp := <-responded
				if resp == nil {
					t.Fatal("request failed before any event")
				}
				defer func() { _ = resp.Body.Close() }()
				if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
					t.Fatalf("reading the first event: %v", err)
				}
			} else {
				<-started
			}
			select {
			case <-done:
				t.Fatal("handler finished although its delay is an hour")
			default:
			}
			cancel()

			select {
			case <-done:
			case <-time.After(guard):
				t.Fatal("handler still running after the client went away")
			}
		})
	}
}
