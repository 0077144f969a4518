package main

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rls"
)

// ratelimitCommand runs the upstream envoyproxy/ratelimit service, unmodified, with its limits
// served by `tollgate serve` over xDS and its counters in Redis.
func ratelimitCommand(args []string, _, stderr io.Writer) int {
	fs := newFlags("ratelimit", stderr)
	var o rls.Options
	fs.StringVar(&o.GRPCAddr, "grpc", rls.DefaultGRPCAddr, "listen address of the rate limit gRPC service Envoy calls")
	fs.StringVar(&o.HTTPAddr, "http", rls.DefaultHTTPAddr, "listen address of the service's /healthcheck and /json API")
	fs.StringVar(&o.DebugAddr, "debug", rls.DefaultDebugAddr, "listen address of the service's debug port (/rlconfig, /stats, pprof)")
	fs.StringVar(&o.MetricsAddr, "metrics", "", "listen address of the service's Prometheus /metrics (empty: off)")
	fs.StringVar(&o.XDSAddr, "xds", envoy.DefaultXDSAddress, "tollgate's ADS server, where the limits come from")
	fs.StringVar(&o.NodeID, "node-id", envoy.DefaultRateLimitNode, "xDS node id (must match tollgate serve --ratelimit-node-id)")
	fs.StringVar(&o.RedisURL, "redis", envOr("REDIS_URL", rls.DefaultRedisURL), "Redis: "+redisURLForms+" (env REDIS_URL)")
	fs.DurationVar(&o.RedisWait, "redis-wait", rls.DefaultRedisWait, "keep trying to reach Redis this long at start")
	fs.StringVar(&o.LogLevel, "log-level", rls.DefaultLogLevel, "trace, debug, info, warn or error")
	t := &o.XDSTLS
	xdsClientTLSFlags(fs, &t.CAFile, &t.CertFile, &t.KeyFile, &t.ServerName, "the service presents")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	return runUntilSignal("ratelimit", stderr, "debug", "text", func(ctx context.Context, logger *slog.Logger) error {
		return rls.Run(ctx, logger.With("component", "ratelimit"), o)
	})
}

func envOr(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return fallback
}
