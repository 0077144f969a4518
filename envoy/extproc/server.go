// Package extproc is tollgate's Envoy external processor (envoy.service.ext_proc.v3). Envoy
// calls it once per HTTP request, on one gRPC stream, before the router. It
//
//   - identifies the user — from a trusted header, an API key looked up by its hash, or a
//     JSON Web Token Envoy verified — and rejects requests without one (401), since no quota
//     could hold them. In API key and token modes it
//     writes the user into the identity header, overwriting the client's, and removes the
//     client's credentials before the request goes upstream;
//   - sends a backend's own API key upstream once the model, and so the backend, is known;
//   - reads the model from the JSON body and writes it into the routing header, overwriting
//     whatever the client sent, and makes Envoy pick the route again;
//   - checks the user's quotas on the model with the ratelimit service and answers 429 when
//     one is used up (quota.go);
//   - makes OpenAI streams report usage (stream_options.include_usage);
//   - answers paths whose usage it cannot read with 404, so nothing reaches a backend unmetered;
//   - reads token usage from successful JSON and server-sent-event responses, publishes the
//     configured costs as dynamic metadata for the access log, and charges them to the user's
//     quotas in the ratelimit service when the exchange ends — with an estimate of what was
//     served when the response carried no usage or broke off;
//   - records OpenTelemetry GenAI metrics.
//
// The server runs in the control plane's process and takes its configuration from it
// directly; Update swaps it without a restart.
package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Server is the ext_proc gRPC service. It is safe for concurrent use.
type Server struct {
	logger   *slog.Logger
	metrics  *Metrics
	rls      *rlsclient.Client
	inFlight inFlight
	cfg      atomic.Pointer[Config]
	// clock says which calendar period a request falls in; time.Now unless UseClock set it.
	clock func() time.Time
	// counters, when set (UseCounters), changes counters for the admin operations; grants are
	// the grants in force, by counter key, as SyncGrants last read them.
	counters CounterStore
	grants   atomic.Pointer[map[string]uint64]
	alerts   *alerter
	// activity records recent callers and refusals once TrackActivity turned it on (for the
	// operator's page); otherwise requests pay nothing for it.
	activity      activity
	trackActivity bool
}

// NewServer returns a server using cfg (see Config for defaults of zero fields) and a
// ratelimit client made with rls. A nil logger discards logs; nil metrics are created
// unregistered. It fails only when the client's spool cannot be used.
func NewServer(logger *slog.Logger, metrics *Metrics, cfg *Config, rls rlsclient.Options) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	if rls.Logger == nil {
		rls.Logger = logger
	}
	if rls.OnBacklog == nil {
		rls.OnBacklog = func(n int) { metrics.chargeBacklog.Set(float64(n)) }
	}
	client, err := rlsclient.New(rls)
	if err != nil {
		return nil, err
	}
	s := &Server{logger: logger, metrics: metrics, rls: client, clock: time.Now, alerts: newAlerter()}
	s.cfg.Store(withDefaults(cfg))
	return s, nil
}

// UseClock makes now the clock that places requests in calendar periods (and says when they
// reset), so that a rollover can be tested without waiting for midnight. Call it before the
// server serves.
func (s *Server) UseClock(now func() time.Time) { s.clock = now }

// Close sends the charges still queued and releases the connections to the ratelimit service.
// Call it after the gRPC server has stopped, so that every exchange has ended and queued its
// charge; it gives up when ctx ends.
func (s *Server) Close(ctx context.Context) error {
	return s.rls.Close(ctx)
}

// Update swaps the configuration. Requests already in flight finish with the configuration
// they started with, so one request is never judged by two policies.
func (s *Server) Update(cfg *Config) {
	s.cfg.Store(withDefaults(cfg))
}

// Register adds the ext_proc service to g.
func (s *Server) Register(g *grpc.Server) {
	extprocv3.RegisterExternalProcessorServer(g, processor{s})
}

// MaxStreamsPerConnection bounds the ext_proc streams one Envoy connection may hold open: the
// highest listener.maxConcurrentRequests a policy may set.
const MaxStreamsPerConnection = 1_000_000

// ServerOptions are the gRPC server options the ext_proc service needs. Envoy sends a whole
// buffered body in one message, so the receive limit must exceed the request body limit
// (plus headroom for headers and framing) or a body Envoy accepted would fail the stream and,
// with a fail-closed filter, the request. Buffered response bodies are bounded by Envoy's
// buffer limit; the limit here never drops below gRPC's 4 MiB default for them.
func ServerOptions(maxRequestBytes int64) []grpc.ServerOption {
	const headroom = 1 << 20
	const floor = 4 << 20
	limit := max(maxRequestBytes, floor) + headroom
	const maxInt32 = 1<<31 - 1
	limit = min(limit, maxInt32)
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(int(limit)),
		// Envoy opens a stream per request and bounds them itself (the ext_proc cluster's
		// circuit breaker, listener.maxConcurrentRequests); this bound per connection is the
		// highest that setting takes, so it never refuses a stream Envoy admitted.
		grpc.MaxConcurrentStreams(MaxStreamsPerConnection),
		// Fixed flow-control windows, large enough that Envoy never waits on them, instead of
		// gRPC's estimate of the link's bandwidth-delay product. The estimate pings Envoy and
		// sends a window update once per round trip on a busy connection, each a wake-up of
		// the connection's writer on the path of the messages queued behind it. ext_proc's
		// messages are a few KiB, and 1 MiB per stream moves 100 MB/s even at a 10 ms round
		// trip; a body beyond the window still arrives, as gRPC widens a stream's window for a
		// message larger than it.
		grpc.StaticStreamWindowSize(1 << 20),
		grpc.StaticConnWindowSize(16 << 20),
	}
}

// processor implements the generated service interface without exporting Process on Server.
type processor struct{ s *Server }

// Process serves one HTTP request: it answers every message Envoy sends on the stream until
// Envoy closes it or the stream is cancelled (for example when the client disconnects).
func (p processor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	p.s.metrics.activeStreams.Inc()
	defer p.s.metrics.activeStreams.Dec()
	ex := newExchange(stream.Context(), p.s.cfg.Load(), p.s.logger, p.s.metrics, p.s.rls, &p.s.inFlight)
	ex.clock = p.s.clock
	ex.counters, ex.grants, ex.alerts = p.s.counters, p.s.currentGrants(), p.s.alerts
	if p.s.trackActivity {
		ex.activity = &p.s.activity
	}
	defer ex.close()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		received := time.Now()
		kind := p.s.metrics.countMessage(req)
		resp := ex.handle(req)
		if resp == nil || req.GetObservabilityMode() {
			// Observability mode ignores answers; an unknown message has none to give.
			p.s.metrics.timeMessage(kind, time.Since(received))
			continue
		}
		err = stream.Send(resp)
		p.s.metrics.timeMessage(kind, time.Since(received))
		if err != nil {
			return err
		}
	}
}

// StreamsInFlight is how many requests this server holds now (one ext_proc stream each), as
// tollgate_extproc_streams_active counts them.
func (s *Server) StreamsInFlight() int64 {
	var m dto.Metric
	if err := s.metrics.activeStreams.Write(&m); err != nil {
		return -1
	}
	return int64(m.GetGauge().GetValue())
}
