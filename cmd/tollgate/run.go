package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
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
}

const (
	// partStartTimeout bounds the wait for the ratelimit service and the control plane to
	// answer; each bounds its own start as well, this only guards against a hang.
	partStartTimeout = 60 * time.Second
	// envoyReadyTimeout bounds the wait for Envoy's first complete configuration.
	envoyReadyTimeout = 60 * time.Second
	// startPollInterval is how often readiness is polled.
	startPollInterval = 50 * time.Millisecond
	// embeddedClockTick is how often the embedded Redis' key TTLs are advanced; see
	// startCounters.
	embeddedClockTick = 5 * time.Second
)

func runCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", stderr)
	var o runOptions
	fs.StringVar(&o.policyFile, "f", "policy.yaml", "policy file to serve and watch")
	fs.StringVar(&o.redisURL, "redis", os.Getenv("REDIS_URL"), "Redis for the quota counters: host:port or redis://[user:password@]host:port (env REDIS_URL); empty: an embedded in-memory Redis, per process and not persisted")
	fs.StringVar(&o.xdsAddr, "xds", envoy.DefaultXDSAddress, "listen address of the ADS (xDS) gRPC server")
	fs.StringVar(&o.extProcAddr, "extproc", fmt.Sprintf("127.0.0.1:%d", policies.DefaultExtProcPort), "listen address of the ext_proc gRPC server (must match the policy's extProc)")
	fs.StringVar(&o.metricsAddr, "metrics", fmt.Sprintf("127.0.0.1:%d", envoy.DefaultMetricsPort), "listen address of /metrics, /status and /healthz")
	fs.StringVar(&o.adminAddr, "admin", envoy.DefaultAdminAddress, "Envoy's admin interface address")
	fs.StringVar(&o.rateLimitGRPC, "ratelimit-grpc", rls.DefaultGRPCAddr, "listen address of the ratelimit service's gRPC API (must match the policy's rateLimit)")
	fs.StringVar(&o.rateLimitHTTP, "ratelimit-http", rls.DefaultHTTPAddr, "listen address of the ratelimit service's /healthcheck and /json API")
	fs.StringVar(&o.rateLimitDebug, "ratelimit-debug", rls.DefaultDebugAddr, "listen address of the ratelimit service's debug port")
	fs.StringVar(&o.logDir, "log-dir", filepath.Join(".run", "logs"), "directory for Envoy's access log and its own log")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.envoyLogLevel, "envoy-log-level", "info", "Envoy's own log level (trace, debug, info, warning, error, critical, off), written to the log directory")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	logger, err := newLogger(stderr, o.logLevel, "text")
	if err != nil {
		fmt.Fprintf(stderr, "tollgate run: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := catchSignals(logger, cancel, func() { os.Exit(1) }, os.Interrupt, syscall.SIGTERM)
	defer signals.stop()

	if err := runGateway(ctx, o, logger, stdout, signals.reclaim); err != nil {
		fmt.Fprintln(stderr, "tollgate run failed:")
		printErrors(stderr, err)
		return 1
	}
	return 0
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

// runPlan is everything checked before anything starts.
type runPlan struct {
	opts      runOptions
	policy    *policies.Policy
	envoyBin  string
	logDir    string // absolute
	redisURL  string // empty: embedded
	rateLimit rls.Options
}

// planRun validates the command line and the policy together and finds Envoy, so mistakes are
// reported, all at once, before anything has started.
func planRun(o runOptions) (*runPlan, error) {
	p, _, err := compile(o.policyFile)
	if err != nil {
		return nil, err
	}
	var errs []error
	errs = append(errs,
		checkEndpoint("extProc", p.ExtProc, "extproc", o.extProcAddr),
		checkEndpoint("rateLimit", p.RateLimit.Endpoint, "ratelimit-grpc", o.rateLimitGRPC))
	listener := net.JoinHostPort(p.Listener.Address, strconv.Itoa(p.Listener.Port))
	addrs := []namedAddr{
		{"the policy's listener", listener},
		{"--admin", o.adminAddr},
		{"--xds", o.xdsAddr},
		{"--extproc", o.extProcAddr},
		{"--metrics", o.metricsAddr},
		{"--ratelimit-grpc", o.rateLimitGRPC},
		{"--ratelimit-http", o.rateLimitHTTP},
		{"--ratelimit-debug", o.rateLimitDebug},
	}
	if err := checkDistinctPorts(addrs); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, checkListenable(addrs))
	}
	bin, err := launch.FindBinary()
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	logDir, err := filepath.Abs(o.logDir)
	if err != nil {
		return nil, fmt.Errorf("--log-dir: %w", err)
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("--log-dir: %w", err)
	}
	return &runPlan{
		opts:     o,
		policy:   p,
		envoyBin: bin,
		logDir:   logDir,
		redisURL: o.redisURL,
		rateLimit: rls.Options{
			GRPCAddr:  o.rateLimitGRPC,
			HTTPAddr:  o.rateLimitHTTP,
			DebugAddr: o.rateLimitDebug,
			XDSAddr:   dialAddr(o.xdsAddr),
			NodeID:    envoy.DefaultRateLimitNode,
			LogLevel:  rateLimitLogLevel(o.logLevel),
		},
	}, nil
}

// checkEndpoint makes sure Envoy, configured by the policy, dials what run listens on.
func checkEndpoint(policyField string, ep policies.Endpoint, flagName, listen string) error {
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--%s %q is not host:port", flagName, listen)
	}
	policyAddr := net.JoinHostPort(ep.Address, strconv.Itoa(ep.Port))
	mismatch := func() error {
		return fmt.Errorf("the policy's %s is %s but tollgate run listens on %s (--%s), so Envoy would not reach it; pass --%s %s or change %s in the policy",
			policyField, policyAddr, listen, flagName, flagName, policyAddr, policyField)
	}
	if port, err := strconv.Atoi(portText); err != nil || port != ep.Port {
		return mismatch()
	}
	if isUnspecified(host) {
		return nil
	}
	// Host names cannot be compared without resolving them: only two IPs can disagree for sure.
	listenIP, policyIP := net.ParseIP(host), net.ParseIP(ep.Address)
	if listenIP != nil && policyIP != nil && !listenIP.Equal(policyIP) {
		return mismatch()
	}
	return nil
}

type namedAddr struct{ name, addr string }

// checkDistinctPorts refuses two parts on one port. The ratelimit service's listeners set
// SO_REUSEPORT, so such a clash would not fail: the kernel would share connections between them.
func checkDistinctPorts(addrs []namedAddr) error {
	owner := map[string]string{}
	var errs []error
	for _, a := range addrs {
		_, port, err := net.SplitHostPort(a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q is not host:port", a.name, a.addr))
			continue
		}
		if other, taken := owner[port]; taken {
			errs = append(errs, fmt.Errorf("%s and %s both use port %s", other, a.name, port))
			continue
		}
		owner[port] = a.name
	}
	return errors.Join(errs...)
}

// checkListenable binds and releases every address, so a port in use (often another tollgate
// run, or a leftover Envoy) is named before anything starts.
func checkListenable(addrs []namedAddr) error {
	var errs []error
	for _, a := range addrs {
		l, err := net.Listen("tcp", a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s cannot be used: %w", a.name, a.addr, err))
			continue
		}
		l.Close()
	}
	return errors.Join(errs...)
}

func isUnspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// dialAddr turns a listen address into one a local client can dial.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || !isUnspecified(host) {
		return listen
	}
	if host == "::" {
		return net.JoinHostPort("::1", port)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// rateLimitLogLevel maps tollgate's --log-level onto the ratelimit service's levels.
func rateLimitLogLevel(level string) string {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return rls.DefaultLogLevel
	}
	switch {
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	default:
		return "error"
	}
}

// runGateway runs the whole gateway until ctx ends or a part fails: counters, ratelimit
// service, control plane and Envoy, started in that order and stopped in the reverse one, so
// Envoy never runs without the services it calls. It returns nil after a stop asked for by
// ctx; an unexpected exit of any part is an error.
func runGateway(ctx context.Context, o runOptions, logger *slog.Logger, stdout io.Writer, reclaimSignals func()) error {
	plan, err := planRun(o)
	if err != nil {
		return err
	}
	g := &gateway{logger: logger}
	ready, startErr := g.start(ctx, plan, reclaimSignals)
	if ready {
		printBanner(stdout, plan, g)
		g.supervise(ctx)
	}
	stopErr := g.stop()
	return errors.Join(startErr, g.failures(), stopErr)
}

// gateway is the running parts of `tollgate run`.
type gateway struct {
	logger       *slog.Logger
	counters     *counters
	rateLimit    *task
	controlPlane *task
	envoy        *launch.Process
	stateDir     string
}

// start starts every part and waits for each to serve. It reports false without an error when
// ctx ended or a part exited while starting (failures reports which).
func (g *gateway) start(ctx context.Context, plan *runPlan, reclaimSignals func()) (bool, error) {
	var err error
	g.counters, err = startCounters(g.logger, plan.redisURL)
	if err != nil {
		return false, err
	}
	rlOpts := plan.rateLimit
	rlOpts.RedisURL = g.counters.url
	rlLogger := g.logger.With("component", "ratelimit")
	g.rateLimit = startTask("ratelimit service", func(ctx context.Context) error {
		return rls.Run(ctx, rlLogger, rlOpts)
	})
	health := "http://" + dialAddr(rlOpts.HTTPAddr) + "/healthcheck"
	if ok, err := g.await(ctx, "ratelimit service", partStartTimeout, polling(func(ctx context.Context) error {
		// Any answer will do: the service is up; its limits are awaited below.
		_, err := httpGet(ctx, health)
		return err
	})); !ok {
		return false, err
	}
	// The upstream service has installed its signal handlers by the time it answers HTTP.
	reclaimSignals()

	so := serveOptions{
		policyFile:    plan.opts.policyFile,
		xdsAddr:       plan.opts.xdsAddr,
		extProcAddr:   plan.opts.extProcAddr,
		metricsAddr:   plan.opts.metricsAddr,
		rateLimitNode: envoy.DefaultRateLimitNode,
		debounce:      100 * time.Millisecond,
	}
	cpLogger := g.logger
	g.controlPlane = startTask("control plane", func(ctx context.Context) error {
		return serve(ctx, so, cpLogger)
	})
	healthz := "http://" + dialAddr(plan.opts.metricsAddr) + "/healthz"
	if ok, err := g.await(ctx, "control plane", partStartTimeout, polling(func(ctx context.Context) error {
		status, err := httpGet(ctx, healthz)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("/healthz answered %d", status)
		}
		return err
	})); !ok {
		return false, err
	}

	// Envoy fails open while the ratelimit service has no limits, so it starts only once the
	// service answers for the policy's quotas (its xDS client retries about once a second).
	if probe := limitsProbe(plan.policy, rlOpts.GRPCAddr); probe != nil {
		if ok, err := g.await(ctx, "ratelimit service (loading the policy's limits)", partStartTimeout, polling(probe)); !ok {
			return false, err
		}
	}

	boot, err := bootstrap.YAML(bootstrap.Options{XDSAddress: dialAddr(plan.opts.xdsAddr), AdminAddress: plan.opts.adminAddr})
	if err != nil {
		return false, err
	}
	g.stateDir, err = os.MkdirTemp("", "tollgate-run-")
	if err != nil {
		return false, fmt.Errorf("state directory for the Envoy bootstrap: %w", err)
	}
	g.envoy, err = launch.Start(launch.Options{
		Binary:       plan.envoyBin,
		Bootstrap:    boot,
		ConfigDir:    g.stateDir,
		LogDir:       plan.logDir,
		AdminAddress: plan.opts.adminAddr,
		// Envoy flushes its log files every 10s by default; a second keeps `tail -f` live.
		Args: []string{"--log-level", plan.opts.envoyLogLevel, "--file-flush-interval-msec", "1000"},
	})
	if err != nil {
		return false, err
	}
	g.logger.Info("envoy started; its access log and its own log go to files, not here",
		"pid", g.envoy.Pid(), "binary", plan.envoyBin, "access_log", g.envoy.AccessLogPath(), "log", g.envoy.LogPath())
	return g.await(ctx, "Envoy", envoyReadyTimeout, func(ctx context.Context) error {
		err := g.envoy.WaitReady(ctx)
		if err != nil && g.envoy.Err() != nil {
			return nil // the exit is reported by failures
		}
		return err
	})
}

// await runs wait until it returns, bounded by timeout, ctx and the life of every part started
// so far. It returns true only when wait succeeded with everything still running.
func (g *gateway) await(ctx context.Context, what string, timeout time.Duration, wait func(context.Context) error) (bool, error) {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rl, cp, ev := g.doneChannels()
	go func() {
		select {
		case <-rl:
		case <-cp:
		case <-ev:
		case <-waitCtx.Done():
			return
		}
		cancel()
	}()
	err := wait(waitCtx)
	switch {
	case ctx.Err() != nil || g.exited():
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%s did not start: %w", what, err)
	}
	return true, nil
}

// doneChannels returns the channels closed when each part exits; a part not started yet has a
// nil channel, which never fires in a select.
func (g *gateway) doneChannels() (rateLimit, controlPlane, envoy <-chan struct{}) {
	if g.rateLimit != nil {
		rateLimit = g.rateLimit.done
	}
	if g.controlPlane != nil {
		controlPlane = g.controlPlane.done
	}
	if g.envoy != nil {
		envoy = g.envoy.Done()
	}
	return rateLimit, controlPlane, envoy
}

// exited reports whether any started part has exited.
func (g *gateway) exited() bool {
	rl, cp, ev := g.doneChannels()
	return isClosed(rl) || isClosed(cp) || isClosed(ev)
}

// supervise blocks until ctx ends or a part exits on its own; a part's exit is logged at once,
// loudly, because the gateway is then down.
func (g *gateway) supervise(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-g.envoy.Done():
		g.logger.Error("Envoy exited unexpectedly: no data plane; stopping everything", "pid", g.envoy.Pid())
	case <-g.rateLimit.done:
		g.logger.Error("the ratelimit service stopped unexpectedly; stopping everything", "error", g.rateLimit.err)
	case <-g.controlPlane.done:
		g.logger.Error("the control plane stopped unexpectedly; stopping everything", "error", g.controlPlane.err)
	}
}

// stop stops what was started, Envoy first so no request reaches a stopped service, then the
// ratelimit service, the control plane and the counters. It returns errors that happened while
// stopping; parts that had already exited on their own are reported by failures.
func (g *gateway) stop() error {
	var errs []error
	if g.envoy != nil && g.envoy.Err() == nil {
		g.logger.Info("stopping Envoy", "pid", g.envoy.Pid())
		if err := g.envoy.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []*task{g.rateLimit, g.controlPlane} {
		if t == nil || t.finished() {
			continue
		}
		g.logger.Info("stopping the " + t.name)
		if err := t.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the %s: %w", t.name, err))
		}
	}
	if g.counters != nil {
		g.counters.close()
	}
	if g.stateDir != "" {
		_ = os.RemoveAll(g.stateDir)
	}
	if len(errs) == 0 {
		g.logger.Info("stopped")
	}
	return errors.Join(errs...)
}

// failures describes every part that exited without being asked to.
func (g *gateway) failures() error {
	var errs []error
	if g.envoy != nil {
		if err := g.envoy.Err(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []*task{g.rateLimit, g.controlPlane} {
		if t != nil && t.finished() && t.unexpected {
			if t.err != nil {
				errs = append(errs, fmt.Errorf("the %s stopped: %w", t.name, t.err))
			} else {
				errs = append(errs, fmt.Errorf("the %s stopped unexpectedly", t.name))
			}
		}
	}
	return errors.Join(errs...)
}

// task is a part of the gateway running in a goroutine with a context of its own, so parts
// can be stopped one at a time, in order.
type task struct {
	name     string
	cancel   context.CancelFunc
	stopOnce sync.Once
	asked    chan struct{} // closed when stop begins
	done     chan struct{} // closed when the task has ended; err and unexpected are set then
	err      error
	// unexpected says the task ended before it was asked to.
	unexpected bool
}

func startTask(name string, run func(context.Context) error) *task {
	ctx, cancel := context.WithCancel(context.Background())
	t := &task{name: name, cancel: cancel, asked: make(chan struct{}), done: make(chan struct{})}
	go func() {
		err := run(ctx)
		t.err, t.unexpected = err, !isClosed(t.asked)
		close(t.done)
	}()
	return t
}

// finished reports whether the task has ended.
func (t *task) finished() bool { return isClosed(t.done) }

// stop asks the task to end and waits for it; each part bounds its own stop. An end that was
// not asked for is left to failures to report.
func (t *task) stop() error {
	t.stopOnce.Do(func() {
		close(t.asked)
		t.cancel()
	})
	<-t.done
	if t.unexpected {
		return nil
	}
	return t.err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// polling turns a probe into a wait: probe until it succeeds or ctx ends (then the probe's
// last error says why).
func polling(probe func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		tick := time.NewTicker(startPollInterval)
		defer tick.Stop()
		for {
			err := probe(ctx)
			if err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return err
			case <-tick.C:
			}
		}
	}
}

func httpGet(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// readinessProbeUser is the user a readiness check asks about. The check spends nothing.
const readinessProbeUser = "tollgate-run-readiness-probe"

// limitsProbe returns a probe that succeeds once the ratelimit service at addr applies a limit
// to the policy's first quota, or nil when the policy has no quotas to wait for.
func limitsProbe(p *policies.Policy, addr string) func(context.Context) error {
	quotas := translate.UserQuotas(p, readinessProbeUser, "")
	if len(quotas) == 0 {
		return nil
	}
	var d rls.Descriptor
	for _, e := range quotas[0].Entries {
		d.Entries = append(d.Entries, rls.Entry{Key: e.Key, Value: e.Value})
	}
	domain := p.RateLimit.Domain
	target := dialAddr(addr)
	return func(ctx context.Context) error {
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		st, err := rls.Check(ctx, conn, domain, []rls.Descriptor{d})
		if err != nil {
			return err
		}
		if st[0].Limit == 0 {
			return fmt.Errorf("no limit for %s yet", d)
		}
		return nil
	}
}

// counters is the Redis the ratelimit service keeps its counters in.
type counters struct {
	url      string
	embedded *miniredis.Miniredis
	quit     chan struct{}
	ticking  chan struct{}
}

// startCounters uses the Redis at redisURL, or, when it is empty, starts an embedded in-memory
// Redis-compatible server on a free loopback port. The ratelimit service behaves the same on
// it, but its counters live and die with this process.
func startCounters(logger *slog.Logger, redisURL string) (*counters, error) {
	if redisURL != "" {
		c := &counters{url: redisURL}
		logger.Info("quota counters are kept in " + c.describe())
		return c, nil
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded Redis: %w", err)
	}
	c := &counters{url: m.Addr(), embedded: m, quit: make(chan struct{}), ticking: make(chan struct{})}
	// The embedded server never expires keys on its own: its TTLs only move when told to.
	// Advancing them with the wall clock keeps memory flat as windows pass. (Counting is
	// unaffected either way: each window has its own key.)
	go func() {
		defer close(c.ticking)
		tick := time.NewTicker(embeddedClockTick)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-c.quit:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	logger.Info("quota counters are kept in an embedded in-memory Redis: per process and not persisted, they start from zero on every run (use --redis or REDIS_URL to keep them)",
		"addr", m.Addr())
	return c, nil
}

// describe says where the counters are, without any password the URL holds.
func (c *counters) describe() string {
	if c.embedded != nil {
		return fmt.Sprintf("embedded in-memory Redis on %s (per process, not persisted)", c.url)
	}
	if !strings.Contains(c.url, "://") {
		return "Redis at " + c.url
	}
	u, err := url.Parse(c.url)
	if err != nil {
		return "Redis from --redis"
	}
	u.User = nil
	return "Redis at " + u.String()
}

func (c *counters) close() {
	if c.embedded == nil {
		return
	}
	close(c.quit)
	<-c.ticking
	c.embedded.Close()
}

// printBanner tells the user, once Envoy is live, what runs where.
func printBanner(w io.Writer, plan *runPlan, g *gateway) {
	p := plan.policy
	listener := fmt.Sprintf("http://%s", net.JoinHostPort(p.Listener.Address, strconv.Itoa(p.Listener.Port)))
	metrics := "http://" + dialAddr(plan.opts.metricsAddr)
	models := make([]string, 0, len(p.Models))
	for _, m := range p.Models {
		models = append(models, m.Name)
	}
	sort.Strings(models)

	fmt.Fprintf(w, "\ntollgate is running %s; Envoy (pid %d) is live.\n\n", plan.opts.policyFile, g.envoy.Pid())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(label, value string) { fmt.Fprintf(tw, "  %s\t%s\n", label, value) }
	row("listener", fmt.Sprintf("%s/v1/chat/completions  (user header: %s)", listener, p.Identity.Header))
	row("models", strings.Join(models, ", "))
	quotas := quotaLines(p)
	if len(quotas) == 0 {
		row("quotas", "none: requests are routed, not limited")
	}
	for i, q := range quotas {
		label := ""
		if i == 0 {
			label = "quotas"
		}
		row(label, q)
	}
	row("metrics", metrics+"/metrics")
	row("status", metrics+"/status")
	row("envoy admin", "http://"+dialAddr(plan.opts.adminAddr))
	row("counters", g.counters.describe())
	row("logs", g.envoy.AccessLogPath()+"  (access log: one JSON line per request)")
	row("", g.envoy.LogPath()+"  (Envoy's own log)")
	_ = tw.Flush()
	if len(p.Models) > 0 {
		fmt.Fprintf(w, "\n  try: curl -s %s/v1/chat/completions -H '%s: alice' -H 'content-type: application/json' \\\n"+
			"         -d '{\"model\":%q,\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n",
			listener, p.Identity.Header, p.Models[0].Name)
	}
	fmt.Fprint(w, "\nCtrl-C to stop.\n")
}

// quotaLines summarise each quota as model: limit cost per window, with its overrides.
func quotaLines(p *policies.Policy) []string {
	lines := make([]string, 0, len(p.Quotas))
	for _, q := range p.Quotas {
		l := fmt.Sprintf("%s: %d %s per %s per user", q.Model, q.Limit, q.Cost, q.Per)
		if len(q.Overrides) > 0 {
			l += fmt.Sprintf(" (%d override(s))", len(q.Overrides))
		}
		if q.Shadow {
			l += " (shadow: counted, not enforced)"
		}
		lines = append(lines, l)
	}
	sort.Strings(lines)
	return lines
}
