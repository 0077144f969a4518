package sim_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

func TestBadRequestsGetOpenAIErrors(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct {
		name, path, body string
		headers          []string
		wantStatus       int
		wantParam        any
		wantMessage      string
	}{
		{"truncated JSON", "/v1/chat/completions", `{"model":"qwen3",`, nil, 400, nil, "parse the JSON body"},
		{"not JSON", "/v1/completions", `model=qwen3`, nil, 400, nil, "parse the JSON body"},
		{"JSON array", "/v1/chat/completions", `[]`, nil, 400, nil, "parse the JSON body"},
		{"empty body", "/v1/chat/completions", ``, nil, 400, nil, "parse the JSON body"},
		{"model of the wrong type", "/v1/chat/completions", `{"model":42}`, nil, 400, nil, "parse the JSON body"},
		{"stream of the wrong type", "/v1/chat/completions", `{"model":"m","stream":"yes"}`, nil, 400, nil, "parse the JSON body"},
		{"missing model", "/v1/chat/completions", `{"messages":[]}`, nil, 400, "model", "model"},
		{"null model", "/v1/responses", `{"model":null,"input":"hi"}`, nil, 400, "model", "model"},
		{"output knob not a number", "/v1/chat/completions", `{"model":"m"}`, []string{sim.HeaderOutputTokens, "six"}, 400, nil, sim.HeaderOutputTokens},
		{"output knob negative", "/v1/chat/completions", `{"model":"m"}`, []string{sim.HeaderOutputTokens, "-1"}, 400, nil, sim.HeaderOutputTokens},
		{"status knob out of range", "/v1/chat/completions", `{"model":"m"}`, []string{sim.HeaderStatus, "200"}, 400, nil, sim.HeaderStatus},
		{"gzip knob unknown value", "/v1/chat/completions", `{"model":"m"}`, []string{sim.HeaderGzip, "br"}, 400, nil, sim.HeaderGzip},
		{"misspelt knob", "/v1/chat/completions", `{"model":"m"}`, []string{"x-llmsim-output-token", "3"}, 400, nil, "x-llmsim-output-token"},
		{"cut-after without stream", "/v1/chat/completions", `{"model":"m"}`, []string{sim.HeaderCutAfter, "1"}, 400, nil, sim.HeaderCutAfter},
		{"body too large", "/v1/chat/completions", `{"model":"m","pad":"` + strings.Repeat("x", 65<<20) + `"}`, nil, 413, nil, "larger than"},
		{"unknown path", "/v1/embeddingz", `{"model":"m"}`, nil, 404, nil, "/v1/embeddingz"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, t.Context(), srv, c.path, c.body, c.headers...)
			if resp.StatusCode != c.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, c.wantStatus)
			}
			body := decodeJSON(t, readAll(t, resp.Body))
			checkOpenAIError(t, body, c.wantMessage)
			if got := field(t, body, "error", "param"); got != c.wantParam {
				t.Errorf("param %v, want %v", got, c.wantParam)
			}
			if _, ok := body["usage"]; ok {
				t.Error("error body carries usage")
			}
		})
	}
}

// checkOpenAIError asserts the {"error":{"message","type","param","code"}} shape.
func checkOpenAIError(t *testing.T, body map[string]any, wantMessage string) {
	t.Helper()
	detail, ok := field(t, body, "error").(map[string]any)
	if !ok {
		t.Fatalf("error is not an object: %v", body)
	}
	for _, key := range []string{"message", "type", "param", "code"} {
		if _, ok := detail[key]; !ok {
			t.Errorf("error lacks %q: %v", key, detail)
		}
	}
	if msg, _ := detail["message"].(string); !strings.Contains(msg, wantMessage) {
		t.Errorf("message %q does not mention %q", msg, wantMessage)
	}
	if typ, _ := detail["type"].(string); typ == "" {
		t.Errorf("empty error type")
	}
}

func TestBadRequestOnMessagesGetsAnthropicError(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/messages", `{"max_tokens":10}`)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d", resp.StatusCode)
	}
	body := decodeJSON(t, readAll(t, resp.Body))
	if got := field(t, body, "type"); got != "error" {
		t.Errorf("type %v, want error", got)
	}
	if got := field(t, body, "error", "type"); got != "invalid_request_error" {
		t.Errorf("error.type %v", got)
	}
}

func TestWrongMethod(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp, err := rawClient(t).Get(srv.URL + "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Allow"); got != http.MethodPost {
		t.Errorf("Allow %q", got)
	}
	checkOpenAIError(t, decodeJSON(t, readAll(t, resp.Body)), "GET")
}

func TestStatusKnob(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct {
		name, path, body, status string
		wantCode                 int
		wantType                 string
		anthropic                bool
	}{
		{"chat 500", "/v1/chat/completions", `{"model":"m"}`, "500", 500, "server_error", false},
		{"chat stream 503 answers JSON", "/v1/chat/completions", `{"model":"m","stream":true}`, "503", 503, "server_error", false},
		{"chat 429", "/v1/chat/completions", `{"model":"m"}`, "429", 429, "rate_limit_error", false},
		{"responses 500", "/v1/responses", `{"model":"m","input":"hi"}`, "500", 500, "server_error", false},
		{"messages 529", "/v1/messages", `{"model":"m"}`, "529", 529, "overloaded_error", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := post(t, t.Context(), srv, c.path, c.body, sim.HeaderStatus, c.status)
			if resp.StatusCode != c.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, c.wantCode)
			}
			if got := resp.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("content-type %q", got)
			}
			if got := resp.Header.Get(sim.HeaderRequestModel); got != "m" {
				t.Errorf("%s = %q", sim.HeaderRequestModel, got)
			}
			raw := readAll(t, resp.Body)
			if strings.Contains(string(raw), "tokens") {
				t.Errorf("error body mentions tokens: %s", raw)
			}
			body := decodeJSON(t, raw)
			if c.anthropic {
				if got := field(t, body, "error", "type"); got != c.wantType {
					t.Errorf("error.type %v, want %s", got, c.wantType)
				}
				return
			}
			checkOpenAIError(t, body, sim.HeaderStatus)
			if got := field(t, body, "error", "type"); got != c.wantType {
				t.Errorf("error.type %v, want %s", got, c.wantType)
			}
		})
	}
}

func TestErrorsAreGzippedWhenAsked(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m"}`, sim.HeaderGzip, "1", sim.HeaderStatus, "500")
	if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
		t.Fatalf("content-encoding %q", got)
	}
	checkOpenAIError(t, decodeJSON(t, gunzip(t, readAll(t, resp.Body))), "simulated")
}
