// Package sim is a small, deterministic LLM server that speaks the OpenAI Chat Completions,
// Completions and Responses APIs and the Anthropic Messages API. Tests, demos and benchmarks use it
// in place of a real model: every answer is the same fixed text and reports exact token usage, so a
// quota test can predict what each request costs.
//
// # Endpoints
//
//	POST /v1/chat/completions   OpenAI chat (JSON, or SSE chat.completion.chunk events with "stream": true)
//	POST /v1/completions        OpenAI legacy completions (JSON, or SSE text_completion events)
//	POST /v1/responses          OpenAI Responses API (JSON, or SSE "event:" + "data:" pairs)
//	POST /v1/messages           Anthropic Messages API (JSON, or SSE "event:" + "data:" pairs)
//	GET  /v1/models             the model list (Options.Models); GET /v1/models/{id} for one model
//	GET  /healthz               200 "ok"
//
// Any request body with a string "model" is accepted; the answer echoes that model. Bad JSON or a
// missing model is a 400 with an OpenAI-style error body (Anthropic-style on /v1/messages).
//
// # Token usage
//
// Each answer is exactly Options.OutputTokens tokens long (default 6): the words of a fixed
// sentence, cycled, one word per token. Prompt tokens are not counted from the request: every
// request reports Options.InputTokens (default 6). With the defaults, the seed demo's request
// {"model":"qwen3","messages":[{"role":"user","content":"Hello from Alice!"}]} therefore costs 6 input
// + 6 output = 12 total tokens, as it does against the seed's backend. OpenAI streams carry usage in
// a final chunk with empty "choices" only when the request sets stream_options.include_usage, as
// OpenAI does; Responses and Anthropic streams always carry it.
//
// # Response headers
//
//	x-llmsim-backend             Options.Name, so a test can tell which backend served it
//	x-llmsim-saw-authorization   "true" when the request had an Authorization header (never its value)
//	x-llmsim-request-model       the model named in the request body
//
// # Request knobs
//
// Tests steer a single request with request headers:
//
//	x-llmsim-output-tokens: N   generate N tokens instead of Options.OutputTokens
//	x-llmsim-input-tokens: N    report N prompt tokens instead of Options.InputTokens
//	x-llmsim-status: S          answer status S (400-599) with an error body and no usage
//	x-llmsim-gzip: 1            gzip the response body; a stream is flushed through gzip per event
//	x-llmsim-cut-after: N       streams only: abort the connection after N token events, before any
//	                            finish event, usage or [DONE]
//	x-llmsim-sse-fault: F       streams only: send a malformed stream. F is "garbage" (comments,
//	                            non-JSON data and other junk before every real event; usage
//	                            intact), "oversize-event" (one event of OversizeEventBytes data
//	                            first) or "unterminated" (the last event never gets its ending
//	                            blank line, and there is no [DONE]; the body ends normally)
//	x-llmsim-echo-headers: a,b  copy each value of request headers a and b into response headers
//	                            x-llmsim-echo-a, x-llmsim-echo-b, to show what reached the backend
//	                            (credential headers such as authorization are refused)
//	x-llmsim-ttft: D            wait D (a Go duration from 0 to 60s, e.g. "250ms") before the first
//	                            token instead of Options.TimeToFirstToken
//	x-llmsim-token-delay: D     pause D (a Go duration from 0 to 10s) between streamed tokens
//	                            instead of Options.TokenDelay
//	x-llmsim-usage-format: F    write every token count in usage objects as F: "int" (6, the
//	                            default), "float" (6.0) or "string" ("6"); JSON and streamed
//	                            answers of every API alike
//
// A malformed knob is a 400, so a typo never passes silently.
//
// # Timing
//
// Options.TimeToFirstToken delays the first byte of every generated answer (headers included);
// Options.TokenDelay separates consecutive tokens; the x-llmsim-ttft and x-llmsim-token-delay
// knobs override either for one request. A non-streamed answer is sent once the whole
// generation would have finished: TimeToFirstToken + (tokens-1) × TokenDelay. When the client goes
// away the handler stops at the next wait or write and returns; it starts no goroutines.
package sim

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults applied to zero Options fields.
const (
	// DefaultInputTokens reproduces the seed demo's 6 prompt tokens per request.
	DefaultInputTokens = 6
	// DefaultOutputTokens reproduces the seed demo's 6 completion tokens per request.
	DefaultOutputTokens = 6
	// DefaultName is reported in x-llmsim-backend when Options.Name is empty.
	DefaultName = "llmsim"
)

// DefaultModels are listed by GET /v1/models when Options.Models is empty: the seed demo's models.
func DefaultModels() []string { return []string{"qwen3", "gpt-4", "gpt-3.5-turbo"} }

// Response header names, exported so tests in other packages can read them without retyping.
const (
	HeaderBackend          = "x-llmsim-backend"
	HeaderSawAuthorization = "x-llmsim-saw-authorization"
	HeaderRequestModel     = "x-llmsim-request-model"
)

// Request knob header names (see the package documentation).
const (
	HeaderOutputTokens = "x-llmsim-output-tokens"
	HeaderInputTokens  = "x-llmsim-input-tokens"
	HeaderStatus       = "x-llmsim-status"
	HeaderGzip         = "x-llmsim-gzip"
	HeaderCutAfter     = "x-llmsim-cut-after"
	HeaderSSEFault     = "x-llmsim-sse-fault"
	HeaderEchoHeaders  = "x-llmsim-echo-headers"
	HeaderTTFT         = "x-llmsim-ttft"
	HeaderTokenDelay   = "x-llmsim-token-delay"
	HeaderUsageFormat  = "x-llmsim-usage-format"
	// HeaderEchoPrefix prefixes the lowercased name of each header x-llmsim-echo-headers echoes.
	HeaderEchoPrefix = "x-llmsim-echo-"
)

// Options configures the simulator. The zero value is usable: every zero field takes its default.
type Options struct {
	// InputTokens is the usage.prompt_tokens reported per request, whatever the prompt;
	// 0 (or less) means DefaultInputTokens.
	InputTokens int
	// OutputTokens is the number of tokens generated per request; 0 (or less) means
	// DefaultOutputTokens. The x-llmsim-output-tokens knob can still ask for 0.
	OutputTokens int
	// TimeToFirstToken delays the first byte (or first SSE event) of each generated answer.
	TimeToFirstToken time.Duration
	// TokenDelay is the pause between consecutive streamed tokens.
	TokenDelay time.Duration
	// Models are listed by GET /v1/models; empty means DefaultModels().
	Models []string
	// Name is reported in the x-llmsim-backend response header; empty means DefaultName.
	Name string
}

// withDefaults returns a copy of o with every zero (or negative) field replaced by its default.
func (o Options) withDefaults() Options {
	if o.InputTokens <= 0 {
		o.InputTokens = DefaultInputTokens
	}
	if o.OutputTokens <= 0 {
		o.OutputTokens = DefaultOutputTokens
	}
	o.TimeToFirstToken = max(o.TimeToFirstToken, 0)
	o.TokenDelay = max(o.TokenDelay, 0)
	if len(o.Models) == 0 {
		o.Models = DefaultModels()
	} else {
		o.Models = append([]string(nil), o.Models...)
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	return o
}

// handler serves every endpoint. It is safe for concurrent use: the only mutable state is the
// atomic request counter that makes response ids unique.
type handler struct {
	opts   Options
	logger *slog.Logger
	// defaultText is the answer for the default token count, built once because nearly every
	// request in a benchmark asks for exactly that.
	defaultText string
	// modelList is the pre-encoded GET /v1/models body.
	modelList []byte
	seq       atomic.Uint64
}

// NewHandler returns the simulator's HTTP handler. A nil logger discards logs; with a logger
// enabled at debug level the handler logs one line per request.
func NewHandler(opts Options, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	return &handler{
		opts:        opts,
		logger:      logger,
		defaultText: completionText(opts.OutputTokens),
		modelList:   encodeModelList(opts.Models),
	}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	header := w.Header()
	header.Set(HeaderBackend, h.opts.Name)
	// Presence only: the point is to let tests check whether a gateway forwarded or stripped
	// credentials without the value ever being echoed anywhere.
	header.Set(HeaderSawAuthorization, strconv.FormatBool(len(r.Header.Values("Authorization")) > 0))

	if !h.logger.Enabled(r.Context(), slog.LevelDebug) {
		h.route(w, r)
		return
	}
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	h.route(rec, r)
	h.logger.LogAttrs(r.Context(), slog.LevelDebug, "request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("model", header.Get(HeaderRequestModel)),
		slog.Int("status", rec.statusOrOK()),
		slog.Duration("duration", time.Since(start)),
	)
}

func (h *handler) route(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch path {
	case "/v1/chat/completions":
		h.generate(w, r, apiChat)
	case "/v1/completions":
		h.generate(w, r, apiCompletions)
	case "/v1/responses":
		h.generate(w, r, apiResponses)
	case "/v1/messages":
		h.generate(w, r, apiMessages)
	case "/v1/models":
		if allowMethods(w, r, http.MethodGet, http.MethodHead) {
			writeRaw(w, http.StatusOK, "application/json", h.modelList)
		}
	case "/healthz":
		if allowMethods(w, r, http.MethodGet, http.MethodHead) {
			writeRaw(w, http.StatusOK, "text/plain; charset=utf-8", []byte("ok"))
		}
	default:
		if id, ok := strings.CutPrefix(path, "/v1/models/"); ok {
			if allowMethods(w, r, http.MethodGet, http.MethodHead) {
				h.serveModel(w, id)
			}
			return
		}
		writeError(w, false, apiChat, http.StatusNotFound, "unknown path "+strconv.Quote(path), "", "unknown_url")
	}
}

// allowMethods answers 405 unless r uses one of methods.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, false, apiChat, http.StatusMethodNotAllowed,
		r.Method+" is not allowed on "+r.URL.Path+"; use "+strings.Join(methods, " or "), "", "method_not_allowed")
	return false
}

// nextID returns a response id that is unique within this handler, e.g. "chatcmpl-llmsim-42".
func (h *handler) nextID(prefix string) string {
	return prefix + "llmsim-" + strconv.FormatUint(h.seq.Add(1), 10)
}

// statusRecorder remembers the status code for the debug log line. Unwrap keeps
// http.ResponseController (flushing) working through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) statusOrOK() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}
