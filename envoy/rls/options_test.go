package rls

import (
	"reflect"
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
	if !reflect.DeepEqual(cfg.redis, redisTarget{Addr: "127.0.0.1:6379"}) || cfg.logLevel != logrus.InfoLevel {
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
		{"redis query", Options{RedisURL: "redis://127.0.0.1?timeout=1s"}, []string{"RedisURL", `URL option "timeout" is not one of`}},
		{"redis CA missing", Options{RedisURL: "rediss://127.0.0.1?ca=/nonexistent/ca.pem"}, []string{"RedisURL: Redis TLS CA", "/nonexistent/ca.pem"}},
		{"redis CA not PEM", Options{RedisURL: "rediss://127.0.0.1?ca=/dev/null"}, []string{"RedisURL: Redis TLS CA: /dev/null holds no PEM certificate"}},
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
		{"rediss://:s3cret@cache:6380?ca=/etc/ca.pem", redisTarget{Addr: "cache:6380", Auth: "s3cret", TLS: true, CAFile: "/etc/ca.pem"}},
		{"redis+cluster://a:7000,b,[::1]:7002", redisTarget{Topology: topologyCluster, Addrs: []string{"a:7000", "b:6379", "[::1]:7002"}}},
		{"rediss+cluster://app:p%2Fw@a:7000,b:7001/0?ca=ca.pem", redisTarget{
			Topology: topologyCluster, Addrs: []string{"a:7000", "b:7001"}, Auth: "app:p/w", TLS: true, CAFile: "ca.pem"}},
		{"redis+sentinel://:s3cret@s1,s2:5000/mymaster?sentinel_password=other", redisTarget{
			Topology: topologySentinel, Addrs: []string{"s1:26379", "s2:5000"}, Master: "mymaster", Auth: "s3cret", SentinelAuth: "other"}},
		{"rediss+sentinel://s1:26380/tollgate", redisTarget{Topology: topologySentinel, Addrs: []string{"s1:26380"}, Master: "tollgate", TLS: true}},
	}
	for _, tt := range tests {
		got, err := parseRedisURL(tt.in)
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
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
		"redis://:hunter2@cache?ca=/ca.pem",
		"redis+cluster://:hunter2@",
		"redis+cluster://:hunter2@a:1,a:1",
		"redis+cluster://:hunter2@a:1,,b:2",
		"redis+cluster://:hunter2@a:99999",
		"redis+cluster://:hunter2@a:1/3",
		"redis+cluster://:hunter2@a:1?sentinel_password=hunter2",
		"redis+sentinel://:hunter2@s1:1",
		"redis+sentinel://:hunter2@s1:1/a/b",
		"redis+sentinel://:hunter2@s1:1/m?sentinel_password=",
		"redis+sentinel://:hunter2@s1:1/m?sentinel_password=hunter2&sentinel_password=hunter2",
		"rediss+sentinel://:hunter2@s1:1/m?ca=",
		"redis+sentinel://:hunter2@s1:1/m?tls=hunter2",
		"redis+sentinel://:hunter2@s1:1/m#hunter2",
		"redis+sentinel://hunter2@s1:1/m",
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

func TestBuildSettingsForEachTopology(t *testing.T) {
	tests := []struct {
		url, redisType, redisURL, sentinelAuth string
	}{
		{"redis+cluster://:pw@a:7000,b:7001", "CLUSTER", "a:7000,b:7001", ""},
		{"redis+sentinel://:pw@s1:26379,s2:26380/primary?sentinel_password=spw", "SENTINEL", "primary,s1:26379,s2:26380", "spw"},
	}
	for _, tt := range tests {
		cfg, err := Options{RedisURL: tt.url}.resolve()
		if err != nil {
			t.Fatal(err)
		}
		s, err := buildSettings(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if s.RedisType != tt.redisType || s.RedisUrl != tt.redisURL || s.RedisAuth != "pw" || s.RedisSentinelAuth != tt.sentinelAuth || s.RedisSocketType != "tcp" {
			t.Errorf("%s: REDIS_TYPE %q REDIS_URL %q REDIS_AUTH %q REDIS_SENTINEL_AUTH %q socket %q", tt.url,
				s.RedisType, s.RedisUrl, s.RedisAuth, s.RedisSentinelAuth, s.RedisSocketType)
		}
	}
}

func TestRedisTargetDescriptionsHoldNoSecret(t *testing.T) {
	for url, want := range map[string]string{
		"redis://:hunter2@cache:6380":                          "Redis at cache:6380",
		"rediss+cluster://:hunter2@a:1,b:2":                    "Redis Cluster at a:1, b:2 (TLS)",
		"redis+sentinel://:hunter2@s:1/m?sentinel_password=x2": `Redis primary "m" via sentinels s:1`,
	} {
		target, err := parseRedisURL(url)
		if err != nil {
			t.Fatal(err)
		}
		if got := target.String(); got != want {
			t.Errorf("%s described as %q, want %q", url, got, want)
		}
	}
}
