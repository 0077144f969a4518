package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
)

// adminServer serves /metrics from reg, /healthz, and /status as the JSON that status returns;
// with profiling on, also Go's /debug/pprof/ handlers.
func adminServer(reg *prometheus.Registry, profiling bool, status func(ctx context.Context) any) *http.Server {
	mux := http.NewServeMux()
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(status(r.Context()))
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// serveHTTP serves until the server is shut down.
func serveHTTP(s *http.Server, lis net.Listener) error {
	if err := s.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

// shutdownHTTP stops the server, giving open requests a moment to finish.
func shutdownHTTP(s *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.Shutdown(ctx)
}

// watchPolicy applies the policy file through rl whenever it changes, and again on SIGHUP,
// until ctx ends. Errors are logged, counted and kept in the status by rl.apply.
func watchPolicy(ctx context.Context, g *errgroup.Group, path string, debounce time.Duration, logger *slog.Logger, rl *reloader) {
	watcher := policies.NewWatcher(path, debounce, logger.With("component", "watch"))
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	g.Go(func() error {
		return watcher.Run(ctx, func(content []byte) { _ = rl.apply(ctx, content) })
	})
	g.Go(func() error {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				logger.Info("SIGHUP: reloading the policy")
				watcher.Reload()
			}
		}
	})
}

// newRegistry is a metrics registry with the Go runtime and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// readInitialPolicy reads and parses the policy a process starts with: without a valid one
// there is nothing good to serve.
func readInitialPolicy(path string) ([]byte, *policies.Policy, error) {
	content, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := policies.Parse(path, content, os.LookupEnv)
	if err != nil {
		return nil, nil, err
	}
	return content, p, nil
}

// newExtProcServer builds the ext_proc server. It has no configuration until the reloader
// applies the first policy, which happens before it serves.
//
// TOLLGATE_CLOCK (an RFC 3339 time) starts the clock that places requests in calendar periods
// at that time, ticking from there: a way to see a rollover at midnight or on the 1st without
// waiting for it. The ratelimit service's own windows keep the real time.
func newExtProcServer(logger *slog.Logger, reg prometheus.Registerer, rls rlsclient.Options) (*extproc.Server, error) {
	logger = logger.With("component", "extproc")
	s, err := extproc.NewServer(logger, extproc.NewMetrics(reg), nil, rls)
	if err != nil {
		return nil, err
	}
	if counters, ok := rls.Refunder.(extproc.CounterStore); ok {
		s.UseCounters(counters)
	}
	if v := os.Getenv(clockEnv); v != "" {
		start, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", clockEnv, err)
		}
		real0 := time.Now()
		s.UseClock(func() time.Time { return start.Add(time.Since(real0)) })
		logger.Warn("calendar periods follow a shifted clock", "env", clockEnv, "start", start.Format(time.RFC3339))
	}
	return s, nil
}

// clockEnv names the environment variable that shifts the calendar clock (newExtProcServer).
const clockEnv = "TOLLGATE_CLOCK"

// gcPercent is the garbage collector's target, GOGC, of the commands that serve ext_proc,
// unless GOGC is set: a collection once the heap grows by four times what is live rather than
// by once. tollgate's live heap is small (the policy and the requests in flight) and nearly
// all it allocates dies with its request, so collecting less often costs some memory (55 MiB
// more at 1,800 req/s on 2 CPUs) and saves CPU and stalls on every request: beside Go's default
// in two runs, 1–6% less of tollgate's CPU per request and a lower p50 and p99 at every rate
// measured (docs/performance.md).
const gcPercent = 400

// collectGarbageLessOften sets the garbage collector's target to gcPercent unless GOGC is set,
// and reports whether it did.
func collectGarbageLessOften(lookupEnv func(string) (string, bool)) bool {
	if v, ok := lookupEnv("GOGC"); ok && v != "" {
		return false
	}
	debug.SetGCPercent(gcPercent)
	return true
}

// runUntilSignal builds the logger, runs fn until SIGINT or SIGTERM, and turns the outcome into
// the exit code of a long-running command: 2 for a bad log flag, 1 when fn fails.
func runUntilSignal(name string, stderr io.Writer, logLevel, logFormat string, fn func(ctx context.Context, logger *slog.Logger) error) int {
	logger, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate %s: %v\n", name, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := fn(ctx, logger); err != nil {
		var policyErrs *policies.Errors
		if errors.As(err, &policyErrs) {
			printErrors(stderr, err)
		} else {
			_, _ = fmt.Fprintf(stderr, "tollgate %s: %v\n", name, err)
		}
		return 1
	}
	return 0
}

// modelName names the model a quota counts, for people: "every model" for a pool over all.
func modelName(model string) string {
	if model == "" {
		return "every model"
	}
	return model
}

// redisURLForms lists, for flag help, the forms a --redis URL takes (rls.Options.RedisURL).
const redisURLForms = "host:port, redis://[user:password@]host:port, redis+cluster://[user:password@]host:port,host:port,… (a Redis Cluster's seeds), " +
	"redis+sentinel://[user:password@]host:port,…/MASTER[?sentinel_password=…] (the sentinels and the primary's name), or unix:///path/to/redis.sock; " +
	"rediss, rediss+cluster and rediss+sentinel use TLS, with ?ca=FILE for a private CA"
