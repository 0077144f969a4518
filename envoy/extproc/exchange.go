package extproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"mime"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// maxJSONDepth bounds request body nesting; deeper bodies are rejected with 400 rather than
// parsed.
const maxJSONDepth = 64

// maxModelBytes bounds the model name copied into a request header, so a huge "model" string
// becomes a clear 400 instead of an Envoy header-size failure.
const maxModelBytes = 512

// Metadata keys published next to the configured costs. A cost with the same name wins.
const (
	metadataModel        = "model"
	metadataInputTokens  = "input_tokens"
	metadataOutputTokens = "output_tokens"
	metadataTotalTokens  = "total_tokens"
	metadataUsageBasis   = "usage_basis"
	metadataBackend      = "backend"
	metadataCached       = "cached_input_tokens"
	metadataPrice        = "price"
	metadataDecision     = "quota_decision"
	metadataRefusedBy    = "quota_refused_by"
)

// exchange is the state of one HTTP request and its response: one ext_proc gRPC stream.
// It is used by a single goroutine.
type exchange struct {
	ctx     context.Context
	cfg     *Config // the config the request started with, kept to the end
	logger  *slog.Logger
	metrics *Metrics
	rls     *rlsclient.Client // nil: quotas are neither checked nor charged (a test of routing only)
	start   time.Time
	clock   func() time.Time // places the request in calendar periods
	// counters and grants: the grants in force when the request came, added to the limits
	// of the counters they are on.
	counters CounterStore
	grants   map[string]uint64
	alerts   *alerter  // nil: no alerts (a test of routing only)
	activity *activity // nil: nothing recorded

	// Request side.
	started          bool          // request headers seen
	format           llmapi.Format // from :path; nil when the path is not metered
	user             string        // the identity header's value
	team             string        // the caller's team; "" for none
	model            string        // the model the request is routed and accounted by
	hasContentLength bool          // the client sent content-length (so a new body needs one)
	requestBodySeen  bool          // the (single, buffered) request body message arrived
	llmCall          bool          // the body was parsed: the response's usage is accounted for
	promptBytes      int           // bytes of text in the request body, for estimates
	maxOutput        int64         // the most output the request lets the backend produce
	streamRequested  bool          // the body asked for a streamed answer
	// streamViaEnvoy says the request was marked with envoy.HeaderStreamUsage: Envoy reads
	// its stream's usage and sends it with the response trailers, not the chunks.
	streamViaEnvoy bool

	// quotas are the model's quotas that count this request, fixed at admission; reservations
	// are what admission counted on them, in their order, until the request's real cost
	// replaces them.
	quotas       []Quota
	reservations []rlsclient.Reservation
	// settleFirst says a reservation took a quota past its limit: until the request is
	// settled, every gateway on the same Redis sees the quota spent, so the answer ends only
	// once it is settled (see settleQuota).
	settleFirst bool
	// admitted is when the request was admitted on the exchange's clock: the calendar period
	// it is counted in, to the end.
	admitted time.Time
	// decision is the quota check's result (tollgate_quota_checks_total's), refusedBy the quota
	// that refused the request: both for the usage log.
	decision, refusedBy string
	// inFlight counts the user's requests in flight; holding says this one is counted.
	inFlight *inFlight
	holding  bool

	// Response side.
	responseSeen   bool   // the response's status and headers were read
	responseStatus string // the status sent as an attribute, until the head is read
	encoding       llmapi.ContentEncoding
	bodyMode       bodyHandler // how the response body is read

	// JSON responses, collected until their end.
	jsonBody     []byte
	jsonTooLarge bool // the body outgrew MaxResponseBytes and was not kept
	jsonWhole    bool // Envoy buffers the body: its one message is all of it

	// Streamed responses.
	running     runningCharge // the metadata each chunk carries
	stream      *llmapi.Stream
	decoder     llmapi.StreamDecoder // feeds stream, decoding the body's content-encoding
	streamErr   error
	firstOutput time.Time

	// finished is set once the outcome is recorded; later messages just get empty answers.
	finished bool
}

// bodyHandler says what the exchange does with response body messages.
type bodyHandler int

const (
	bodyIgnored  bodyHandler = iota // the body is not read
	bodyJSON                        // a JSON body, collected until it ends
	bodyStreamed                    // an SSE stream, parsed chunk by chunk
	bodyUnsent                      // the answer to a stream Envoy reads: its usage comes with the trailers
)

func newExchange(ctx context.Context, cfg *Config, logger *slog.Logger, metrics *Metrics, rls *rlsclient.Client, inFlight *inFlight) *exchange {
	return &exchange{ctx: ctx, cfg: cfg, logger: logger, metrics: metrics, rls: rls, inFlight: inFlight, start: time.Now(), clock: time.Now}
}

// handle answers one message from Envoy.
func (ex *exchange) handle(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if ex.finished {
		return emptyResponseFor(req)
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return ex.onRequestHeaders(r.RequestHeaders, req.GetMetadataContext())
	case *extprocv3.ProcessingRequest_RequestBody:
		return ex.onRequestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return ex.onResponseHeaders(r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return ex.onResponseBody(r.ResponseBody, req.GetAttributes())
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return ex.onResponseTrailers(req.GetMetadataContext())
	default:
		return emptyResponseFor(req)
	}
}

func (ex *exchange) onRequestHeaders(msg *extprocv3.HttpHeaders, meta *corev3.Metadata) *extprocv3.ProcessingResponse {
	ex.started = true
	ex.start = time.Now()
	headers := msg.GetHeaders()
	ex.format = llmapi.ForPath(firstHeader(headers, ":path"))

	// Without a user no quota could hold the request, so it must stop here.
	user, team, rejected := ex.identify(headers, meta)
	if rejected != nil {
		return ex.reject(*rejected)
	}
	ex.user, ex.team = user, team
	if path := firstHeader(headers, ":path"); path == QuotaPath || strings.HasPrefix(path, QuotaPath+"?") {
		return ex.answerQuota(firstHeader(headers, ":method"))
	}
	if ex.format == nil {
		// Only requests whose usage can be read reach a backend: any other path would be an
		// unmetered way to the same model server.
		return ex.reject(unknownPath(firstHeader(headers, ":method"), firstHeader(headers, ":path")))
	}
	if msg.GetEndOfStream() {
		// The model, and so the route and the quota, come from the body only.
		return ex.reject(missingModel())
	}
	ex.hasContentLength = firstHeader(headers, "content-length") != ""
	mutation := ex.identityMutation(user, team)
	// Upstreams then send plain bodies, which keeps usage parsing off the decompression path.
	mutation.SetHeaders = append(mutation.SetHeaders, overwrite("accept-encoding", "identity"))
	// The client's own model header never routes: the body's model replaces it before the
	// route is chosen again.
	mutation.RemoveHeaders = append(mutation.RemoveHeaders, ex.cfg.ModelHeader, envoy.HeaderStreamUsage)
	return requestHeadersResponse(&extprocv3.CommonResponse{HeaderMutation: mutation})
}

func (ex *exchange) onRequestBody(msg *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if ex.requestBodySeen || !ex.started {
		// In BUFFERED mode Envoy sends the whole body once; anything else is not ours to judge.
		return requestBodyResponse(nil)
	}
	ex.requestBodySeen = true
	body := msg.GetBody()
	if limit := ex.cfg.MaxRequestBytes; limit > 0 && int64(len(body)) > limit {
		return ex.reject(rejection{
			status:  413,
			outcome: outcomeRejected413,
			err: apiError{
				Message: fmt.Sprintf("request body is %d bytes, the limit is %d", len(body), ex.cfg.MaxRequestBytes),
				Type:    errorTypeInvalidRequest,
				Code:    optional("request_too_large"),
			},
			details: "tollgate_request_too_large",
		})
	}

	parsed, err := ex.format.ParseRequest(body, maxJSONDepth)
	if err != nil {
		apiErr := apiError{Message: "invalid request body", Type: errorTypeInvalidRequest}
		var reqErr *llmapi.RequestError
		if errors.As(err, &reqErr) {
			apiErr.Message = reqErr.Message
			apiErr.Param = optional(reqErr.Param)
		}
		return ex.reject(rejection{status: 400, outcome: outcomeRejected400, err: apiErr, details: "tollgate_invalid_body"})
	}

	if !parsed.HasModel || parsed.Model == "" {
		return ex.reject(missingModel())
	}
	if !validHeaderValue(parsed.Model) {
		return ex.reject(rejection{
			status:  400,
			outcome: outcomeRejected400,
			err: apiError{
				Message: fmt.Sprintf("invalid model name: it must be at most %d printable characters", maxModelBytes),
				Type:    errorTypeInvalidRequest,
				Param:   optional("model"),
			},
			details: "tollgate_invalid_model",
		})
	}
	ex.model = parsed.Model
	ex.promptBytes = parsed.TextBytes
	if ex.activity != nil {
		ex.activity.sawCaller(Caller{User: ex.user, Team: ex.team})
	}
	ex.quotas = ex.applicableQuotas()
	ex.maxOutput = parsed.MaxOutputTokens
	ceiling := ex.outputCeiling(ex.quotas)
	if ceiling > 0 && ex.maxOutput > ceiling {
		return ex.reject(*badRequest("max_tokens_exceeded",
			fmt.Sprintf("the request asks for up to %d output tokens; at most %d are allowed per request", ex.maxOutput, ceiling)))
	}
	if ex.maxOutput <= 0 {
		ex.maxOutput = ex.cfg.DefaultMaxOutputTokens
		if ceiling > 0 {
			ex.maxOutput = ceiling
		}
	}
	rejected, limits := ex.admit(ex.worstCase())
	if rejected != nil {
		return ex.reject(*rejected)
	}
	ex.llmCall = true
	ex.streamRequested = parsed.Stream

	// The body decides the route: a client's own model header is overwritten, never trusted.
	common := &extprocv3.CommonResponse{
		HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
			overwrite(ex.cfg.ModelHeader, parsed.Model),
		}},
		ClearRouteCache: true,
	}
	ex.setUpstreamKey(common.HeaderMutation)
	if parsed.Stream && ex.cfg.EnvoyReadsStreams && ex.format.EnvoyReadsStreamUsage() {
		// The route that matches this header turns Envoy's usage filter on.
		ex.streamViaEnvoy = true
		common.HeaderMutation.SetHeaders = append(common.HeaderMutation.SetHeaders, overwrite(envoy.HeaderStreamUsage, "1"))
	}
	// The model for the access log, and the numbers the model's route turns into x-ratelimit-*
	// response headers.
	fields := ex.requestFields()
	maps.Copy(fields, limits)
	if parsed.Stream && !parsed.IncludeUsage && ex.format.NeedsIncludeUsage() {
		// Without stream_options.include_usage such a stream reports no usage and could not
		// be charged.
		forced, err := llmapi.ForceIncludeUsage(body)
		if err != nil {
			ex.logger.Warn("cannot force include_usage; the stream may go uncharged",
				"model", ex.model, "error", err)
		} else {
			common.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: forced}}
			if ex.hasContentLength {
				// With request headers sent and the body BUFFERED, Envoy keeps the client's
				// content-length as it is, so the new length has to be set here. A request
				// without one (chunked) stays chunked.
				common.HeaderMutation.SetHeaders = append(common.HeaderMutation.SetHeaders,
					overwrite("content-length", strconv.Itoa(len(forced))))
			}
		}
	}
	resp := requestBodyResponse(common)
	resp.DynamicMetadata = namespaced(fields)
	return resp
}

// responseHead is what the exchange reads of a response before its body.
type responseHead struct {
	status      string // :status
	contentType string
	encoding    string // content-encoding
}

// onResponseHeaders handles a response headers message, which Envoy sends when it reads
// streams' usage itself (envoy.ExtProcEnvoyUsageMode). A successful answer to a stream Envoy
// reads is left to it: the usage comes with the trailers (a backend that answers it with JSON
// included: its body must not be read here as well, and without trailers the request is
// charged its reservation). Any other answer (JSON, the legacy completions API, a compressed
// stream) tollgate reads itself, as it would without Envoy's help, and its body is switched on
// for this request.
func (ex *exchange) onResponseHeaders(msg *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	headers := msg.GetHeaders()
	head := responseHead{
		status:      firstHeader(headers, ":status"),
		contentType: firstHeader(headers, "content-type"),
		encoding:    firstHeader(headers, "content-encoding"),
	}
	resp := responseHeadersResponse()
	resp.DynamicMetadata = ex.onResponseHead(head, msg.GetEndOfStream(), ex.streamViaEnvoy)
	switch ex.bodyMode {
	case bodyUnsent:
		// The trailers carry the usage. Until they come, the usage log holds the
		// reservation: a stream that breaks off publishes no usage and is charged that.
		resp.DynamicMetadata = ex.running.update(ex)
	case bodyStreamed:
		resp.ModeOverride = responseBodyModeOverride(extprocfilterv3.ProcessingMode_STREAMED)
	case bodyJSON:
		resp.ModeOverride = responseBodyModeOverride(extprocfilterv3.ProcessingMode_BUFFERED)
		ex.jsonWhole = true
	default:
		// Settled already: neither the body nor trailers are needed.
		resp.ModeOverride = responseBodyModeOverride(extprocfilterv3.ProcessingMode_NONE)
	}
	return resp
}

// onResponseTrailers settles a stream whose usage Envoy read: the trailers Envoy ended it with
// carry the usage as typed metadata. A stream whose usage Envoy could not read in full is
// charged as one that reported none: its prompt and its whole output allowance. Trailers also
// end a body tollgate reads itself (its last chunk then has no end_of_stream).
func (ex *exchange) onResponseTrailers(meta *corev3.Metadata) *extprocv3.ProcessingResponse {
	resp := responseTrailersResponse()
	switch ex.bodyMode {
	case bodyUnsent:
		usage, err := usageFromMetadata(meta)
		if err != nil {
			ex.logger.Warn("cannot read the usage Envoy published; usage unknown", "model", ex.model, "error", err)
		}
		resp.DynamicMetadata = ex.settle(usage, served{}, true)
	case bodyStreamed:
		resp.DynamicMetadata = ex.settle(ex.streamUsage(), ex.streamServed(), true)
	case bodyJSON:
		usage, out := ex.bufferedUsage()
		resp.DynamicMetadata = ex.settle(usage, out, true)
	}
	return resp
}

// onResponseHead reads a response's status and headers and decides how its body is read:
// left unsent when Envoy reads its usage (envoyReads, for an answer in plain JSON or SSE). A
// response that ends here (an error, no body, a body tollgate cannot read) is settled now, and
// the metadata to publish for it is returned.
func (ex *exchange) onResponseHead(head responseHead, endOfStream, envoyReads bool) *structpb.Struct {
	ex.responseSeen = true
	status, err := strconv.Atoi(head.status)
	if err != nil || status < 200 || status > 299 {
		// Errors cost nothing: the body is not read and no cost is published. This includes
		// Envoy's local replies (the 404 route, a 503 when the backend cannot be reached) and
		// its own 413 when a body overflows its buffer before reaching us.
		if ex.llmCall {
			errorType := otherLabel
			if err == nil {
				errorType = strconv.Itoa(status)
			}
			ex.observeDuration(errorType)
			ex.releaseQuota()
		}
		ex.finish(outcomeErrorStatus)
		return nil
	}
	if !ex.llmCall {
		ex.finish(outcomePassthrough)
		return nil
	}

	encoding, known := llmapi.ParseContentEncoding(head.encoding)
	if !known {
		ex.logger.Warn("response has an unsupported content-encoding; usage unknown",
			"model", ex.model, "content_encoding", head.encoding)
		return ex.settleUnread()
	}
	ex.encoding = encoding
	if endOfStream {
		return ex.settleUnread()
	}

	mediaType, _, _ := mime.ParseMediaType(head.contentType)
	isJSON := mediaType == "application/json" || strings.HasSuffix(mediaType, "+json")
	switch {
	case envoyReads && encoding == llmapi.Identity && (mediaType == "text/event-stream" || isJSON):
		ex.bodyMode = bodyUnsent
	case mediaType == "text/event-stream":
		ex.bodyMode = bodyStreamed
		ex.stream = llmapi.NewStream(ex.format, ex.cfg.MaxEventBytes)
		ex.decoder = llmapi.NewStreamDecoder(ex.encoding, ex.stream)
	case isJSON:
		ex.bodyMode = bodyJSON
	default:
		ex.logger.Warn("successful response is neither JSON nor an event stream; usage unknown",
			"model", ex.model, "content_type", mediaType)
		return ex.settleUnread()
	}
	return nil
}

// onResponseBody reads one chunk of the response body. Envoy sends the body STREAMED without a
// headers message of its own (translate's configuration): the status then arrives as an
// attribute of the first chunk, and what the body is, is read off its first bytes.
func (ex *exchange) onResponseBody(msg *extprocv3.HttpBody, attributes map[string]*structpb.Struct) *extprocv3.ProcessingResponse {
	resp := responseBodyResponse()
	if !ex.responseSeen {
		if ex.responseStatus == "" {
			ex.responseStatus = responseStatusFromAttributes(attributes)
		}
		if len(msg.GetBody()) == 0 && !msg.GetEndOfStream() {
			return resp // nothing to sniff yet
		}
		head := sniffResponse(ex.responseStatus, msg.GetBody(), ex.streamRequested)
		// Envoy reads no usage for a response without a headers message.
		resp.DynamicMetadata = ex.onResponseHead(head, len(msg.GetBody()) == 0, false)
		if ex.finished {
			return resp
		}
	}
	switch ex.bodyMode {
	case bodyStreamed:
		ex.feed(msg.GetBody())
		if msg.GetEndOfStream() {
			resp.DynamicMetadata = ex.settle(ex.streamUsage(), ex.streamServed(), true)
		} else {
			// What the stream would be charged if it broke off now: a client that leaves
			// mid-stream is logged with what its request is charged, as Envoy writes its access
			// log from the last metadata published.
			resp.DynamicMetadata = ex.running.update(ex)
		}
	case bodyJSON:
		ex.collect(msg.GetBody())
		// A buffered body comes in one message (end_of_stream is false only when trailers
		// follow), so it is whole either way; a streamed one ends with end_of_stream.
		if msg.GetEndOfStream() || ex.jsonWhole {
			usage, out := ex.bufferedUsage()
			resp.DynamicMetadata = ex.settle(usage, out, true)
		}
	}
	return resp
}

// sniffResponse tells from the first bytes of a successful response's body what the body is,
// as its headers would have: a JSON document starts with '{' or '[', anything else from an LLM
// API is an event stream, and a compressed body is known by its first bytes (what it wraps is
// then what the request asked for). Upstreams are asked for identity encoding, so compression
// is rare; encodings llmapi does not know are read as a stream that reports nothing, and
// charged the upper bound.
func sniffResponse(status string, first []byte, streamRequested bool) responseHead {
	head := responseHead{status: status}
	trimmed := bytes.TrimLeft(first, " \t\r\n")
	encoding, compressed := llmapi.SniffContentEncoding(first)
	switch {
	case len(trimmed) == 0:
	case compressed:
		head.encoding = encoding.String()
		head.contentType = "application/json"
		if streamRequested {
			head.contentType = "text/event-stream"
		}
	case trimmed[0] == '{' || trimmed[0] == '[':
		head.contentType = "application/json"
	default:
		head.contentType = "text/event-stream"
	}
	return head
}

// collect keeps a chunk of a JSON response, up to MaxResponseBytes in all.
func (ex *exchange) collect(chunk []byte) {
	if ex.jsonTooLarge {
		return
	}
	if int64(len(ex.jsonBody)+len(chunk)) > ex.cfg.MaxResponseBytes {
		ex.jsonTooLarge = true
		ex.jsonBody = nil
		return
	}
	ex.jsonBody = append(ex.jsonBody, chunk...)
}

// settleUnread settles a successful response whose body is not read (no body, or one tollgate
// cannot parse): the backend reported nothing tollgate could see, so the prompt is charged as
// estimated.
func (ex *exchange) settleUnread() *structpb.Struct {
	return ex.settle(llmapi.Usage{}, served{}, true)
}

// feed passes one streamed chunk to the SSE parser, decoding it when needed. After an error
// the rest of the stream is only passed through.
func (ex *exchange) feed(chunk []byte) {
	if ex.streamErr != nil || len(chunk) == 0 {
		return
	}
	if err := ex.decoder.Write(chunk); err != nil {
		ex.streamErr = err
		ex.logger.Warn("cannot parse response stream; usage seen so far is kept",
			"model", ex.model, "error", err)
		return
	}
	if ex.firstOutput.IsZero() && ex.stream.OutputEvents() > 0 {
		ex.firstOutput = time.Now()
		ex.metrics.timeToFirstToken.WithLabelValues(ex.labels()...).Observe(ex.firstOutput.Sub(ex.start).Seconds())
	}
}

func (ex *exchange) streamUsage() llmapi.Usage {
	if ex.decoder != nil && ex.streamErr == nil {
		// Closing flushes what the decoder still holds into the parser.
		if err := ex.decoder.Close(); err != nil {
			ex.streamErr = err
			ex.logger.Warn("compressed response stream ended badly", "model", ex.model, "error", err)
		}
		ex.decoder = nil
	}
	return ex.stream.Usage()
}

// bufferedUsage reads usage from a complete JSON body, and what it served in case the usage is
// missing.
func (ex *exchange) bufferedUsage() (llmapi.Usage, served) {
	if ex.jsonTooLarge {
		ex.logger.Warn("response too large to read usage from; usage unknown",
			"model", ex.model, "limit", ex.cfg.MaxResponseBytes)
		return llmapi.Usage{}, served{}
	}
	body, err := ex.encoding.Decode(ex.jsonBody, ex.cfg.MaxResponseBytes)
	if err != nil {
		ex.logger.Warn("cannot decompress response; usage unknown", "model", ex.model, "error", err)
		return llmapi.Usage{}, served{}
	}
	if int64(len(body)) > ex.cfg.MaxResponseBytes {
		ex.logger.Warn("response too large to read usage from; usage unknown",
			"model", ex.model, "bytes", len(body), "limit", ex.cfg.MaxResponseBytes)
		return llmapi.Usage{}, served{}
	}
	usage, err := ex.format.UsageFromJSON(body)
	if err != nil {
		ex.logger.Warn("cannot read usage from response", "model", ex.model, "error", err)
		return llmapi.Usage{}, served{}
	}
	if usage.Known {
		return usage, served{}
	}
	return usage, served{outputTextBytes: ex.format.ResponseTextBytes(body)}
}

// streamReported is the usage a stream reported so far; none when tollgate does not read it.
func (ex *exchange) streamReported() llmapi.Usage {
	if ex.stream == nil {
		return llmapi.Usage{}
	}
	return ex.stream.Usage()
}

func (ex *exchange) streamServed() served {
	if ex.stream == nil {
		return served{}
	}
	return served{outputEvents: int64(ex.stream.OutputEvents()), outputTextBytes: ex.stream.OutputTextBytes()}
}

// settle ends a successful LLM response, completed or broken off: it charges the billable
// usage to the model's quotas, records the GenAI metrics (and, when it completed, the
// outcome), and returns the dynamic metadata to publish (the model, the token counts, the
// costs and the basis) for the access log.
func (ex *exchange) settle(reported llmapi.Usage, out served, complete bool) *structpb.Struct {
	usage, basis := ex.billable(reported, out, complete)
	if basis == basisEstimate {
		attrs := []any{"model", ex.model, "api", ex.format.Name(), "user", ex.user, "completed", complete,
			"usage_reported", reported.Known, "output_events", out.outputEvents,
			"input_tokens_charged", usage.InputTokens, "output_tokens_charged", usage.OutputTokens}
		if complete {
			ex.logger.Warn("successful response without token usage; charging an estimate", attrs...)
		} else {
			ex.logger.Info("response broke off before its final usage; charging what was served", attrs...)
		}
		ex.metrics.usageMissing.WithLabelValues(ex.cfg.modelLabel(ex.model)).Inc()
	}
	fields := ex.usageFields(usage, basis)
	costs := make(map[string]int64, len(ex.cfg.Costs))
	for _, cost := range ex.cfg.Costs {
		value, err := ex.costValue(cost, usage)
		if err != nil {
			// Never charge a number we do not trust; the request goes uncharged for this cost.
			ex.logger.Warn("cost not computed; not charged", "model", ex.model, "cost", cost.Name, "error", err)
			ex.metrics.costErrors.WithLabelValues(cost.Name).Inc()
			continue
		}
		costs[cost.Name] = value
		fields[cost.Name] = structpb.NewNumberValue(float64(value))
	}
	ex.settleQuota(costs, basis)

	labels := ex.labels()
	end := time.Now()
	user := "" // an empty label value is no label: without the opt-in, users add no series
	if ex.cfg.UserLabel {
		user = ex.user
	}
	if units, priced := ex.price(usage); priced {
		ex.metrics.spend.WithLabelValues(labels[1], ex.cfg.Money.Currency, user).Add(ex.cfg.Money.amount(units))
	}
	if basis == basisUsage {
		// Token usage metrics show what backends reported; estimates are counted with the
		// charges instead.
		for _, tokens := range []struct {
			typ   string
			count int64
		}{{"input", usage.InputTokens}, {"output", usage.OutputTokens}, {"total", usage.TotalTokens}} {
			ex.metrics.tokenUsage.WithLabelValues(labels[0], labels[1], tokens.typ, user).Observe(float64(tokens.count))
		}
		if !ex.firstOutput.IsZero() && usage.OutputTokens > 1 {
			perToken := end.Sub(ex.firstOutput).Seconds() / float64(usage.OutputTokens-1)
			ex.metrics.timePerOutputToken.WithLabelValues(labels...).Observe(perToken)
		}
	}
	errorType := ""
	if !complete {
		errorType = "cancelled"
	}
	ex.metrics.requestDuration.WithLabelValues(append(labels, errorType)...).Observe(end.Sub(ex.start).Seconds())
	if complete {
		// A broken-off exchange is recorded as cancelled by close instead.
		outcome := outcomeOK
		if basis == basisEstimate {
			outcome = outcomeUsageMissing
		}
		ex.finish(outcome)
	}
	return namespaced(fields)
}

// usageFields are the metadata of what a response is charged, for the usage log: its usage,
// the basis and, for a priced model, its price in the currency.
func (ex *exchange) usageFields(usage llmapi.Usage, basis string) map[string]*structpb.Value {
	fields := map[string]*structpb.Value{
		metadataModel:        structpb.NewStringValue(ex.model),
		metadataUsageBasis:   structpb.NewStringValue(basis),
		metadataInputTokens:  structpb.NewNumberValue(float64(usage.InputTokens)),
		metadataCached:       structpb.NewNumberValue(float64(usage.CachedInputTokens)),
		metadataOutputTokens: structpb.NewNumberValue(float64(usage.OutputTokens)),
		metadataTotalTokens:  structpb.NewNumberValue(float64(usage.TotalTokens)),
	}
	if units, priced := ex.price(usage); priced {
		fields[metadataPrice] = structpb.NewNumberValue(ex.cfg.Money.amount(units))
	}
	return fields
}

// runningCharge is the metadata a stream's chunks carry: what the stream would be charged if
// it broke off there. Only a chunk after which that changed carries it (Envoy keeps the last
// one published); as the served output counts in steps of brokenOffStep tokens, that is a
// few chunks per stream. It is built once and its numbers updated in place: an exchange's
// answers are sent (and so serialized) one at a time, each before the next message is read,
// so one value serves every chunk without a map and a dozen values per chunk.
type runningCharge struct {
	metadata                           *structpb.Struct
	input, cached, output, total, cost *structpb.Value_NumberValue
	basis                              *structpb.Value_StringValue
}

// update sets the running charge of ex's stream and returns its metadata, or nil when it is
// what was published last.
func (r *runningCharge) update(ex *exchange) *structpb.Struct {
	usage, basis := ex.billable(ex.streamReported(), ex.streamServed(), false)
	if r.metadata != nil && r.basis.StringValue == basis &&
		r.input.NumberValue == float64(usage.InputTokens) && r.cached.NumberValue == float64(usage.CachedInputTokens) &&
		r.output.NumberValue == float64(usage.OutputTokens) && r.total.NumberValue == float64(usage.TotalTokens) {
		return nil
	}
	if r.metadata == nil {
		r.input, r.cached, r.output, r.total = &structpb.Value_NumberValue{}, &structpb.Value_NumberValue{}, &structpb.Value_NumberValue{}, &structpb.Value_NumberValue{}
		r.basis = &structpb.Value_StringValue{}
		// The model was published with the request; Envoy merges each answer's metadata in.
		fields := map[string]*structpb.Value{
			metadataUsageBasis:   {Kind: r.basis},
			metadataInputTokens:  {Kind: r.input},
			metadataCached:       {Kind: r.cached},
			metadataOutputTokens: {Kind: r.output},
			metadataTotalTokens:  {Kind: r.total},
		}
		if _, priced := ex.price(usage); priced {
			r.cost = &structpb.Value_NumberValue{}
			fields[metadataPrice] = &structpb.Value{Kind: r.cost}
		}
		r.metadata = namespaced(fields)
	}
	r.input.NumberValue, r.cached.NumberValue = float64(usage.InputTokens), float64(usage.CachedInputTokens)
	r.output.NumberValue, r.total.NumberValue = float64(usage.OutputTokens), float64(usage.TotalTokens)
	r.basis.StringValue = basis
	if r.cost != nil {
		units, _ := ex.price(usage)
		r.cost.NumberValue = ex.cfg.Money.amount(units)
	}
	return r.metadata
}

// costValue computes one cost.
func (ex *exchange) costValue(cost Cost, usage llmapi.Usage) (int64, error) {
	switch cost.Kind {
	case CostInput:
		return usage.InputTokens, nil
	case CostOutput:
		return usage.OutputTokens, nil
	case CostTotal:
		return usage.TotalTokens, nil
	case CostRequests:
		return 1, nil
	case CostPrice:
		units, ok := ex.price(usage)
		if !ok {
			return 0, fmt.Errorf("model %q has no prices", ex.model)
		}
		return int64(min(units, math.MaxInt64)), nil
	case CostCEL:
		if cost.Eval == nil {
			return 0, errors.New("no CEL program")
		}
		// Evaluated after the client may have gone, so the stream's cancellation must not
		// cancel the bill.
		return cost.Eval(context.WithoutCancel(ex.ctx), CostVars{
			InputTokens:       usage.InputTokens,
			OutputTokens:      usage.OutputTokens,
			TotalTokens:       usage.TotalTokens,
			CachedInputTokens: usage.CachedInputTokens,
			ReasoningTokens:   usage.ReasoningTokens,
			Model:             ex.model,
			Backend:           ex.cfg.Models[ex.model],
		})
	default:
		return 0, fmt.Errorf("unknown cost kind %d", int(cost.Kind))
	}
}

// reject answers the request with an error and records its outcome. Once the model is known
// it is published for the access log: Envoy logs the answer on the route it matched before
// the body was read.
func (ex *exchange) reject(r rejection) *extprocv3.ProcessingResponse {
	ex.finish(r.outcome)
	if ex.activity != nil && ex.user != "" && r.status >= 400 {
		ex.activity.refused(Refusal{Time: time.Now().UTC(), User: ex.user, Team: ex.team, Model: ex.model,
			Status: r.status, Quota: ex.refusedBy, Message: r.err.Message})
	}
	resp := immediateResponse(r)
	if ex.model != "" {
		resp.DynamicMetadata = namespaced(ex.requestFields())
	}
	return resp
}

// requestFields are the metadata known once the request is judged, for the usage log: its
// model and backend, the quota check's result and, when it was refused, the quota that did.
func (ex *exchange) requestFields() map[string]*structpb.Value {
	fields := map[string]*structpb.Value{metadataModel: structpb.NewStringValue(ex.model)}
	if backend, ok := ex.cfg.Models[ex.model]; ok {
		fields[metadataBackend] = structpb.NewStringValue(backend)
	}
	if ex.decision != "" {
		fields[metadataDecision] = structpb.NewStringValue(ex.decision)
	}
	if ex.refusedBy != "" {
		fields[metadataRefusedBy] = structpb.NewStringValue(ex.refusedBy)
	}
	return fields
}

// observeDuration records the request duration (errorType "" for success) and returns the
// time it used as the end.
func (ex *exchange) observeDuration(errorType string) time.Time {
	end := time.Now()
	ex.metrics.requestDuration.WithLabelValues(append(ex.labels(), errorType)...).Observe(end.Sub(ex.start).Seconds())
	return end
}

// finish records the request's outcome once.
func (ex *exchange) finish(outcome string) {
	if ex.finished {
		return
	}
	ex.finished = true
	ex.metrics.requests.WithLabelValues(outcome).Inc()
}

// close releases the exchange when its stream ends. A stream that ends before the response
// did (the client left, Envoy reset the stream, a timeout) is recorded as cancelled; if it was
// an LLM call that reached its backend, what it served is charged.
func (ex *exchange) close() {
	defer ex.releaseConcurrency()
	if ex.decoder != nil && !ex.finished {
		// Whatever the decoder holds was never delivered either; it is dropped.
		if err := ex.decoder.Close(); err != nil {
			ex.logger.Debug("closing the decoder of an unfinished response", "error", err)
		}
		ex.decoder = nil
	}
	if ex.finished || !ex.started {
		return
	}
	if ex.llmCall {
		// No metadata can be published any more: the charge is all that is left to do.
		ex.settle(ex.streamReported(), ex.streamServed(), false)
	}
	ex.finish(outcomeCancelled)
}

// labels are the operation and model labels of the GenAI metrics.
func (ex *exchange) labels() []string {
	operation := otherLabel
	if ex.format != nil {
		operation = ex.format.Operation()
	}
	return []string{operation, ex.cfg.modelLabel(ex.model)}
}

// namespaced wraps fields in tollgate's dynamic metadata namespace.
func namespaced(fields map[string]*structpb.Value) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		envoy.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
	}}
}

// validHeaderValue reports whether s can be a header value as it is: not empty, not too long,
// no control characters, no surrounding spaces (Envoy would trim them and the route would
// no longer match the metered model).
func validHeaderValue(s string) bool {
	if s == "" || len(s) > maxModelBytes || strings.TrimSpace(s) != s {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
