package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/xds"
)

// defaultExtProcMetricsPort is next to serve's metrics port, so both fit on one machine.
const defaultExtProcMetricsPort = envoy.DefaultMetricsPort + 1

// extProcOptions are the flags of `tollgate extproc`.
type extProcOptions struct {
	policyFile  string
	listenAddr  string
	metricsAddr string
	debounce    time.Duration
	logLevel    string
	logFormat   string
	charges     chargeOptions
	quotaAdmin  quotaAdminOptions
}

// extProcCommand runs the ext_proc server on its own. Envoy fails requests closed when it
// cannot reach ext_proc, so with the server inside `tollgate serve` a control-plane outage
// would stop all traffic; in its own process (and `serve --extproc ""`) it does not.
func extProcCommand(args []string, _, stderr io.Writer) int {
	fs := newFlags("extproc", stderr)
	var o extProcOptions
	fs.StringVar(&o.policyFile, "f", "policy.yaml", "policy file to follow (the same file tollgate serve uses)")
	fs.StringVar(&o.listenAddr, "listen", fmt.Sprintf("127.0.0.1:%d", policies.DefaultExtProcPort), "listen address of the ext_proc gRPC server, host:port or unix:PATH (the policy's extProc endpoint or socket)")
	fs.StringVar(&o.metricsAddr, "metrics", fmt.Sprintf("127.0.0.1:%d", defaultExtProcMetricsPort), "listen address of /metrics (GenAI metrics), /status and /healthz")
	fs.DurationVar(&o.debounce, "debounce", 100*time.Millisecond, "wait this long for edits to the policy file to settle")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	o.charges.register(fs)
	o.quotaAdmin.register(fs)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	o.charges.resolve(fs, o.listenAddr)
	collectGarbageLessOften(os.LookupEnv)
	return runUntilSignal("extproc", stderr, o.logLevel, o.logFormat, func(ctx context.Context, logger *slog.Logger) error {
		return runExtProc(ctx, o, logger)
	})
}

// runExtProc serves ext_proc until ctx ends, following the policy file like serve does: the
// same reloader applies each version, so both processes accept and reject the same policies.
func runExtProc(ctx context.Context, o extProcOptions, logger *slog.Logger) error {
	reg := newRegistry()
	content, initial, err := readInitialPolicy(o.policyFile)
	if err != nil {
		return err
	}
	rlsOpts, counters, err := o.charges.clientOptions(logger)
	if err != nil {
		return err
	}
	if counters != nil {
		defer func() { _ = counters.Close() }()
	}
	server, err := newExtProcServer(logger, reg, rlsOpts)
	if err != nil {
		return err
	}
	rl := newReloader(o.policyFile, os.LookupEnv, logger.With("component", "reload"), reg, &checkOnly{}, server)
	if err := rl.apply(ctx, content); err != nil {
		return err
	}

	lis, err := listen(o.listenAddr)
	if err != nil {
		return fmt.Errorf("ext_proc listener: %w", err)
	}
	metricsLis, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		_ = lis.Close()
		return fmt.Errorf("metrics listener: %w", err)
	}
	if err := checkExtProc(initial.ExtProc, o.listenAddr, "tollgate extproc"); err != nil {
		logger.Warn(err.Error())
	}

	quotaAdmin, err := listenQuotaAdmin(o.quotaAdmin, server, func() pageStatus {
		return pageStatus{Version: buildVersion(), Reload: rl.snapshot()}
	}, logger)
	if err != nil {
		_ = lis.Close()
		_ = metricsLis.Close()
		return err
	}

	grpcServer := newExtProcGRPC(server)
	httpServer := adminServer(reg, false, func(ctx context.Context) any {
		return extProcStatus{Reload: rl.snapshot(), Version: buildVersion(), Redis: redisStatusOf(ctx, counters)}
	})

	logger.Info("tollgate extproc serving", "policy", o.policyFile, "extproc", lis.Addr().String(),
		"metrics", "http://"+metricsLis.Addr().String()+"/metrics", "version", buildVersion())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveGRPC(grpcServer, lis, "ext_proc") })
	g.Go(func() error { return serveHTTP(httpServer, metricsLis) })
	g.Go(func() error { server.Run(gctx); return nil })
	quotaAdmin.run(gctx, g)
	watchPolicy(gctx, g, o.policyFile, o.debounce, logger, rl)
	g.Go(func() error {
		<-gctx.Done()
		logger.Info("shutting down")
		stopExtProc(grpcServer, server, logger)
		return shutdownHTTP(httpServer)
	})
	return g.Wait()
}

// extProcStatus is the JSON document at the standalone ext_proc server's /status.
type extProcStatus struct {
	Version string       `json:"tollgate_version"`
	Reload  reloadStatus `json:"policy"`
	Redis   *redisStatus `json:"redis,omitempty"`
}

// checkOnly is the publisher of a process that serves no xDS: it runs the control plane's
// checks and computes the version it would serve, so a policy the control plane refuses is
// refused here too, and the status shows the same version in both processes.
type checkOnly struct {
	mu                             sync.Mutex
	envoyVersion, rateLimitVersion string
}

func (c *checkOnly) Publish(_ context.Context, r xds.Resources) (xds.PublishResult, error) {
	envoyVersion, rateLimitVersion, err := xds.Versions(r)
	if err != nil {
		return xds.PublishResult{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	res := xds.PublishResult{
		EnvoyVersion:     envoyVersion,
		RateLimitVersion: rateLimitVersion,
		EnvoyChanged:     envoyVersion != c.envoyVersion,
		RateLimitChanged: rateLimitVersion != c.rateLimitVersion,
	}
	c.envoyVersion, c.rateLimitVersion = envoyVersion, rateLimitVersion
	return res, nil
}
