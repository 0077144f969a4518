package rls

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/envoyproxy/ratelimit/src/limiter"
	"github.com/envoyproxy/ratelimit/src/metrics"
	"github.com/envoyproxy/ratelimit/src/redis"
	"github.com/envoyproxy/ratelimit/src/server"
	ratelimit "github.com/envoyproxy/ratelimit/src/service"
	"github.com/envoyproxy/ratelimit/src/settings"
	"github.com/envoyproxy/ratelimit/src/stats"
	"github.com/envoyproxy/ratelimit/src/stats/prom"
	"github.com/envoyproxy/ratelimit/src/trace"
	"github.com/envoyproxy/ratelimit/src/utils"
	gostats "github.com/lyft/gostats"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// runner assembles the upstream service from the upstream packages — its server (gRPC,
// health, debug and the xDS config provider), its Redis limiter and cache keys, and its
// ShouldRateLimit service — as the upstream runner does for the settings tollgate uses (the
// Redis backend; statistics off or to Prometheus). It exists because the upstream runner
// keeps the service to itself: here it is also handed to a Local, so that a quota check made
// in this process calls it directly instead of over loopback gRPC.
type runner struct {
	settings     settings.Settings
	statsManager stats.Manager
	local        *Local
	logger       *slog.Logger
	redis        redisTarget

	mu     sync.Mutex
	srv    server.Server
	closer io.Closer
}

// newRunner builds the runner and its stats store. A Prometheus sink registers its handler on
// http.DefaultServeMux: a second one in one process panics, which is returned as an error.
func newRunner(s settings.Settings, local *Local, logger *slog.Logger, redisTarget redisTarget) (r *runner, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("starting the ratelimit service (metrics can be enabled once per process): %v", p)
		}
	}()
	var store gostats.Store
	if s.DisableStats {
		store = gostats.NewStore(gostats.NewNullSink(), false)
	} else {
		store = gostats.NewStore(prom.NewPrometheusSink(prom.WithAddr(s.PrometheusAddr),
			prom.WithPath(s.PrometheusPath), prom.WithMapperYamlPath(s.PrometheusMapperYaml)), false)
	}
	go store.Start(time.NewTicker(s.StatsFlushInterval))
	return &runner{settings: s, statsManager: stats.NewStatManager(store, s), local: local, logger: logger, redis: redisTarget}, nil
}

// run serves until stop; the upstream code ends it with a logged Fatal when it cannot.
func (r *runner) run() {
	s := r.settings
	if s.TracingEnabled {
		tp := trace.InitProductionTraceProvider(s.TracingExporterProtocol, s.TracingServiceName, s.TracingServiceNamespace, s.TracingServiceInstanceId, s.TracingSamplingRate)
		defer func() { _ = tp.Shutdown(context.Background()) }()
	}
	if level, err := logrus.ParseLevel(s.LogLevel); err == nil {
		logrus.SetLevel(level)
	}

	reporter := metrics.NewServerReporter(r.statsManager.GetStatsStore().ScopeWithTags("ratelimit_server", s.ExtraTags))
	srv := server.NewServer(s, "ratelimit", r.statsManager, nil, settings.GrpcUnaryInterceptor(reporter.UnaryServerInterceptor()))
	limiter, closer := r.newLimiter(srv)
	r.mu.Lock()
	r.srv, r.closer = srv, closer
	r.mu.Unlock()

	svc := ratelimit.NewService(limiter, srv.Provider(), r.statsManager, srv.HealthChecker(),
		utils.NewTimeSourceImpl(), s.GlobalShadowMode, s.ForceStartWithoutInitialConfig, s.HealthyWithAtLeastOneConfigLoaded)
	srv.AddDebugHttpEndpoint("/rlconfig", "print out the currently loaded configuration for debugging",
		func(w http.ResponseWriter, _ *http.Request) {
			if current, _, _ := svc.GetCurrentConfig(); current != nil {
				_, _ = io.WriteString(w, current.Dump())
			}
		})
	srv.AddJsonHandler(svc)
	rlsv3.RegisterRateLimitServiceServer(srv.GrpcServer(), svc)
	if r.local != nil {
		r.local.attach(svc)
		defer r.local.attach(nil)
	}
	srv.Start()
}

// newLimiter is the upstream Redis limiter, as the upstream runner makes it. On a Redis
// Cluster its client is replaced whenever the slots move to other primaries (see
// followedCluster): the same upstream client and cache, made anew.
func (r *runner) newLimiter(srv server.Server) (limiter.RateLimitCache, io.Closer) {
	s := r.settings
	timeSource := utils.NewTimeSourceImpl()
	jitter := rand.New(utils.NewLockedSource(time.Now().Unix()))
	if r.redis.Topology != topologyCluster {
		return redis.NewRateLimiterCacheImplFromSettings(s, nil, srv, timeSource, jitter, s.ExpirationJitterMaxSeconds, r.statsManager)
	}
	scope := srv.Scope().Scope("redis_pool")
	dial := func() (client redis.Client, err error) {
		defer func() {
			// The upstream client panics when it cannot connect.
			if p := recover(); p != nil {
				err = fmt.Errorf("%v", p)
			}
		}()
		return redis.NewClientImpl(scope, s.RedisTls, s.RedisAuth, s.RedisSocketType, s.RedisType, s.RedisUrl, s.RedisPoolSize,
			s.RedisPipelineWindow, s.RedisPipelineLimit, s.RedisTlsConfig, s.RedisHealthCheckActiveConnection, srv, s.RedisTimeout,
			s.RedisPoolOnEmptyBehavior, s.RedisSentinelAuth), nil
	}
	var tlsConfig *tls.Config // the slot map is read with the same TLS and AUTH
	if s.RedisTls {
		tlsConfig = s.RedisTlsConfig
	}
	f, err := followCluster(r.logger, r.redis.String(), dialer(r.redis.Auth, tlsConfig), r.redis.Addrs, dial)
	if err != nil {
		// Ends the service with this reason (see installLogBridge).
		logrus.Fatalf("connecting to redis: %v", err)
	}
	client := followingCacheClient{f}
	return redis.NewFixedRateLimitCacheImpl(client, nil, timeSource, jitter, s.ExpirationJitterMaxSeconds, nil,
		s.NearLimitRatio, s.CacheKeyPrefix, r.statsManager, s.StopCacheKeyIncrementWhenOverlimit), client
}

// followingCacheClient is the upstream cache's Redis client for a Cluster, following the
// slots to their new primaries.
type followingCacheClient struct{ *followedCluster[redis.Client] }

func (c followingCacheClient) DoCmd(rcv any, cmd, key string, args ...any) error {
	return c.client().DoCmd(rcv, cmd, key, args...)
}

func (c followingCacheClient) PipeAppend(p redis.Pipeline, rcv any, cmd, key string, args ...any) redis.Pipeline {
	return c.client().PipeAppend(p, rcv, cmd, key, args...)
}

func (c followingCacheClient) PipeDo(p redis.Pipeline) error { return c.client().PipeDo(p) }

func (c followingCacheClient) NumActiveConns() int { return c.client().NumActiveConns() }

// stop stops the server and closes the Redis pool.
func (r *runner) stop() {
	r.mu.Lock()
	srv, closer := r.srv, r.closer
	r.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
	if closer != nil {
		_ = closer.Close()
	}
}

// Local is the ratelimit service run by Run in this process, called directly: the same
// service, limits, Redis counters and cache keys that answer over gRPC, without encoding a
// request, a loopback round trip and a second process's wake-up. Set Options.Local to one
// and give it to the quota client, which calls it for the addresses it Serves.
type Local struct {
	host, port string
	svc        atomic.Pointer[rlsv3.RateLimitServiceServer]
}

// NewLocal returns a Local for a service that listens for gRPC on grpcAddr (its Options
// GRPCAddr): quota checks aimed at that address are the ones it answers.
func NewLocal(grpcAddr string) *Local {
	// A service on every interface is the one a loopback address reaches.
	host, port, _ := net.SplitHostPort(launch.DialAddr(grpcAddr))
	return &Local{host: host, port: port}
}

// Serves reports whether target, a host:port a client would dial, reaches this service: the
// same port, on the host it listens on, or on loopback when it listens on loopback or on
// every interface.
func (l *Local) Serves(target string) bool {
	host, port, err := net.SplitHostPort(target)
	if err != nil || port != l.port {
		return false
	}
	return host == l.host || isLoopback(host) && isLoopback(l.host)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (l *Local) attach(svc rlsv3.RateLimitServiceServer) {
	if svc == nil {
		l.svc.Store(nil)
		return
	}
	l.svc.Store(&svc)
}

// ShouldRateLimit asks the service, as its gRPC method would. Until the service runs (and
// after it stopped) it answers Unavailable, as a gRPC client would be.
func (l *Local) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	svc := l.svc.Load()
	if svc == nil {
		return nil, status.Error(codes.Unavailable, "the ratelimit service in this process is not running")
	}
	return (*svc).ShouldRateLimit(ctx, req)
}
