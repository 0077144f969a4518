// Package rls runs the upstream envoyproxy/ratelimit service, unmodified, as tollgate's
// rate limit service, and reads remaining quota back from it.
//
// The service keeps the token counters in Redis and takes its limits over xDS from
// tollgate's ADS server (RateLimitConfig resources published under its own node id), so a
// policy change reaches it without a restart. Check asks the same service, with a hits
// addend of 0, how much of a window is left: there is no second copy of the counters.
package rls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/envoyproxy/ratelimit/src/settings"
	"github.com/tollgate-dev/tollgate/envoy/launch"
)

const (
	// startTimeout bounds the wait for the service's HTTP and gRPC ports. Starting includes
	// opening the Redis pool, which the upstream code gives REDIS_TIMEOUT (10s by default).
	startTimeout = 30 * time.Second
	// stopTimeout bounds a stop. The upstream xDS client blocks its Stop while it is still
	// dialling an ADS server that never answered; Run must return anyway.
	stopTimeout = 10 * time.Second
)

// Run starts the ratelimit service and blocks until ctx is done (then stops it) or the
// service fails. It returns nil after a stop asked for by ctx.
//
// Everything the upstream runner would answer with an exit of the process is checked first
// and returned as an error: Options (every problem at once), Redis reachability (retried for
// RedisWait) and whether each listen address can be bound.
//
// Process-wide state, all owned by the upstream code: it logs through logrus' standard logger
// (Run points it at logger and turns its Fatal calls into errors); it installs handlers for
// SIGINT, SIGTERM and SIGHUP that stop the service and exit the process with status 0; with
// MetricsAddr set it registers /metrics on http.DefaultServeMux and the default Prometheus
// registry, so metrics can be enabled by one Run per process only. Environment variables the
// upstream service reads (REDIS_POOL_SIZE, REDIS_TIMEOUT, REDIS_TLS_CACERT, TRACING_*,
// LIMIT_RESPONSE_HEADERS_ENABLED, ...) still apply to anything Options does not set.
func Run(ctx context.Context, logger *slog.Logger, opts Options) error {
	return run(ctx, logger, opts, nil)
}

// run is Run with a hook to adjust the upstream settings (tests shorten the stats flush).
func run(ctx context.Context, logger *slog.Logger, opts Options, adjust func(*settings.Settings)) error {
	if logger == nil {
		logger = slog.Default()
	}
	cfg, err := opts.resolve()
	if err != nil {
		return fmt.Errorf("ratelimit options: %w", err)
	}
	s, err := buildSettings(cfg)
	if err != nil {
		return err
	}
	if adjust != nil {
		adjust(&s)
	}
	if err := waitForRedis(ctx, cfg.redis, cfg.redisTLS, cfg.RedisWait); err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop before the service started
		}
		return err
	}
	if err := checkListenable(cfg); err != nil {
		return err
	}

	bridge := installLogBridge(logger, cfg.logLevel)
	r, err := newRunner(s, opts.Local, logger, cfg.redis)
	if err != nil {
		return err
	}
	stopped := make(chan error, 1)
	go func() {
		var crash error
		defer func() {
			// A Fatal log call ends this goroutine through runtime.Goexit; recover then
			// returns nil and the bridge holds the reason.
			if p := recover(); p != nil {
				crash = fmt.Errorf("ratelimit service crashed: %v", p)
			}
			stopped <- crash
		}()
		r.run()
	}()

	if err := waitServing(cfg, stopped, bridge); err != nil {
		stopRunner(logger, r, stopped)
		return err
	}
	logger.Info("ratelimit service started",
		"grpc", cfg.GRPCAddr, "http", cfg.HTTPAddr, "debug", cfg.DebugAddr, "metrics", cfg.MetricsAddr,
		"xds", cfg.XDSAddr, "xds_tls", cfg.XDSTLS.Enabled(), "node", cfg.NodeID, "redis", cfg.redis.String())

	select {
	case <-ctx.Done():
		stopRunner(logger, r, stopped)
		logger.Info("ratelimit service stopped")
		return nil
	case err := <-stopped:
		if ferr := bridge.fatalError(); ferr != nil {
			err = ferr
		}
		if err == nil {
			err = errors.New("ratelimit service stopped unexpectedly")
		}
		stopped <- err // let stopRunner see the runner is done
		stopRunner(logger, r, stopped)
		return err
	case <-bridge.failed:
		stopRunner(logger, r, stopped)
		return bridge.fatalError()
	}
}

// buildSettings reads the upstream settings from the environment, as the upstream binary
// does, then overrides everything tollgate owns.
func buildSettings(cfg config) (s settings.Settings, err error) {
	defer func() {
		// NewSettings panics on an environment variable it cannot parse.
		if p := recover(); p != nil {
			err = fmt.Errorf("ratelimit settings from the environment: %v", p)
		}
	}()
	s = settings.NewSettings()

	s.Host, s.Port = mustHostPort(cfg.HTTPAddr)
	s.GrpcHost, s.GrpcPort = mustHostPort(cfg.GRPCAddr)
	s.GrpcUds = ""
	s.DebugHost, s.DebugPort = mustHostPort(cfg.DebugAddr)
	s.LogLevel = cfg.logLevel.String()

	s.ConfigType = "GRPC_XDS_SOTW"
	s.ConfigGrpcXdsServerUrl = cfg.XDSAddr
	s.ConfigGrpcXdsNodeId = cfg.NodeID
	// Serve (with errors until then) before the first config arrives, so a control plane
	// that starts later does not block the service's start.
	s.ForceStartWithoutInitialConfig = true
	if cfg.XDSTLS.Enabled() {
		tlsConfig, err := cfg.XDSTLS.clientConfig()
		if err != nil {
			return s, err
		}
		// Set the finished configuration rather than the upstream file settings, whose loader
		// panics on a bad file and trusts the system roots as well as the given CA.
		s.ConfigGrpcXdsServerUseTls = true
		s.ConfigGrpcXdsTlsConfig = tlsConfig
		s.ConfigGrpcXdsServerTlsSAN = cfg.XDSTLS.ServerName
		s.ConfigGrpcXdsClientTlsCert, s.ConfigGrpcXdsClientTlsKey = cfg.XDSTLS.CertFile, cfg.XDSTLS.KeyFile
		s.ConfigGrpcXdsServerTlsCACert = cfg.XDSTLS.CAFile
	}

	s.BackendType = "redis"
	s.RedisSocketType = cfg.redis.network()
	s.RedisType = cfg.redis.upstreamType()
	s.RedisUrl = cfg.redis.upstreamURL()
	s.RedisAuth = cfg.redis.Auth
	s.RedisSentinelAuth = cfg.redis.SentinelAuth
	s.RedisTls = cfg.redis.TLS
	// The finished TLS configuration rather than the upstream one from REDIS_TLS_* files,
	// whose loader panics on a bad file; tollgate's own connections use the same.
	s.RedisTlsConfig = cfg.redisTLS
	if s.RedisTlsConfig == nil {
		s.RedisTlsConfig = &tls.Config{}
	}
	s.RedisPerSecond = false

	// The local cache remembers over-limit keys for a whole window, so a raised limit
	// would not apply until the window ends.
	s.LocalCacheSizeInBytes = 0
	// tollgate sends the charges of many users in one call; with this on, one over-limit key
	// in a call would keep every other charge in it from counting.
	s.StopCacheKeyIncrementWhenOverlimit = false

	// One stats sink at most, or the runner exits. Without metrics, stats are off rather
	// than the upstream default (statsd on localhost:8125, or log lines every 10s).
	s.UseStatsd = false
	s.UseDogStatsd = false
	s.UsePrometheus = cfg.MetricsAddr != ""
	s.PrometheusAddr = cfg.MetricsAddr
	s.PrometheusPath = "/metrics"
	s.DisableStats = cfg.MetricsAddr == ""
	return s, nil
}

// mustHostPort splits an address resolve has already validated.
func mustHostPort(addr string) (string, int) {
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return host, n
}

// checkListenable binds and releases each listen address. The upstream server exits the
// process when it cannot listen (and its metrics listener fails silently), so a port in use
// is reported here. A port taken in the moment between this check and the service's own
// listen still ends Run with an error, through the log bridge.
func checkListenable(cfg config) error {
	addrs := []struct{ field, addr string }{
		{"GRPCAddr", cfg.GRPCAddr},
		{"HTTPAddr", cfg.HTTPAddr},
		{"DebugAddr", cfg.DebugAddr},
	}
	if cfg.MetricsAddr != "" {
		addrs = append(addrs, struct{ field, addr string }{"MetricsAddr", cfg.MetricsAddr})
	}
	var errs []error
	for _, a := range addrs {
		l, err := net.Listen("tcp", a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("ratelimit %s %s: %w", a.field, a.addr, err))
			continue
		}
		_ = l.Close()
	}
	return errors.Join(errs...)
}

// waitServing polls until the service's HTTP health endpoint answers at all (a 500 before
// the first config is still an answer) and its gRPC port accepts connections, the runner
// ends, or startTimeout passes. The upstream server opens its gRPC listener in a goroutine
// of its own, so the HTTP answer alone does not mean Envoy can connect yet.
func waitServing(cfg config, stopped chan error, bridge *logBridge) error {
	url := "http://" + launch.DialAddr(cfg.HTTPAddr) + "/healthcheck"
	client := &http.Client{Timeout: time.Second}
	deadline := time.After(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := client.Get(url); err == nil {
			_ = resp.Body.Close()
			if conn, err := net.DialTimeout("tcp", launch.DialAddr(cfg.GRPCAddr), time.Second); err == nil {
				_ = conn.Close()
				return nil
			}
		}
		select {
		case err := <-stopped:
			if ferr := bridge.fatalError(); ferr != nil {
				err = ferr
			}
			if err == nil {
				err = errors.New("ratelimit service stopped while starting")
			}
			stopped <- err
			return err
		case <-bridge.failed:
			return bridge.fatalError()
		case <-deadline:
			return fmt.Errorf("ratelimit service did not answer on %s and %s within %s", cfg.HTTPAddr, cfg.GRPCAddr, startTimeout)
		case <-tick.C:
		}
	}
}

// stopRunner stops the runner and waits, at most stopTimeout, for it to finish.
func stopRunner(logger *slog.Logger, r *runner, stopped chan error) {
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		r.stop()
	}()
	timeout := time.After(stopTimeout)
	// A nil channel blocks forever, so each case fires once.
	runEnded, stopEnded := (<-chan error)(stopped), (<-chan struct{})(finished)
	for runEnded != nil || stopEnded != nil {
		select {
		case err := <-runEnded:
			_ = err // only that it ended matters here: the caller has dealt with how
			runEnded = nil
		case <-stopEnded:
			stopEnded = nil
		case <-timeout:
			logger.Warn("ratelimit service did not stop within the timeout; leaving it behind", "timeout", stopTimeout)
			return
		}
	}
}
