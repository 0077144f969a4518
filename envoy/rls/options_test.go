package rls

import (
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tollgate-dev/tollgate/envoy"
)

func TestOptionsDefaults(t *testing.T) {
	cfg, err := Options{}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	want := Options{
		GRPCAddr:  "127.0.0.1:8081",
		DebugAddr: "127.0.0.1:6070",
		HTTPAddr:  "127.0.0.1:8082",
		XDSAddr:   envoy.DefaultXDSAddress,
		NodeID:    envoy.DefaultRateLimitNode,
		RedisURL:  "127.0.0.1:6379",
		RedisWait: 10 * time.Second,
		LogLevel:  "info",
	}
	if cfg.Options != want {
		t.Errorf("defaults = %+v\nwant       %+v", cfg.Options, want)
	}
	if cfg.redis != (redisTarget{Addr: "127.0.0.1:6379"}) || cfg.logLevel != logrus.InfoLevel {
		t.Errorf("resolved redis %+v level %v", cfg.redis, cfg.logLevel)
	}
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string // every fragment must appear in the error
	}{
		{"address without port", Options{GRPCAddr: "127.0.0.1"}, []string{`GRPCAddr: "127.0.0.1" is not host:port`}},
		{"port zero", Options{HTTPAddr: "127.0.0.1:0"}, []string{"HTTPAddr", "1 to 65535"}},
		{"port too big", Options{DebugAddr: "127.0.0.1:70000"}, []string{"DebugAddr", "1 to 65535"}},
		{"shared port", Options{HTTPAddr: "127.0.0.1:8081"}, []string{"HTTPAddr: port 8081 is already used by GRPCAddr"}},
		{"metrics on a service port", Options{MetricsAddr: "127.0.0.1:6070"}, []string{"MetricsAddr: port 6070 is already used by DebugAddr"}},
		{"bad xds address", Options{XDSAddr: "tollgate"}, []string{"XDSAddr"}},
		{"blank node", Options{NodeID: "  "}, []string{"NodeID: must not be blank"}},
		{"negative wait", Options{RedisWait: -time.Second}, []string{"RedisWait: must not be negative"}},
		{"unknown log level", Options{LogLevel: "verbose"}, []string{`LogLevel: "verbose" is not one of`}},
		{"fatal is no level to run with", Options{LogLevel: "fatal"}, []string{"LogLevel"}},
		{"redis scheme", Options{RedisURL: "http://127.0.0.1:6379"}, []string{`RedisURL: scheme "http"`}},
		{"redis database", Options{RedisURL: "redis://127.0.0.1:6379/2"}, []string{"RedisURL", "database 0"}},
		{"redis query", Options{RedisURL: "redis://127.0.0.1?timeout=1s"}, []string{"RedisURL", "query"}},
		{"redis no host", Options{RedisURL: "redis://:6379"}, []string{"RedisURL: URL names no host"}},
		{"redis bare host", Options{RedisURL: "localhost"}, []string{"RedisURL: want host:port"}},
		{"all at once", Options{GRPCAddr: "x", HTTPAddr: "y", LogLevel: "z"}, []string{"GRPCAddr", "HTTPAddr", "LogLevel"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.opts.resolve()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseRedisURL(t *testing.T) {
	tests := []struct {
		in   string
		want redisTarget
	}{
		{"10.0.0.5:6380", redisTarget{Addr: "10.0.0.5:6380"}},
		{"redis://cache.internal", redisTarget{Addr: "cache.internal:6379"}},
		{"redis://cache.internal:7000/0", redisTarget{Addr: "cache.internal:7000"}},
		{"redis://:s3cret@cache:7000", redisTarget{Addr: "cache:7000", Auth: "s3cret"}},
		{"redis://app:s3cret@cache", redisTarget{Addr: "cache:6379", Auth: "app:s3cret"}},
		{"redis://:pa:ss@cache", redisTarget{Addr: "cache:6379", Auth: "default:pa:ss"}},
		{"redis://:p%40ss@cache", redisTarget{Addr: "cache:6379", Auth: "p@ss"}},
		{"rediss://cache:6380", redisTarget{Addr: "cache:6380", TLS: true}},
		{"redis://[::1]:6379", redisTarget{Addr: "[::1]:6379"}},
		{"unix:///run/redis/redis.sock", redisTarget{Network: "unix", Addr: "/run/redis/redis.sock"}},
		{"unix://:s3cret@/run/redis/redis.sock", redisTarget{Network: "unix", Addr: "/run/redis/redis.sock", Auth: "s3cret"}},
	}
	for _, tt := range tests {
		got, err := parseRedisURL(tt.in)
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseRedisURLErrorsHideSecrets(t *testing.T) {
	for _, in := range []string{
		"redis://:hunter2@cache/5",
		"redis://hunter2@cache",
		"redis://:hunter2@cache?x=1",
		"redis://:hunter2@cache:99999",
		"rediz://:hunter2@cache",
		"unix://:hunter2@cache/redis.sock",
		"unix://:hunter2@",
		"unix://:hunter2@/redis.sock?x=1",
	} {
		_, err := parseRedisURL(in)
		if err == nil {
			t.Errorf("%s accepted", in)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error for %s shows the password: %v", in, err)
		}
	}
}

func TestBuildSettings(t *testing.T) {
	// Settings tollgate pins win over the upstream environment variables.
	t.Setenv("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true")
	cfg, err := Options{
		GRPCAddr:    "127.0.0.1:9001",
		HTTPAddr:    "127.0.0.1:9002",
		DebugAddr:   "127.0.0.1:9003",
		MetricsAddr: "127.0.0.1:9004",
		XDSAddr:     "127.0.0.1:9005",
		NodeID:      "rl-node",
		RedisURL:    "rediss://app:pw@cache:6380",
		LogLevel:    "warn",
	}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	s, err := buildSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"GrpcHost", s.GrpcHost, "127.0.0.1"}, {"GrpcPort", s.GrpcPort, 9001},
		{"Host", s.Host, "127.0.0.1"}, {"Port", s.Port, 9002},
		{"DebugHost", s.DebugHost, "127.0.0.1"}, {"DebugPort", s.DebugPort, 9003},
		{"ConfigType", s.ConfigType, "GRPC_XDS_SOTW"},
		{"ConfigGrpcXdsServerUrl", s.ConfigGrpcXdsServerUrl, "127.0.0.1:9005"},
		{"ConfigGrpcXdsNodeId", s.ConfigGrpcXdsNodeId, "rl-node"},
		{"ForceStartWithoutInitialConfig", s.ForceStartWithoutInitialConfig, true},
		{"BackendType", s.BackendType, "redis"},
		{"RedisSocketType", s.RedisSocketType, "tcp"},
		{"RedisType", s.RedisType, "SINGLE"},
		{"RedisUrl", s.RedisUrl, "cache:6380"},
		{"RedisAuth", s.RedisAuth, "app:pw"},
		{"RedisTls", s.RedisTls, true},
		{"RedisTlsConfig set", s.RedisTlsConfig != nil, true},
		{"LocalCacheSizeInBytes", s.LocalCacheSizeInBytes, 0},
		{"StopCacheKeyIncrementWhenOverlimit", s.StopCacheKeyIncrementWhenOverlimit, false},
		{"UseStatsd", s.UseStatsd, false},
		{"UsePrometheus", s.UsePrometheus, true},
		{"PrometheusAddr", s.PrometheusAddr, "127.0.0.1:9004"},
		{"DisableStats", s.DisableStats, false},
		{"LogLevel", s.LogLevel, "warning"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	cfg.MetricsAddr = ""
	s, err = buildSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.UsePrometheus || !s.DisableStats {
		t.Errorf("without MetricsAddr: UsePrometheus=%v DisableStats=%v, want stats off", s.UsePrometheus, s.DisableStats)
	}
}
