// `tollgate run`: its flags, and the stop signals it turns into a cancelled context.

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/policies"
)

// runOptions are the flags of `tollgate run`.
type runOptions struct {
	policyFile     string
	redisURL       string
	xdsAddr        string
	extProcAddr    string
	metricsAddr    string
	adminAddr      string
	rateLimitGRPC  string
	rateLimitHTTP  string
	rateLimitDebug string
	logDir         string
	logLevel       string
	envoyLogLevel  string
	// charges.spool keeps undelivered charges; it only matters with counters that outlive the
	// process (--redis).
	charges    chargeOptions
	quotaAdmin quotaAdminOptions
	// overload bounds the Envoy run starts: its heap and client connections.
	overload bootstrap.Overload
}

func runCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", stderr)
	var o runOptions
	fs.StringVar(&o.policyFile, "f", "policy.yaml", "policy file to serve and watch")
	fs.StringVar(&o.redisURL, "redis", os.Getenv("REDIS_URL"), "Redis for the quota counters: "+redisURLForms+" (env REDIS_URL); empty: an embedded in-memory Redis, per process and not persisted")
	fs.StringVar(&o.xdsAddr, "xds", envoy.DefaultXDSAddress, "listen address of the ADS (xDS) gRPC server")
	fs.StringVar(&o.extProcAddr, "extproc", fmt.Sprintf("127.0.0.1:%d", policies.DefaultExtProcPort), "listen address of the ext_proc gRPC server, host:port or unix:PATH (must match the policy's extProc)")
	fs.StringVar(&o.metricsAddr, "metrics", fmt.Sprintf("127.0.0.1:%d", envoy.DefaultMetricsPort), "listen address of /metrics, /status and /healthz")
	fs.StringVar(&o.adminAddr, "admin", envoy.DefaultAdminAddress, "Envoy's admin interface address")
	fs.StringVar(&o.rateLimitGRPC, "ratelimit-grpc", rls.DefaultGRPCAddr, "listen address of the ratelimit service's gRPC API (must match the policy's rateLimit)")
	fs.StringVar(&o.rateLimitHTTP, "ratelimit-http", rls.DefaultHTTPAddr, "listen address of the ratelimit service's /healthcheck and /json API")
	fs.StringVar(&o.rateLimitDebug, "ratelimit-debug", rls.DefaultDebugAddr, "listen address of the ratelimit service's debug port")
	fs.StringVar(&o.logDir, "log-dir", filepath.Join(".run", "logs"), "directory for Envoy's access log and its own log")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	overloadFlags(fs, &o.overload)
	fs.StringVar(&o.envoyLogLevel, "envoy-log-level", "info", "Envoy's own log level (trace, debug, info, warning, error, critical, off), written to the log directory")
	o.charges.registerSpool(fs)
	o.quotaAdmin.register(fs)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	// Counters in the embedded Redis end with the process: so would a spool's charges.
	if o.redisURL != "" {
		o.charges.resolve(fs, o.extProcAddr)
	}
	logger, err := newLogger(stderr, o.logLevel, "text")
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate run: %v\n", err)
		return 2
	}
	if n, set := shareCPUsWithEnvoy(os.LookupEnv); set {
		logger.Info("GOMAXPROCS set to half the CPUs: Envoy's workers, which run on all of them, get the rest (set GOMAXPROCS to choose)", "gomaxprocs", n)
	}
	if collectGarbageLessOften(os.LookupEnv) {
		logger.Info("GOGC set: garbage is collected once the heap has grown by four times what is live (set GOGC to choose)", "gogc", gcPercent)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := catchSignals(logger, cancel, func() { os.Exit(1) }, os.Interrupt, syscall.SIGTERM)
	defer signals.stop()

	if err := runGateway(ctx, o, logger, stdout, signals.reclaim); err != nil {
		_, _ = fmt.Fprintln(stderr, "tollgate run failed:")
		printErrors(stderr, err)
		return 1
	}
	return 0
}

// shareCPUsWithEnvoy gives tollgate's Go runtime half the CPUs it would use (at least one), unless
// GOMAXPROCS is set. tollgate run shares its host with the Envoy it starts, whose workers
// already take every CPU; with fewer Go processors tollgate spends less on waking and parking
// them for each message. On 2 CPUs, one processor cut tollgate's CPU per request by 11–17% at
// the same throughput (docs/performance.md). It returns the new setting and whether it set one.
func shareCPUsWithEnvoy(lookupEnv func(string) (string, bool)) (int, bool) {
	if v, ok := lookupEnv("GOMAXPROCS"); ok && v != "" {
		return runtime.GOMAXPROCS(0), false
	}
	n := max(1, runtime.GOMAXPROCS(0)/2)
	runtime.GOMAXPROCS(n)
	return n, true
}

// signalCatcher turns the stop signals (SIGINT and SIGTERM) into a cancelled context; a second
// signal gives up on a clean stop.
type signalCatcher struct {
	signals []os.Signal
	ch      chan os.Signal
	quit    chan struct{}
}

func catchSignals(logger *slog.Logger, cancel context.CancelFunc, forceExit func(), signals ...os.Signal) *signalCatcher {
	s := &signalCatcher{signals: signals, ch: make(chan os.Signal, 2), quit: make(chan struct{})}
	signal.Notify(s.ch, signals...)
	go func() {
		select {
		case sig := <-s.ch:
			logger.Info("stopping: Envoy first, then the ratelimit service, the control plane and the counters (signal again to exit at once)", "signal", sig.String())
			cancel()
		case <-s.quit:
			return
		}
		select {
		case sig := <-s.ch:
			logger.Error("second signal: exiting without a clean stop", "signal", sig.String())
			forceExit()
		case <-s.quit:
		}
	}()
	return s
}

// reclaim takes the stop signals and SIGHUP back from the upstream ratelimit service, which
// registers handlers for SIGINT, SIGTERM and SIGHUP that stop it and exit the whole process
// with status 0: left in place, a Ctrl-C would end tollgate before it stopped Envoy, and a
// SIGHUP meant to reload the policy would end it too. signal.Reset drops every handler for
// those signals, ours included, so ours is registered again; serve registers its SIGHUP
// handler after this.
func (s *signalCatcher) reclaim() {
	signal.Reset(append([]os.Signal{syscall.SIGHUP}, s.signals...)...)
	signal.Notify(s.ch, s.signals...)
}

func (s *signalCatcher) stop() {
	signal.Stop(s.ch)
	close(s.quit)
}
