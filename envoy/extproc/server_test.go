package extproc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

const chatBody = `{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}`

// sendChat sends a chat completion's request headers and body and returns the body answer.
func sendChat(t *testing.T, c *call, body string, extraHeaders ...string) *extprocv3.ProcessingResponse {
	t.Helper()
	resp := c.send(chatHeaders(len(body), extraHeaders...))
	if resp.GetRequestHeaders() == nil {
		t.Fatalf("request headers: want a headers response, got %v", resp)
	}
	return c.send(requestBody(body))
}

func TestRequestHeadersForceIdentityEncoding(t *testing.T) {
	h := newHarness(t, testConfig(t))
	c := h.open(t)
	resp := c.send(chatHeaders(len(chatBody), "accept-encoding", "gzip, br"))
	got := setHeaders(t, resp.GetRequestHeaders().GetResponse().GetHeaderMutation())["accept-encoding"]
	if string(got.GetHeader().GetRawValue()) != "identity" {
		t.Fatalf("accept-encoding = %q, want identity", got.GetHeader().GetRawValue())
	}
	if got.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Fatalf("accept-encoding append action = %v, want overwrite", got.GetAppendAction())
	}
}

func TestBodyModelSetsRoutingHeader(t *testing.T) {
	tests := []struct {
		name        string
		clientModel []string // the client's own model header
	}{
		{name: "no client header"},
		{name: "client header disagrees", clientModel: []string{policies.DefaultModelHeader, "gpt-4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			resp := sendChat(t, c, chatBody, tt.clientModel...)
			common := resp.GetRequestBody().GetResponse()
			if common == nil {
				t.Fatalf("want a body response, got %v", resp)
			}
			model := setHeaders(t, common.GetHeaderMutation())[policies.DefaultModelHeader]
			if string(model.GetHeader().GetRawValue()) != "qwen3" {
				t.Fatalf("model header = %q, want the body's qwen3", model.GetHeader().GetRawValue())
			}
			if model.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
				t.Fatalf("append action = %v, want OVERWRITE_IF_EXISTS_OR_ADD", model.GetAppendAction())
			}
			if !common.GetClearRouteCache() {
				t.Fatal("clear_route_cache is false; Envoy would keep the route picked before the header existed")
			}
			if common.GetBodyMutation() != nil {
				t.Fatalf("non-streaming body was mutated: %v", common.GetBodyMutation())
			}
		})
	}
}

func TestCustomModelHeader(t *testing.T) {
	cfg := testConfig(t)
	cfg.ModelHeader = "X-Model"
	h := newHarness(t, cfg)
	resp := sendChat(t, h.open(t), chatBody)
	headers := setHeaders(t, resp.GetRequestBody().GetResponse().GetHeaderMutation())
	if string(headers["x-model"].GetHeader().GetRawValue()) != "qwen3" {
		t.Fatalf("set headers %v, want x-model: qwen3", headers)
	}
}

func TestRejections(t *testing.T) {
	tests := []struct {
		name      string
		headers   *extprocv3.ProcessingRequest
		body      string // sent after the headers unless empty
		status    int
		errType   string
		code      string
		param     string
		messageIn string
		outcome   string
	}{
		{
			name:    "missing user",
			headers: requestHeaders(false, ":path", "/v1/chat/completions", "content-type", "application/json"),
			status:  401, errType: "authentication_error", code: "missing_user", messageIn: "x-user-id",
			outcome: outcomeRejected401,
		},
		{
			name:    "empty user",
			headers: requestHeaders(false, ":path", "/v1/chat/completions", policies.DefaultIdentityHeader, " "),
			status:  401, errType: "authentication_error", code: "missing_user",
			outcome: outcomeRejected401,
		},
		{
			name:    "missing user without body",
			headers: requestHeaders(true, ":method", "GET", ":path", "/v1/models"),
			status:  401, errType: "authentication_error", code: "missing_user",
			outcome: outcomeRejected401,
		},
		{
			name: "two users",
			headers: requestHeaders(false, ":path", "/v1/chat/completions",
				policies.DefaultIdentityHeader, "alice", policies.DefaultIdentityHeader, "bob"),
			status: 400, errType: "invalid_request_error", code: "ambiguous_user",
			outcome: outcomeRejected400,
		},
		{
			name:    "malformed JSON",
			headers: chatHeaders(20),
			body:    `{"model": "qwen3",`,
			status:  400, errType: "invalid_request_error",
			outcome: outcomeRejected400,
		},
		{
			name:    "model of the wrong type",
			headers: chatHeaders(20),
			body:    `{"model": 42}`,
			status:  400, errType: "invalid_request_error", param: "model",
			outcome: outcomeRejected400,
		},
		{
			name:    "no model anywhere",
			headers: chatHeaders(20),
			body:    `{"messages":[]}`,
			status:  400, errType: "invalid_request_error", param: "model",
			messageIn: "missing required parameter: model",
			outcome:   outcomeRejected400,
		},
		{
			name:    "model that cannot be a header",
			headers: chatHeaders(20),
			body:    `{"model":"qwen3\n"}`,
			status:  400, errType: "invalid_request_error", param: "model",
			outcome: outcomeRejected400,
		},
		{
			name:    "no model in the body, one in the client's header",
			headers: chatHeaders(20, policies.DefaultModelHeader, "gpt-4"),
			body:    `{"messages":[]}`,
			status:  400, errType: "invalid_request_error", param: "model",
			messageIn: "missing required parameter: model",
			outcome:   outcomeRejected400,
		},
		{
			name: "generation path without a body, model in the header",
			headers: requestHeaders(true, ":method", "GET", ":path", "/v1/chat/completions",
				policies.DefaultIdentityHeader, "alice", policies.DefaultModelHeader, "qwen3"),
			status: 400, errType: "invalid_request_error", param: "model",
			messageIn: "missing required parameter: model",
			outcome:   outcomeRejected400,
		},
		{
			name: "path whose usage cannot be read",
			headers: requestHeaders(false, ":method", "POST", ":path", "/invocations?x=1",
				policies.DefaultIdentityHeader, "alice", policies.DefaultModelHeader, "qwen3"),
			status: 404, errType: "invalid_request_error", code: "unknown_url",
			messageIn: "POST /invocations. This gateway serves POST /v1/chat/completions",
			outcome:   outcomeRejected404,
		},
		{
			name:    "unprefixed OpenAI path",
			headers: requestHeaders(false, ":method", "POST", ":path", "/chat/completions", policies.DefaultIdentityHeader, "alice"),
			status:  404, errType: "invalid_request_error", code: "unknown_url",
			outcome: outcomeRejected404,
		},
		{
			name:    "encoded slash Envoy did not decode",
			headers: requestHeaders(false, ":method", "POST", ":path", "/v1/chat%2Fcompletions", policies.DefaultIdentityHeader, "alice"),
			status:  404, errType: "invalid_request_error", code: "unknown_url",
			outcome: outcomeRejected404,
		},
		{
			name:    "body over the limit",
			headers: chatHeaders(70 << 10),
			body:    `{"model":"qwen3","messages":[{"role":"user","content":"` + strings.Repeat("a", 70<<10) + `"}]}`,
			status:  413, errType: "invalid_request_error", code: "request_too_large",
			outcome: outcomeRejected413,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			resp := c.send(tt.headers)
			if tt.body != "" {
				if resp.GetRequestHeaders() == nil {
					t.Fatalf("headers were not accepted: %v", resp)
				}
				resp = c.send(requestBody(tt.body))
			}
			got := immediate(t, resp, tt.status)
			if got.Error.Type != tt.errType {
				t.Errorf("type = %q, want %q", got.Error.Type, tt.errType)
			}
			if got.Error.Message == "" || !strings.Contains(got.Error.Message, tt.messageIn) {
				t.Errorf("message = %q, want one containing %q", got.Error.Message, tt.messageIn)
			}
			if tt.code != "" && (got.Error.Code == nil || *got.Error.Code != tt.code) {
				t.Errorf("code = %v, want %q", got.Error.Code, tt.code)
			}
			if tt.param != "" && (got.Error.Param == nil || *got.Error.Param != tt.param) {
				t.Errorf("param = %v, want %q", got.Error.Param, tt.param)
			}
			c.end()
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(tt.outcome)); n != 1 {
				t.Errorf("outcome %s counted %v times, want 1", tt.outcome, n)
			}
		})
	}
}

func TestStreamingRequestForcesIncludeUsage(t *testing.T) {
	tests := []struct {
		name          string
		path          string
		body          string
		contentLength bool
		wantMutation  bool
	}{
		{name: "chat stream", path: "/v1/chat/completions", body: `{"model":"qwen3","stream":true,"messages":[]}`, contentLength: true, wantMutation: true},
		{name: "chat stream, chunked request", path: "/v1/chat/completions", body: `{"model":"qwen3","stream":true,"messages":[]}`, wantMutation: true},
		{name: "completions stream with include_usage false", path: "/v1/completions", body: `{"model":"qwen3","stream":true,"stream_options":{"include_usage":false},"prompt":"a"}`, contentLength: true, wantMutation: true},
		{name: "usage already on", path: "/v1/chat/completions", body: `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`, contentLength: true},
		{name: "not a stream", path: "/v1/chat/completions", body: `{"model":"qwen3","messages":[]}`, contentLength: true},
		{name: "anthropic stream reports usage anyway", path: "/v1/messages", body: `{"model":"qwen3","stream":true,"messages":[]}`, contentLength: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			kv := []string{":method", "POST", ":path", tt.path, policies.DefaultIdentityHeader, "alice"}
			if tt.contentLength {
				kv = append(kv, "content-length", strconv.Itoa(len(tt.body)))
			}
			c.send(requestHeaders(false, kv...))
			common := c.send(requestBody(tt.body)).GetRequestBody().GetResponse()
			headers := setHeaders(t, common.GetHeaderMutation())
			newBody := common.GetBodyMutation().GetBody()
			if !tt.wantMutation {
				if common.GetBodyMutation() != nil || headers["content-length"] != nil {
					t.Fatalf("body or length changed: %v", common)
				}
				return
			}
			parsed, err := llmapi.ParseRequest(newBody, 0)
			if err != nil || !parsed.Stream || !parsed.IncludeUsage || parsed.Model != "qwen3" {
				t.Fatalf("mutated body %q parses as %+v, %v; want a qwen3 stream with include_usage", newBody, parsed, err)
			}
			length := headers["content-length"]
			if !tt.contentLength {
				if length != nil {
					t.Fatalf("content-length %q added to a chunked request", length.GetHeader().GetRawValue())
				}
				return
			}
			if string(length.GetHeader().GetRawValue()) != strconv.Itoa(len(newBody)) {
				t.Fatalf("content-length = %q, want %d (the new body's length)", length.GetHeader().GetRawValue(), len(newBody))
			}
			if length.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
				t.Fatalf("content-length append action = %v, want overwrite", length.GetAppendAction())
			}
		})
	}
}

func TestJSONResponseUsageBecomesMetadata(t *testing.T) {
	cfg := testConfig(t)
	cfg.Costs = append(cfg.Costs,
		celCost(t, "negative_cost", "input_tokens - 1000"),
		celCost(t, "failing_cost", "input_tokens / (output_tokens - 6)"),
		// The policy refuses a double result when it compiles an expression (tested there);
		// whatever error an evaluation reports, the cost is not charged.
		Cost{Name: "double_cost", Kind: CostCEL, Eval: func(context.Context, CostVars) (int64, error) {
			return 0, errors.New("result 9 is double, want a non-negative int")
		}},
		celCost(t, "by_backend", `backend == "sim" && model == "qwen3" ? cached_input_tokens + 100 : 0`),
	)
	h := newHarness(t, cfg)
	c := h.open(t)
	sendChat(t, c, chatBody)

	resp := c.send(responseHeaders(false, ":status", "200", "content-type", "application/json; charset=utf-8"))
	if resp.GetResponseHeaders() == nil {
		t.Fatalf("want a headers response, got %v", resp)
	}
	if got := resp.GetModeOverride().GetResponseBodyMode(); got != extprocfilterv3.ProcessingMode_BUFFERED {
		t.Fatalf("response body mode override = %v, want BUFFERED", got)
	}
	final := c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	if final.GetResponseBody() == nil {
		t.Fatalf("want a body response, got %v", final)
	}
	if final.GetResponseBody().GetResponse().GetBodyMutation() != nil {
		t.Fatal("the response body must pass unchanged")
	}
	want := map[string]any{
		"model": "qwen3", "usage_basis": "usage", "input_tokens": 6.0, "output_tokens": 6.0, "total_tokens": 12.0,
		"cached_input_tokens": 2.0, "llm_input_token": 6.0, "llm_output_token": 6.0, "llm_total_token": 12.0,
		"custom_cost": 18.0, // 6*2 + 6
		"by_backend":  102.0,
	}
	got := metadataFields(final)
	if len(got) != len(want) {
		t.Fatalf("metadata = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("metadata[%s] = %v, want %v", k, got[k], v)
		}
	}
	c.end()

	for _, name := range []string{"negative_cost", "failing_cost", "double_cost"} {
		if n := testutil.ToFloat64(h.srv.metrics.costErrors.WithLabelValues(name)); n != 1 {
			t.Errorf("cost errors for %s = %v, want 1", name, n)
		}
		if !strings.Contains(h.logs.String(), "cost="+name) {
			t.Errorf("no warning names cost %s; logs:\n%s", name, h.logs.String())
		}
	}
	if !strings.Contains(h.logs.String(), "level=WARN msg=\"cost not computed; not charged\" model=qwen3") {
		t.Errorf("cost warning lacks the model; logs:\n%s", h.logs.String())
	}
}

func TestSSEResponseMetadataOnFinalChunk(t *testing.T) {
	h := newHarness(t, testConfig(t))
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3","stream":true,"messages":[]}`)

	resp := c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
	if got := resp.GetModeOverride().GetResponseBodyMode(); got != extprocfilterv3.ProcessingMode_STREAMED {
		t.Fatalf("response body mode override = %v, want STREAMED", got)
	}
	// Everything else in the override stays as the filter is configured; trailers, which
	// Envoy's usage filter may add, end the body.
	if m := resp.GetModeOverride(); m.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED ||
		m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SEND || m.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_SEND {
		t.Fatalf("mode override changes more than the response body mode: %v", m)
	}

	// Chunks of 37 bytes cut events, lines and "data:" prefixes apart.
	// Each carries what the stream would be charged if it broke off there (an estimate, or the
	// usage once its report is in), never the costs: those are computed once, at the end.
	// Only a chunk after which that changed carries it: the first, and the one that brings the
	// usage report.
	chunks := splitEvery(readTestdata(t, "chat_stream.sse"), 37)
	published, lastBasis := 0, ""
	for i, chunk := range chunks {
		resp := c.send(responseBody(chunk, false))
		if resp.GetResponseBody().GetResponse().GetBodyMutation() != nil {
			t.Fatalf("chunk %d: the body was changed: %v", i, resp)
		}
		running := metadataFields(resp)
		if running == nil {
			if i == 0 {
				t.Fatal("the first chunk does not carry what the stream would be charged")
			}
			continue
		}
		if running["usage_basis"] == nil || running["llm_total_token"] != nil {
			t.Fatalf("chunk %d: want the running estimate and no costs, got %v", i, running)
		}
		published++
		lastBasis, _ = running["usage_basis"].(string)
	}
	if lastBasis != "usage" || published > 3 {
		t.Errorf("%d of %d chunks carried the running charge, the last with basis %q; want at most 3, the last the reported usage", published, len(chunks), lastBasis)
	}
	final := c.send(responseBody(nil, true))
	got := metadataFields(final)
	want := map[string]any{"model": "qwen3", "llm_input_token": 10.0, "llm_output_token": 7.0, "llm_total_token": 17.0, "custom_cost": 27.0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("metadata[%s] = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	c.end()
	// Every message is counted by its kind: the round trips this request cost.
	for kind, want := range map[string]int{"request_headers": 1, "request_body": 1, "response_headers": 1, "response_body": len(chunks) + 1, "response_trailers": 0} {
		if n := testutil.ToFloat64(h.srv.metrics.messages.WithLabelValues(kind)); n != float64(want) {
			t.Errorf("%s messages counted %v, want %d", kind, n, want)
		}
	}
	labels := []string{"chat", "qwen3"}
	if n := testutil.CollectAndCount(h.srv.metrics.timeToFirstToken); n != 1 {
		t.Errorf("time to first token series = %d, want 1", n)
	}
	if n := histogramCount(t, h, "gen_ai_server_time_to_first_token_seconds", labels...); n != 1 {
		t.Errorf("time to first token observations = %d, want 1", n)
	}
	if n := histogramCount(t, h, "gen_ai_server_time_per_output_token_seconds", labels...); n != 1 {
		t.Errorf("time per output token observations = %d, want 1", n)
	}
}

// readsNoMore reports whether a response headers answer leaves the rest of the response
// unsent: no override (the mode the filter has, which the tests' requests do not change), or
// one without body and trailers.
func readsNoMore(override *extprocfilterv3.ProcessingMode) bool {
	return override == nil || (override.GetResponseBodyMode() == extprocfilterv3.ProcessingMode_NONE &&
		override.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SKIP)
}

func TestNonSuccessResponseIsNotRead(t *testing.T) {
	for _, status := range []string{"429", "500", "404", "302"} {
		t.Run(status, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			sendChat(t, c, chatBody)
			resp := c.send(responseHeaders(false, ":status", status, "content-type", "application/json"))
			if resp.GetResponseHeaders() == nil || !readsNoMore(resp.GetModeOverride()) || resp.GetDynamicMetadata() != nil {
				t.Fatalf("error response must stay unread and uncharged, got %v", resp)
			}
			c.end()
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeErrorStatus)); n != 1 {
				t.Fatalf("error_status outcomes = %v, want 1", n)
			}
			if n := histogramCount(t, h, "gen_ai_server_request_duration_seconds", "chat", "qwen3", status); n != 1 {
				t.Fatalf("duration observations with error_type %s = %d, want 1", status, n)
			}
		})
	}
}

func TestResponsesWithoutUsage(t *testing.T) {
	const ceiling = float64(policies.DefaultMaxOutputTokens) // chatBody names no max_tokens
	// Usage that sits after more bytes than MaxResponseBytes (64 KiB here) is not read, even
	// when a small compressed body expands to it.
	oversized := []byte(`{"pad":"` + strings.Repeat("a", 70<<10) + `","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	tests := []struct {
		name       string
		headers    []string
		headersEnd bool    // the response has no body at all
		body       []byte  // nil: no body message is sent
		output     float64 // output tokens charged: the text's bytes, or the ceiling when none was read
	}{
		{name: "JSON without usage", headers: []string{"content-type", "application/json"}, body: []byte(`{"id":"x","choices":[]}`), output: ceiling},
		{name: "JSON answer without usage", headers: []string{"content-type", "application/json"}, output: float64(len("Hello!")),
			body: []byte(`{"id":"x","choices":[{"message":{"role":"assistant","content":"Hello!"}}]}`)},
		{name: "not JSON", headers: []string{"content-type", "text/plain"}, output: ceiling},
		{name: "unsupported encoding", headers: []string{"content-type", "application/json", "content-encoding", "br"}, output: ceiling},
		{name: "corrupt gzip", headers: []string{"content-type", "application/json", "content-encoding", "gzip"}, body: []byte("not gzip"), output: ceiling},
		{name: "JSON over the size limit", headers: []string{"content-type", "application/json"}, body: oversized, output: ceiling},
		{name: "gzip expanding over the size limit", headers: []string{"content-type", "application/json", "content-encoding", "gzip"}, body: gzipBytes(t, oversized), output: ceiling},
		{name: "SSE without a usage event", headers: []string{"content-type", "text/event-stream"}, body: []byte("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n"), output: 1},
		{name: "empty success", headers: []string{"content-type", "application/json", "content-length", "0"}, headersEnd: true, output: ceiling},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			sendChat(t, c, chatBody)
			resp := c.send(responseHeaders(tt.headersEnd, append([]string{":status", "200"}, tt.headers...)...))
			if tt.body == nil {
				if !readsNoMore(resp.GetModeOverride()) {
					t.Fatalf("body of a response without readable usage requested: %v", resp.GetModeOverride())
				}
			} else {
				resp = c.send(responseBody(tt.body, true))
			}
			// Nothing the backend reported: the prompt and the output are charged their upper
			// bounds, and that is what the access log shows.
			fields := metadataFields(resp)
			if fields[metadataUsageBasis] != basisEstimate {
				t.Fatalf("usage_basis %v, want %s: %v", fields[metadataUsageBasis], basisEstimate, fields)
			}
			prompt := float64(len("user") + len("hi") + promptFraming)
			if fields["llm_input_token"] != prompt {
				t.Errorf("input estimate %v, want %v", fields["llm_input_token"], prompt)
			}
			if tt.output != fields["llm_output_token"] {
				t.Errorf("output estimate %v, want %v", fields["llm_output_token"], tt.output)
			}
			c.end()
			if n := testutil.ToFloat64(h.srv.metrics.usageMissing.WithLabelValues("qwen3")); n != 1 {
				t.Fatalf("usage missing = %v, want 1", n)
			}
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeUsageMissing)); n != 1 {
				t.Fatalf("usage_missing outcomes = %v, want 1", n)
			}
		})
	}
}

func TestGzipResponses(t *testing.T) {
	t.Run("JSON", func(t *testing.T) {
		h := newHarness(t, testConfig(t))
		c := h.open(t)
		sendChat(t, c, chatBody)
		c.send(responseHeaders(false, ":status", "200", "content-type", "application/json", "content-encoding", "gzip"))
		final := c.send(responseBody(gzipBytes(t, readTestdata(t, "chat_completion.json")), true))
		if got := metadataFields(final)["llm_total_token"]; got != 12.0 {
			t.Fatalf("llm_total_token = %v, want 12", got)
		}
	})
	t.Run("SSE", func(t *testing.T) {
		h := newHarness(t, testConfig(t))
		c := h.open(t)
		sendChat(t, c, `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`)
		resp := c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream", "content-encoding", "gzip"))
		if resp.GetModeOverride().GetResponseBodyMode() != extprocfilterv3.ProcessingMode_STREAMED {
			t.Fatalf("want STREAMED, got %v", resp.GetModeOverride())
		}
		events := bytes.SplitAfter(readTestdata(t, "chat_stream.sse"), []byte("\n\n"))
		chunks := gzipChunks(t, events)
		// Once the usage chunk is in, it is what the stream is charged even if it breaks off.
		lastBasis := any(nil)
		for i, chunk := range chunks[:len(chunks)-1] {
			if running := metadataFields(c.send(responseBody(chunk, false))); running != nil {
				lastBasis = running["usage_basis"]
			} else if i == 0 {
				t.Fatal("the first chunk does not carry what the stream would be charged")
			}
		}
		if lastBasis != "usage" {
			t.Fatalf("before the end: the last charge published has basis %v, want usage", lastBasis)
		}
		final := c.send(responseBody(chunks[len(chunks)-1], true))
		if got := metadataFields(final)["llm_total_token"]; got != 17.0 {
			t.Fatalf("llm_total_token = %v, want 17 (metadata %v)", got, metadataFields(final))
		}
	})
}

// TestUserLabelOptIn: with Config.UserLabel the token usage carries the user id.
func TestUserLabelOptIn(t *testing.T) {
	cfg := testConfig(t)
	cfg.UserLabel = true
	h := newHarness(t, cfg)
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3","messages":[]}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if n := histogramCount(t, h, "gen_ai_client_token_usage", "chat", "qwen3", "input", "alice"); n != 1 {
		t.Errorf("alice's input token observations = %d, want 1", n)
	}
}

func TestMetricsAfterRequests(t *testing.T) {
	h := newHarness(t, testConfig(t))
	for _, model := range []string{"qwen3", "qwen3", "mystery-model"} {
		c := h.open(t)
		body := `{"model":"` + model + `","messages":[]}`
		sendChat(t, c, body)
		c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
		c.end()
	}
	if n := histogramCount(t, h, "gen_ai_client_token_usage", "chat", "qwen3", "input", ""); n != 2 {
		t.Errorf("qwen3 input token observations = %d, want 2", n)
	}
	if sum := histogramSum(t, h, "gen_ai_client_token_usage", "chat", "qwen3", "total", ""); sum != 24 {
		t.Errorf("qwen3 total tokens = %v, want 24", sum)
	}
	// A model outside the policy is folded into _OTHER, never its own series.
	if n := histogramCount(t, h, "gen_ai_client_token_usage", "chat", "_OTHER", "output", ""); n != 1 {
		t.Errorf("_OTHER output observations = %d, want 1", n)
	}
	if strings.Contains(metricNames(t, h), "alice") {
		t.Errorf("the user id shows up in metrics without the userLabel opt-in")
	}
	if n := histogramCount(t, h, "gen_ai_server_request_duration_seconds", "chat", "qwen3", ""); n != 2 {
		t.Errorf("successful qwen3 durations = %d, want 2", n)
	}
	if got := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeOK)); got != 3 {
		t.Errorf("ok outcomes = %v, want 3", got)
	}
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP tollgate_extproc_requests_total Requests seen by the ext_proc server, by outcome.
# TYPE tollgate_extproc_requests_total counter
tollgate_extproc_requests_total{outcome="ok"} 3
`), "tollgate_extproc_requests_total"); err != nil {
		t.Error(err)
	}
	if strings.Contains(metricNames(t, h), "mystery-model") {
		t.Error("an unknown model name reached a metric label")
	}
}

func TestUpdateSwapsConfig(t *testing.T) {
	h := newHarness(t, testConfig(t))
	inFlight := h.open(t)
	sendChat(t, inFlight, chatBody)

	next := testConfig(t)
	next.Costs = append(next.Costs, celCost(t, "premium", "total_tokens * 10"))
	h.srv.Update(next)

	finish := func(c *call) map[string]any {
		c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		fields := metadataFields(c.send(responseBody(readTestdata(t, "chat_completion.json"), true)))
		c.end()
		return fields
	}
	if got := finish(inFlight); got["premium"] != nil {
		t.Fatalf("a request that started before the update got the new cost: %v", got)
	}
	fresh := h.open(t)
	sendChat(t, fresh, chatBody)
	if got := finish(fresh)["premium"]; got != 120.0 {
		t.Fatalf("premium = %v, want 120 after the update", got)
	}
}

func TestClientCancelReleasesStream(t *testing.T) {
	h := newHarness(t, testConfig(t))
	// Warm up the connection so its own goroutines are part of the baseline.
	warm := h.open(t)
	sendChat(t, warm, chatBody)
	warm.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	warm.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	warm.end()
	baseline := runtime.NumGoroutine()

	for _, encoding := range []string{"identity", "gzip"} {
		c := h.open(t)
		sendChat(t, c, `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`)
		c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream", "content-encoding", encoding))
		events := bytes.SplitAfter(readTestdata(t, "chat_stream.sse"), []byte("\n\n"))
		first := events[0]
		if encoding == "gzip" {
			first = gzipChunks(t, events)[0]
		}
		c.send(responseBody(first, false))
		tgtest.Eventually(t, 10*time.Second, "the stream to be active", func() bool { return testutil.ToFloat64(h.srv.metrics.activeStreams) == 1 })
		c.cancel()
	}
	tgtest.Eventually(t, 10*time.Second, "cancelled streams to be released", func() bool { return testutil.ToFloat64(h.srv.metrics.activeStreams) == 0 })
	tgtest.Eventually(t, 10*time.Second, "goroutines to settle", func() bool { return runtime.NumGoroutine() <= baseline })
	if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeCancelled)); n != 2 {
		t.Fatalf("cancelled outcomes = %v, want 2", n)
	}
	if n := histogramCount(t, h, "gen_ai_server_request_duration_seconds", "chat", "qwen3", "cancelled"); n != 2 {
		t.Fatalf("cancelled durations = %d, want 2", n)
	}
}

func TestServerOptionsAllowBodyLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxRequestBytes = 6 << 20
	h := newHarness(t, cfg)
	// A body right at the limit plus headers must reach the server (gRPC's default would
	// refuse anything over 4 MiB).
	body := `{"model":"qwen3","messages":[{"role":"user","content":"` + strings.Repeat("a", int(cfg.MaxRequestBytes)-60) + `"}]}`
	resp := sendChat(t, h.open(t), body)
	if resp.GetRequestBody() == nil {
		t.Fatalf("want a body response, got %v", resp.GetImmediateResponse())
	}
}

func TestImmediateErrorBodyIsOpenAIShaped(t *testing.T) {
	resp := immediateResponse(rejection{status: 400, err: apiError{Message: `bad "x"`, Type: errorTypeInvalidRequest}})
	var raw map[string]map[string]any
	if err := json.Unmarshal(resp.GetImmediateResponse().GetBody(), &raw); err != nil {
		t.Fatal(err)
	}
	e := raw["error"]
	for _, key := range []string{"message", "type", "param", "code"} {
		if _, ok := e[key]; !ok {
			t.Errorf("error body lacks %q: %v", key, e)
		}
	}
	if e["param"] != nil || e["code"] != nil || e["message"] != `bad "x"` {
		t.Errorf("error body = %v", e)
	}
}

// StreamsInFlight, which `tollgate status` shows, counts the requests the server holds.
func TestStreamsInFlightCountsOpenRequests(t *testing.T) {
	h := newHarness(t, testConfig(t))
	if n := h.srv.StreamsInFlight(); n != 0 {
		t.Fatalf("%d in flight before any request", n)
	}
	c := h.open(t)
	sendChat(t, c, chatBody)
	tgtest.Eventually(t, 10*time.Second, "one request in flight", func() bool { return h.srv.StreamsInFlight() == 1 })
	c.cancel()
	tgtest.Eventually(t, 10*time.Second, "none in flight once it ended", func() bool { return h.srv.StreamsInFlight() == 0 })
}
