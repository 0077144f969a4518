package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/xds"
)

// serveOptions are the flags of `tollgate serve`.
type serveOptions struct {
	policyFile    string
	xdsAddr       string
	extProcAddr   string
	metricsAddr   string
	rateLimitNode string
	debounce      time.Duration
	logLevel      string
	logFormat     string
	pprof         bool
	// xdsTLS serves ADS over TLS (mutual TLS with a client CA); zero: plain TCP.
	xdsTLS xds.TLSFiles
	// charges configure the ext_proc server's reservations and spool.
	charges chargeOptions
	// quotaAdmin configures the quota admin API (with the ext_proc server only).
	quotaAdmin quotaAdminOptions
}

func serveCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", stderr)
	var o serveOptions
	fs.StringVar(&o.policyFile, "f", "policy.yaml", "policy file to serve and watch")
	fs.StringVar(&o.xdsAddr, "xds", envoy.DefaultXDSAddress, "listen address of the ADS (xDS) gRPC server")
	fs.StringVar(&o.extProcAddr, "extproc", fmt.Sprintf("127.0.0.1:%d", policies.DefaultExtProcPort), "listen address of the ext_proc gRPC server, host:port or unix:PATH (the policy's extProc.socket); empty: none (run tollgate extproc as its own process)")
	fs.StringVar(&o.metricsAddr, "metrics", fmt.Sprintf("127.0.0.1:%d", envoy.DefaultMetricsPort), "listen address of /metrics (GenAI and control-plane metrics), /status and /healthz")
	fs.StringVar(&o.rateLimitNode, "ratelimit-node-id", envoy.DefaultRateLimitNode, "xDS node id of the ratelimit service")
	fs.DurationVar(&o.debounce, "debounce", 100*time.Millisecond, "wait this long for edits to the policy file to settle")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.pprof, "pprof", false, "also serve Go's /debug/pprof/ profiles on the --metrics address")
	fs.StringVar(&o.xdsTLS.CertFile, "xds-tls-cert", "", "PEM certificate of the ADS server; turns on TLS 1.3 for xDS")
	fs.StringVar(&o.xdsTLS.KeyFile, "xds-tls-key", "", "PEM private key of --xds-tls-cert")
	fs.StringVar(&o.xdsTLS.ClientCAFile, "xds-tls-client-ca", "", "PEM CA certificates; xDS clients must present a certificate signed by one (mutual TLS)")
	o.charges.register(fs)
	o.quotaAdmin.register(fs)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	o.charges.resolve(fs, o.extProcAddr)
	if err := o.xdsTLS.Validate(); err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate serve: --xds-tls-*: %v\n", err)
		return 2
	}
	collectGarbageLessOften(os.LookupEnv)
	return runUntilSignal("serve", stderr, o.logLevel, o.logFormat, func(ctx context.Context, logger *slog.Logger) error {
		return serve(ctx, o, logger)
	})
}

// serve runs the control plane until ctx ends. It refuses to start without a valid policy:
// there would be nothing good to serve.
func serve(ctx context.Context, o serveOptions, logger *slog.Logger) error {
	reg := newRegistry()

	xdsOptions := []grpc.ServerOption{
		// Envoy keeps one ADS stream open for hours; pings find dead peers.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if o.xdsTLS.Enabled() {
		tlsConfig, err := o.xdsTLS.ServerConfig(logger.With("component", "xds"))
		if err != nil {
			return err
		}
		xdsOptions = append(xdsOptions, grpc.Creds(credentials.NewTLS(tlsConfig)))
	}

	content, _, err := readInitialPolicy(o.policyFile)
	if err != nil {
		return err
	}
	xdsServer := xds.NewServer(logger.With("component", "xds"), reg, xds.Options{RateLimitNodeID: o.rateLimitNode})
	// Without an address the ext_proc server runs elsewhere (`tollgate extproc`), so request
	// processing does not stop when this process does.
	var extProcServer *extproc.Server
	var counters *rls.Counters
	if o.extProcAddr != "" {
		var rlsOpts rlsclient.Options
		var err error
		if rlsOpts, counters, err = o.charges.clientOptions(logger); err != nil {
			return err
		}
		if counters != nil {
			defer func() { _ = counters.Close() }()
		}
		if extProcServer, err = newExtProcServer(logger, reg, rlsOpts); err != nil {
			return err
		}
	} else if o.charges.redisURL != "" {
		// No ext_proc server here, but --redis names the counters' Redis: status says whether
		// it answers, for the operator of the whole deployment.
		if counters, err = rls.NewCounters(o.charges.redisURL); err != nil {
			return err
		}
		defer func() { _ = counters.Close() }()
	}
	rl := newReloader(o.policyFile, os.LookupEnv, logger.With("component", "reload"), reg, xdsServer, extProcServer)
	if err := rl.apply(ctx, content); err != nil {
		return err
	}

	xdsLis, err := net.Listen("tcp", o.xdsAddr)
	if err != nil {
		return fmt.Errorf("xds listener: %w", err)
	}
	if !o.xdsTLS.Enabled() && !isLoopback(xdsLis.Addr()) {
		logger.Warn("xDS is served in plain text beyond this machine: anyone who reaches it can read the configuration and connect as an Envoy; use --xds-tls-cert, --xds-tls-key and --xds-tls-client-ca",
			"xds", xdsLis.Addr().String())
	}
	var extProcLis net.Listener
	if extProcServer != nil {
		if extProcLis, err = listen(o.extProcAddr); err != nil {
			return fmt.Errorf("ext_proc listener: %w", err)
		}
	}
	metricsLis, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	quotaAdmin, err := listenQuotaAdmin(o.quotaAdmin, extProcServer, func() pageStatus {
		st := xdsServer.Status()
		return pageStatus{Version: buildVersion(), Reload: rl.snapshot(), XDS: &st}
	}, logger)
	if err != nil {
		return err
	}

	xdsGRPC := grpc.NewServer(xdsOptions...)
	xdsServer.Register(xdsGRPC)
	var extProcGRPC *grpc.Server
	if extProcServer != nil {
		extProcGRPC = newExtProcGRPC(extProcServer)
	}

	httpServer := adminServer(reg, o.pprof, func(ctx context.Context) any {
		return serveStatus{Reload: rl.snapshot(), XDS: xdsServer.Status(), Version: buildVersion(), Redis: redisStatusOf(ctx, counters)}
	})

	extProcAt := "none (standalone)"
	if extProcLis != nil {
		extProcAt = extProcLis.Addr().String()
	}
	logger.Info("tollgate serving",
		"policy", o.policyFile, "xds", xdsLis.Addr().String(), "xds_tls", xdsTLSMode(o.xdsTLS), "extproc", extProcAt,
		"metrics", "http://"+metricsLis.Addr().String()+"/metrics", "version", buildVersion())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveGRPC(xdsGRPC, xdsLis, "xds") })
	if extProcGRPC != nil {
		g.Go(func() error { return serveGRPC(extProcGRPC, extProcLis, "ext_proc") })
		g.Go(func() error { extProcServer.Run(gctx); return nil })
	}
	quotaAdmin.run(gctx, g)
	g.Go(func() error { return serveHTTP(httpServer, metricsLis) })
	watchPolicy(gctx, g, o.policyFile, o.debounce, logger, rl)
	g.Go(func() error {
		<-gctx.Done()
		logger.Info("shutting down")
		stopGRPC(xdsGRPC)
		if extProcGRPC != nil {
			stopExtProc(extProcGRPC, extProcServer, logger)
		}
		return shutdownHTTP(httpServer)
	})
	return g.Wait()
}

// serveStatus is the JSON document at /status.
type serveStatus struct {
	Version string       `json:"tollgate_version"`
	Reload  reloadStatus `json:"policy"`
	XDS     xds.Status   `json:"xds"`
	// Redis is the counters' Redis as this process reaches it; absent without --redis.
	Redis *redisStatus `json:"redis,omitempty"`
}

// newExtProcGRPC is the gRPC server of the ext_proc service, in serve or on its own.
func newExtProcGRPC(s *extproc.Server) *grpc.Server {
	// Sized for the largest body any policy may allow, so raising listener.maxRequestBytes on a
	// reload can never let Envoy buffer a body the ext_proc server then refuses to receive.
	g := grpc.NewServer(extproc.ServerOptions(policies.MaxRequestBytes)...)
	s.Register(g)
	return g
}

// xdsTLSMode names the xDS transport for the start-up log.
func xdsTLSMode(f xds.TLSFiles) string {
	switch {
	case f.ClientCAFile != "":
		return "mutual"
	case f.Enabled():
		return "server"
	default:
		return "off"
	}
}

// isLoopback reports whether a listener accepts connections from this machine only.
func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

func serveGRPC(s *grpc.Server, lis net.Listener, name string) error {
	if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("%s server: %w", name, err)
	}
	return nil
}

// stopGRPC stops gracefully, but not forever: ADS and ext_proc streams stay open as long as
// Envoy is connected, so a graceful stop alone would wait for Envoy to go away.
func stopGRPC(s *grpc.Server) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		s.Stop()
		<-done
	}
}

// chargeFlushTimeout bounds how long a stopping ext_proc server keeps sending the charges of
// requests that ended on the way down.
const chargeFlushTimeout = 5 * time.Second

// stopExtProc stops the ext_proc service, then sends the charges its last requests queued, so
// a clean stop loses no charge.
func stopExtProc(g *grpc.Server, s *extproc.Server, logger *slog.Logger) {
	stopGRPC(g)
	ctx, cancel := context.WithTimeout(context.Background(), chargeFlushTimeout)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		logger.Error("stopping the ext_proc server", "error", err)
	}
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("bad --log-format %q (text or json)", format)
	}
}
