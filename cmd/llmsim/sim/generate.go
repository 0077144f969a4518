package sim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// apiKind names the API a generation request came in on; it picks the response and error shapes.
type apiKind int

const (
	apiChat apiKind = iota
	apiCompletions
	apiResponses
	apiMessages
)

const (
	// maxBodyBytes bounds request bodies; a larger one is a 413, not an out-of-memory.
	maxBodyBytes = 65 << 20 // above the largest body a policy lets through (64 MiB)
	// maxKnobTokens bounds the token-count knobs so one request cannot ask for a gigabyte answer.
	maxKnobTokens = 1 << 20
	// maxKnobTTFT and maxKnobTokenDelay bound the timing knobs, so a typo ("5m" for "5ms")
	// fails the request instead of hanging a test.
	maxKnobTTFT       = 60 * time.Second
	maxKnobTokenDelay = 10 * time.Second
)

// requestBody holds the few request fields the simulator looks at. Everything else (messages,
// input, max_tokens, ...) is accepted and ignored.
type requestBody struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// generation is one answer to produce.
type generation struct {
	api          apiKind
	id           string
	created      int64
	model        string
	stream       bool
	includeUsage bool // OpenAI chat/completions streams only
	inputTokens  int
	outputTokens int
	cutAfter     int // abort after this many token events; -1 means never
	fault        sseFault
	ttft         time.Duration // wait before the first token
	tokenDelay   time.Duration // wait between streamed tokens
	usageFormat  usageFormat
}

func (g *generation) totalTokens() int { return g.inputTokens + g.outputTokens }

// knobs are the per-request overrides read from x-llmsim-* request headers.
type knobs struct {
	gzip         bool
	outputTokens int // -1: not set
	inputTokens  int // -1: not set
	status       int // 0: not set
	cutAfter     int // -1: not set
	sseFault     sseFault
	echo         []string      // request headers to echo; nil: none
	ttft         time.Duration // -1: not set
	tokenDelay   time.Duration // -1: not set
	usageFormat  usageFormat
}

// parseKnobs reads the x-llmsim-* request headers. An unknown x-llmsim-* header is an error, so a
// misspelt knob fails the request instead of being silently ignored. The gzip knob is parsed first
// so that even the error about another knob comes back compressed as asked.
func parseKnobs(header http.Header) (knobs, error) {
	k := knobs{outputTokens: -1, inputTokens: -1, cutAfter: -1, ttft: -1, tokenDelay: -1}
	var errs []error
	if values, ok := header["X-Llmsim-Gzip"]; ok {
		switch strings.ToLower(strings.TrimSpace(values[0])) {
		case "1", "true", "yes":
			k.gzip = true
		case "0", "false", "no", "":
		default:
			errs = append(errs, errors.New(HeaderGzip+": want 1 or 0, got "+strconv.Quote(values[0])))
		}
	}
	// The server hands handlers canonical header keys, so one pass over the map finds every knob
	// without allocating a canonical key per lookup.
	for key, values := range header {
		if !strings.HasPrefix(key, "X-Llmsim-") {
			continue
		}
		var err error
		switch key {
		case "X-Llmsim-Gzip":
		case "X-Llmsim-Output-Tokens":
			k.outputTokens, err = knobInt(HeaderOutputTokens, values[0], 0, maxKnobTokens)
		case "X-Llmsim-Input-Tokens":
			k.inputTokens, err = knobInt(HeaderInputTokens, values[0], 0, maxKnobTokens)
		case "X-Llmsim-Status":
			k.status, err = knobInt(HeaderStatus, values[0], 400, 599)
		case "X-Llmsim-Cut-After":
			k.cutAfter, err = knobInt(HeaderCutAfter, values[0], 0, maxKnobTokens)
		case "X-Llmsim-Sse-Fault":
			k.sseFault, err = parseSSEFault(values[0])
		case "X-Llmsim-Echo-Headers":
			k.echo, err = parseEchoHeaders(strings.Join(values, ","))
		case "X-Llmsim-Ttft":
			k.ttft, err = knobDuration(HeaderTTFT, values[0], maxKnobTTFT)
		case "X-Llmsim-Token-Delay":
			k.tokenDelay, err = knobDuration(HeaderTokenDelay, values[0], maxKnobTokenDelay)
		case "X-Llmsim-Usage-Format":
			var ok bool
			if k.usageFormat, ok = parseUsageFormat(strings.ToLower(strings.TrimSpace(values[0]))); !ok {
				err = errors.New(HeaderUsageFormat + ": want int, float or string, got " + strconv.Quote(values[0]))
			}
		default:
			err = errors.New("unknown simulator header " + strings.ToLower(key) + "; known: " + strings.Join([]string{
				HeaderOutputTokens, HeaderInputTokens, HeaderStatus, HeaderGzip, HeaderCutAfter, HeaderSSEFault, HeaderEchoHeaders,
				HeaderTTFT, HeaderTokenDelay, HeaderUsageFormat,
			}, ", "))
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return k, errors.Join(errs...)
}

// knobDuration parses a Go duration ("250ms", "1.5s", "0") from 0 to highest.
func knobDuration(name, value string, highest time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(value))
	if err != nil || d < 0 || d > highest {
		return 0, errors.New(name + ": want a duration from 0 to " + highest.String() + ", got " + strconv.Quote(value))
	}
	return d, nil
}

func knobInt(name, value string, lowest, highest int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(value))
	if err != nil || n < lowest || n > highest {
		return 0, errors.New(name + ": want an integer from " + strconv.Itoa(lowest) + " to " +
			strconv.Itoa(highest) + ", got " + strconv.Quote(value))
	}
	return n, nil
}

// generate serves the four generation endpoints: validate, apply knobs, wait, answer.
func (h *handler) generate(w http.ResponseWriter, r *http.Request, api apiKind) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	k, err := parseKnobs(r.Header)
	echoHeaders(w, r, k.echo)
	if err != nil {
		writeError(w, k.gzip, api, http.StatusBadRequest, err.Error(), "", "invalid_llmsim_header")
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if maxErr, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeError(w, k.gzip, api, http.StatusRequestEntityTooLarge,
				"request body is larger than "+strconv.FormatInt(maxErr.Limit, 10)+" bytes", "", "request_too_large")
			return
		}
		writeError(w, k.gzip, api, http.StatusBadRequest, "could not read the request body: "+err.Error(), "", "")
		return
	}
	var req requestBody
	if err := json.Unmarshal(data, &req); err != nil {
		writeError(w, k.gzip, api, http.StatusBadRequest,
			"We could not parse the JSON body of your request: "+err.Error(), "", "invalid_json")
		return
	}
	if req.Model == "" {
		writeError(w, k.gzip, api, http.StatusBadRequest,
			"you must provide a model parameter", "model", "missing_required_parameter")
		return
	}
	w.Header().Set(HeaderRequestModel, req.Model)
	if k.cutAfter >= 0 && !req.Stream {
		writeError(w, k.gzip, api, http.StatusBadRequest,
			HeaderCutAfter+" only applies to streaming requests (\"stream\": true)", "", "invalid_llmsim_header")
		return
	}
	if k.sseFault != faultNone && !req.Stream {
		writeError(w, k.gzip, api, http.StatusBadRequest,
			HeaderSSEFault+" only applies to streaming requests (\"stream\": true)", "", "invalid_llmsim_header")
		return
	}
	if k.status != 0 {
		writeError(w, k.gzip, api, k.status,
			"simulated failure requested with "+HeaderStatus, "", "llmsim_simulated_error")
		return
	}

	g := &generation{
		api:          api,
		id:           h.nextID(idPrefix(api)),
		created:      time.Now().Unix(),
		model:        req.Model,
		stream:       req.Stream,
		includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage,
		inputTokens:  h.opts.InputTokens,
		outputTokens: h.opts.OutputTokens,
		cutAfter:     k.cutAfter,
		fault:        k.sseFault,
		ttft:         h.opts.TimeToFirstToken,
		tokenDelay:   h.opts.TokenDelay,
		usageFormat:  k.usageFormat,
	}
	if k.ttft >= 0 {
		g.ttft = k.ttft
	}
	if k.tokenDelay >= 0 {
		g.tokenDelay = k.tokenDelay
	}
	if k.inputTokens >= 0 {
		g.inputTokens = k.inputTokens
	}
	if k.outputTokens >= 0 {
		g.outputTokens = k.outputTokens
	}

	ctx := r.Context()
	wait := g.ttft
	if !g.stream && g.outputTokens > 1 {
		// A non-streamed answer arrives when the last token would have.
		wait += time.Duration(g.outputTokens-1) * g.tokenDelay
	}
	if err := pause(ctx, wait); err != nil {
		h.logger.LogAttrs(ctx, slog.LevelDebug, "client went away before the first token", slog.String("error", err.Error()))
		return
	}

	o := newOutput(w, k.gzip)
	o.fault = g.fault
	if !g.stream {
		// A write error means the client is gone; there is nobody left to tell.
		_ = o.sendJSON(http.StatusOK, h.completeBody(g))
		return
	}
	if err := h.stream(ctx, o, g); err != nil {
		h.logger.LogAttrs(ctx, slog.LevelDebug, "stream ended early", slog.String("error", err.Error()))
	}
}

// idPrefix returns the id prefix the real API uses, separator included.
func idPrefix(api apiKind) string {
	switch api {
	case apiCompletions:
		return "cmpl-"
	case apiResponses:
		return "resp_"
	case apiMessages:
		return "msg_"
	default:
		return "chatcmpl-"
	}
}

// text returns the full answer, reusing the prebuilt default text when the count matches.
func (h *handler) text(g *generation) string {
	if g.outputTokens == h.opts.OutputTokens {
		return h.defaultText
	}
	return completionText(g.outputTokens)
}

// completeBody returns the non-streamed JSON answer in the shape of g's API.
func (h *handler) completeBody(g *generation) any {
	text := h.text(g)
	switch g.api {
	case apiCompletions:
		return completionsResponse(g, text)
	case apiResponses:
		return responsesResponse(g, text)
	case apiMessages:
		return messagesResponse(g, text)
	default:
		return chatResponse(g, text)
	}
}

// stream sends the streamed answer in the shape of g's API.
func (h *handler) stream(ctx context.Context, o *output, g *generation) error {
	if err := o.startStream(); err != nil {
		return err
	}
	switch g.api {
	case apiCompletions:
		return h.streamCompletions(ctx, o, g)
	case apiResponses:
		return h.streamResponses(ctx, o, g)
	case apiMessages:
		return h.streamMessages(ctx, o, g)
	default:
		return h.streamChat(ctx, o, g)
	}
}

// emitTokens calls send once per token, pausing g.tokenDelay between tokens, and aborts the
// connection where the cut-after knob says. It returns early with the context's error when the
// client goes away, or with send's error when a write fails.
func (h *handler) emitTokens(ctx context.Context, g *generation, send func(token string) error) error {
	for i := range g.outputTokens {
		if i == g.cutAfter {
			h.abortConnection(ctx, i)
		}
		delay := g.tokenDelay
		if i == 0 {
			delay = 0 // the time to first token was already waited for.
		}
		if err := pause(ctx, delay); err != nil {
			return err
		}
		if err := send(tokenAt(i)); err != nil {
			return err
		}
	}
	if g.cutAfter >= 0 {
		h.abortConnection(ctx, g.outputTokens)
	}
	return nil
}

// abortConnection drops the connection mid-response, the way a crashing upstream would: no
// finish event, no usage, no [DONE], and for HTTP/1.1 no terminating chunk. Panicking with
// http.ErrAbortHandler is net/http's documented way to do that; the server recovers it without
// logging. It only runs when a test asked for it with the cut-after knob.
func (h *handler) abortConnection(ctx context.Context, sent int) {
	h.logger.LogAttrs(ctx, slog.LevelDebug, "cutting the stream as asked", slog.Int("token_events_sent", sent))
	panic(http.ErrAbortHandler)
}

// pause waits for d, or returns the context's error as soon as the client goes away. With d <= 0
// it only checks the context, so a fast stream still notices a departed client between events.
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
