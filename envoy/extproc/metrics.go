package extproc

import (
	"errors"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// otherLabel replaces any label value outside a known, bounded set, as the OpenTelemetry
// semantic conventions do.
const otherLabel = "_OTHER"

// Label names, in Prometheus form of the OpenTelemetry GenAI attribute names.
const (
	labelOperation = "gen_ai_operation_name"
	labelModel     = "gen_ai_request_model"
	labelTokenType = "gen_ai_token_type"
	labelErrorType = "error_type"
	// labelUser is set only when the policy opts in: every user becomes a series.
	labelUser     = "gen_ai_user_id"
	labelCurrency = "currency"
)

// Outcomes of one request, the values of tollgate_extproc_requests_total{outcome}.
const (
	outcomeOK           = "ok"            // 2xx response with known usage
	outcomeUsageMissing = "usage_missing" // 2xx response without usage: charged an estimate
	outcomeErrorStatus  = "error_status"  // non-2xx response (upstream or local reply): not charged
	outcomePassthrough  = "passthrough"   // no request body, so no LLM call to account for
	outcomeCancelled    = "cancelled"     // the stream ended before the response did: charged what was served
	outcomeRejected400  = "rejected_400"
	outcomeRejected404  = "rejected_404"
	outcomeRejected401  = "rejected_401"
	outcomeRejected405  = "rejected_405"
	outcomeRejected413  = "rejected_413"
	outcomeRejected429  = "rejected_429" // over a token quota
	// outcomeQuotaUnavailable: the quota could not be checked and failure mode closed refused.
	outcomeQuotaUnavailable = "rejected_503"
	// outcomeQuotaRead: a caller read their own quotas (GET /v1/quota).
	outcomeQuotaRead = "quota_read"
)

// Metrics are the ext_proc server's Prometheus collectors.
type Metrics struct {
	tokenUsage         *prometheus.HistogramVec
	requestDuration    *prometheus.HistogramVec
	timeToFirstToken   *prometheus.HistogramVec
	timePerOutputToken *prometheus.HistogramVec
	requests           *prometheus.CounterVec
	costErrors         *prometheus.CounterVec
	usageMissing       *prometheus.CounterVec
	charges            *prometheus.CounterVec
	quotaChecks        *prometheus.CounterVec
	spend              *prometheus.CounterVec
	alerts             *prometheus.CounterVec
	refusals           *prometheus.CounterVec
	alertsDropped      prometheus.Counter
	webhookFailures    prometheus.Counter
	activeStreams      prometheus.Gauge
	chargeBacklog      prometheus.Gauge
	messages           *prometheus.CounterVec
	messageDuration    *prometheus.HistogramVec
	quotaCheckDuration prometheus.Histogram
	// messageKinds and messageTimes are messages' and messageDuration's children, one per
	// kind, resolved once: counting or timing a message is then a few atomic adds.
	messageKinds [messageKindCount]prometheus.Counter
	messageTimes [messageKindCount]prometheus.Observer
}

// latencyBuckets, 10 µs to 1 s, fit the time tollgate itself adds to a request: an answer
// from memory takes microseconds, a quota check a Redis round trip.
func latencyBuckets() []float64 {
	return []float64{0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
}

// The kinds of message Envoy sends, the values of tollgate_extproc_messages_total{message}.
const (
	messageRequestHeaders = iota
	messageRequestBody
	messageRequestTrailers
	messageResponseHeaders
	messageResponseBody
	messageResponseTrailers
	messageKindCount
)

// messageKindNames are the label values, by kind.
func messageKindNames() [messageKindCount]string {
	return [messageKindCount]string{
		"request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_trailers",
	}
}

// NewMetrics creates the collectors and registers them on reg (nil: not registered). When a
// collector of the same name is already registered, the registered one is used, so several
// servers can share one registry.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tokenUsage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gen_ai_client_token_usage",
			Help: "Tokens used per LLM response, by token type (OpenTelemetry gen_ai.client.token.usage).",
			// 1, 4, 16, ... 67108864: the buckets the GenAI semantic conventions advise.
			Buckets: prometheus.ExponentialBuckets(1, 4, 14),
		}, []string{labelOperation, labelModel, labelTokenType, labelUser}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gen_ai_server_request_duration_seconds",
			Help: "Time from request headers to the end of the response (OpenTelemetry gen_ai.server.request.duration).",
			// 0.01 ... 81.92 s.
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{labelOperation, labelModel, labelErrorType}),
		timeToFirstToken: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gen_ai_server_time_to_first_token_seconds",
			Help:    "Time from request headers to the first streamed output event (OpenTelemetry gen_ai.server.time_to_first_token).",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10},
		}, []string{labelOperation, labelModel}),
		timePerOutputToken: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gen_ai_server_time_per_output_token_seconds",
			Help:    "Time per output token after the first, for streamed responses (OpenTelemetry gen_ai.server.time_per_output_token).",
			Buckets: []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5},
		}, []string{labelOperation, labelModel}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_extproc_requests_total",
			Help: "Requests seen by the ext_proc server, by outcome.",
		}, []string{"outcome"}),
		costErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cost_errors_total",
			Help: "Costs that could not be computed (CEL error or a result that is not a non-negative integer) and were not charged.",
		}, []string{"cost"}),
		usageMissing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_usage_missing_total",
			Help: "Successful responses whose token usage was never read (none reported, unreadable, or the answer broke off); they are charged an estimate.",
		}, []string{"model"}),
		charges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_quota_charges_total",
			Help: "Charges sent to the ratelimit service when a request ended, by basis (usage: reported by the backend; estimate: an upper bound of what was served) and result (sent; unconfirmed: taken but not confirmed in time, counted once the service's Redis answers; spooled: kept for the next run; failed: given up, not counted).",
		}, []string{"basis", "result"}),
		quotaChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_quota_checks_total",
			Help: "Quota checks before a request goes upstream, by result (ok, over_limit: answered 429, failed_open: the ratelimit service did not answer and the request was admitted, failed_closed: ... and refused with 503, too_many_in_flight: the user had their cap of concurrent requests in flight, answered 429).",
		}, []string{"result"}),
		spend: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_spend_total",
			Help: "Money charged for the responses of priced models, in the policy's currency, as charged: reported usage or, without it, the estimate.",
		}, []string{labelModel, labelCurrency, labelUser}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_quota_alerts_total",
			Help: "Quota thresholds reached, once per counter, threshold and window (across gateways that share a Redis), by quota and threshold (percent of the limit).",
		}, []string{"quota", "threshold"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_quota_refusals_total",
			Help: "Requests answered 429 because a quota was spent, by the quota that refused them.",
		}, []string{"quota"}),
		alertsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_quota_alerts_dropped_total",
			Help: "Quota alerts dropped because the queue to the webhook worker was full.",
		}),
		webhookFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_quota_alert_webhook_failures_total",
			Help: "Quota alert webhook calls that failed or were refused (not retried).",
		}),
		activeStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_extproc_streams_active",
			Help: "ext_proc streams (HTTP requests) being served right now.",
		}),
		chargeBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_quota_charges_backlog",
			Help: "Charges and refunds the ratelimit service or Redis has not taken yet: kept (and spooled) and sent again until it does.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_extproc_messages_total",
			Help: "ext_proc messages received from Envoy, by kind: what one request costs in round trips.",
		}, []string{"message"}),
		messageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_extproc_message_duration_seconds",
			Help:    "Time from receiving an ext_proc message from Envoy to sending its answer, by kind: what tollgate adds to each of a request's round trips (a request body's includes its quota check).",
			Buckets: latencyBuckets(),
		}, []string{"message"}),
		quotaCheckDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tollgate_quota_check_duration_seconds",
			Help:    "Time a request waited for its quota check and reservation: the ratelimit service and its Redis round trip, and any wait for this gateway's pending charges to the same counters.",
			Buckets: latencyBuckets(),
		}),
	}
	defer m.resolveMessageKinds()
	if reg == nil {
		return m
	}
	m.tokenUsage = registerOrReuse(reg, m.tokenUsage)
	m.requestDuration = registerOrReuse(reg, m.requestDuration)
	m.timeToFirstToken = registerOrReuse(reg, m.timeToFirstToken)
	m.timePerOutputToken = registerOrReuse(reg, m.timePerOutputToken)
	m.requests = registerOrReuse(reg, m.requests)
	m.costErrors = registerOrReuse(reg, m.costErrors)
	m.usageMissing = registerOrReuse(reg, m.usageMissing)
	m.charges = registerOrReuse(reg, m.charges)
	m.quotaChecks = registerOrReuse(reg, m.quotaChecks)
	m.spend = registerOrReuse(reg, m.spend)
	m.alerts = registerOrReuse(reg, m.alerts)
	m.refusals = registerOrReuse(reg, m.refusals)
	m.alertsDropped = registerOrReuse(reg, m.alertsDropped)
	m.webhookFailures = registerOrReuse(reg, m.webhookFailures)
	m.activeStreams = registerOrReuse(reg, m.activeStreams)
	m.chargeBacklog = registerOrReuse(reg, m.chargeBacklog)
	m.messages = registerOrReuse(reg, m.messages)
	m.messageDuration = registerOrReuse(reg, m.messageDuration)
	m.quotaCheckDuration = registerOrReuse(reg, m.quotaCheckDuration)
	return m
}

func (m *Metrics) resolveMessageKinds() {
	for kind, name := range messageKindNames() {
		m.messageKinds[kind] = m.messages.WithLabelValues(name)
		m.messageTimes[kind] = m.messageDuration.WithLabelValues(name)
	}
}

// countMessage counts one message from Envoy by its kind, and returns the kind (-1: unknown).
func (m *Metrics) countMessage(req *extprocv3.ProcessingRequest) int {
	kind := -1
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		kind = messageRequestHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		kind = messageRequestBody
	case *extprocv3.ProcessingRequest_RequestTrailers:
		kind = messageRequestTrailers
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		kind = messageResponseHeaders
	case *extprocv3.ProcessingRequest_ResponseBody:
		kind = messageResponseBody
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		kind = messageResponseTrailers
	}
	if kind >= 0 {
		m.messageKinds[kind].Inc()
	}
	return kind
}

// timeMessage records how long a message of kind (countMessage's) took to answer.
func (m *Metrics) timeMessage(kind int, took time.Duration) {
	if kind >= 0 {
		m.messageTimes[kind].Observe(took.Seconds())
	}
}

// registerOrReuse registers c, or returns the collector already registered under its name.
// Any other registration error (a name clash with a different shape) leaves c unregistered:
// metrics must never take the server down.
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing
		}
	}
	return c
}
