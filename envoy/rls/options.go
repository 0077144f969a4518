package rls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Defaults for Options. Every listener defaults to loopback: the service's debug port serves
// pprof and its config dump, and nothing tollgate runs binds all interfaces unless told to.
const (
	DefaultGRPCAddr  = "127.0.0.1:8081"
	DefaultDebugAddr = "127.0.0.1:6070"
	// DefaultHTTPAddr is not the upstream default 8080, which is Envoy's listener.
	DefaultHTTPAddr  = "127.0.0.1:8082"
	DefaultRedisURL  = "127.0.0.1:6379"
	DefaultLogLevel  = "info"
	DefaultRedisWait = 10 * time.Second
)

// defaultRedisPort completes redis:// URLs that name no port, as Redis clients do.
const defaultRedisPort = "6379"

// Options configures the ratelimit service. The zero value of every field means its default.
type Options struct {
	// GRPCAddr is where Envoy calls ShouldRateLimit.
	GRPCAddr string
	// DebugAddr is the service's debug HTTP port (pprof, /rlconfig, /stats).
	DebugAddr string
	// HTTPAddr is the service's HTTP port: /healthcheck and the /json API.
	HTTPAddr string
	// XDSAddr is tollgate's ADS server, the source of the service's limits.
	XDSAddr string
	// NodeID is the node id the service presents to the ADS server; tollgate publishes the
	// RateLimitConfig resources under it.
	NodeID string
	// RedisURL is the counters' Redis:
	//   - one node: host:port, redis://[user:password@]host[:port][/0], or
	//     unix:///path/to/redis.sock for a Redis on this host;
	//   - a Redis Cluster: redis+cluster://[user:password@]host:port,host:port,… (its seeds);
	//   - a primary guarded by Sentinel: redis+sentinel://[user:password@]host:port,…/MASTER,
	//     naming the sentinels and the primary's name, with ?sentinel_password=… when the
	//     sentinels themselves require one.
	// The rediss variants (rediss://, rediss+cluster://, rediss+sentinel://) use TLS, verified
	// against the system roots, or the CA in ?ca=/path/ca.pem (default: REDIS_TLS_CACERT).
	RedisURL string
	// RedisWait is how long Run keeps retrying to reach Redis before giving up, so a Redis
	// that starts a moment later (compose, systemd) does not fail the start.
	RedisWait time.Duration
	// LogLevel is one of trace, debug, info, warn, error.
	LogLevel string
	// MetricsAddr, when set, serves Prometheus metrics on http://MetricsAddr/metrics.
	// Empty turns statistics off.
	MetricsAddr string
	// XDSTLS, when set, makes the service reach the ADS server over TLS 1.3. Unset, the
	// upstream CONFIG_GRPC_XDS_* environment variables still apply.
	XDSTLS XDSTLS
	// Local, when set, is given the running service, for quota checks in this process to
	// call it directly (see Local).
	Local *Local
}

// XDSTLS names the PEM files of the service's TLS connection to tollgate's ADS server.
type XDSTLS struct {
	// CAFile holds the CA certificates the ADS server's certificate must chain to; only these
	// are trusted. Required whenever TLS is on.
	CAFile string
	// CertFile and KeyFile are the service's client certificate and key, for an ADS server
	// that requires mutual TLS. Both or neither.
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must carry. Default: the host of
	// XDSAddr.
	ServerName string
}

// Enabled reports whether any TLS setting is given.
func (t XDSTLS) Enabled() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// validate refuses a half-configured set.
func (t XDSTLS) validate() error {
	if !t.Enabled() {
		return nil
	}
	var errs []error
	if t.CAFile == "" {
		errs = append(errs, errors.New("a CA file is required to verify the ADS server"))
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("client certificate and key go together: give both or neither"))
	}
	return errors.Join(errs...)
}

// clientConfig loads the files into the TLS configuration of the service's xDS client.
func (t XDSTLS) clientConfig() (*tls.Config, error) {
	caPEM, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("xDS TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("xDS TLS CA: %s holds no PEM certificate", t.CAFile)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("xDS TLS client certificate %s / key %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// withDefaults returns a copy of o with every empty field set to its default.
func (o Options) withDefaults() Options {
	if o.GRPCAddr == "" {
		o.GRPCAddr = DefaultGRPCAddr
	}
	if o.DebugAddr == "" {
		o.DebugAddr = DefaultDebugAddr
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = DefaultHTTPAddr
	}
	if o.XDSAddr == "" {
		o.XDSAddr = envoy.DefaultXDSAddress
	}
	if o.NodeID == "" {
		o.NodeID = envoy.DefaultRateLimitNode
	}
	if o.RedisURL == "" {
		o.RedisURL = DefaultRedisURL
	}
	if o.RedisWait == 0 {
		o.RedisWait = DefaultRedisWait
	}
	if o.LogLevel == "" {
		o.LogLevel = DefaultLogLevel
	}
	return o
}

// redisTarget is a parsed RedisURL in the shape the upstream settings want.
type redisTarget struct {
	// Topology is how the Redis is deployed; empty means a single node.
	Topology redisTopology
	// Network is "unix" for a Unix socket; empty means TCP.
	Network string
	// Addr is host:port, or the socket's path, of a single node.
	Addr string
	// Addrs are a cluster's seed nodes, or the sentinels of a sentinel-guarded primary.
	Addrs []string
	// Master is the name the sentinels know the primary by.
	Master string
	// Auth is the upstream REDIS_AUTH value: "password" or "user:password". It is a secret.
	Auth string
	// SentinelAuth is the sentinels' own "password" or "user:password", when they require
	// one. It is a secret.
	SentinelAuth string
	TLS          bool
	// CAFile names the PEM file of the CA that signs Redis' certificates; empty: the system's.
	CAFile string
}

// network is the network to dial Addr on.
func (t redisTarget) network() string {
	if t.Network == "" {
		return "tcp"
	}
	return t.Network
}

// config is validated Options with the Redis URL parsed.
type config struct {
	Options
	redis    redisTarget
	redisTLS *tls.Config // nil without TLS
	logLevel logrus.Level
}

// resolve applies defaults and validates every field, returning all problems at once, each
// prefixed by its field name. The upstream runner answers bad settings with log.Fatal (an
// exit from inside a library), so everything it would reject is rejected here first.
func (o Options) resolve() (config, error) {
	o = o.withDefaults()
	c := config{Options: o}
	var errs []error
	fail := func(field string, err error) { errs = append(errs, fmt.Errorf("%s: %w", field, err)) }

	listeners := []struct{ field, addr string }{
		{"GRPCAddr", o.GRPCAddr},
		{"DebugAddr", o.DebugAddr},
		{"HTTPAddr", o.HTTPAddr},
	}
	if o.MetricsAddr != "" {
		listeners = append(listeners, struct{ field, addr string }{"MetricsAddr", o.MetricsAddr})
	}
	portOwner := map[string]string{}
	for _, l := range listeners {
		_, port, err := splitHostPort(l.addr)
		if err != nil {
			fail(l.field, err)
			continue
		}
		// The upstream listeners set SO_REUSEPORT, so two of them on one port would not
		// fail: the kernel would quietly share connections between them.
		if other, taken := portOwner[port]; taken {
			fail(l.field, fmt.Errorf("port %s is already used by %s", port, other))
			continue
		}
		portOwner[port] = l.field
	}
	if _, _, err := splitHostPort(o.XDSAddr); err != nil {
		fail("XDSAddr", err)
	}
	if err := o.XDSTLS.validate(); err != nil {
		fail("XDSTLS", err)
	}
	if strings.TrimSpace(o.NodeID) == "" {
		fail("NodeID", errors.New("must not be blank"))
	}
	if o.RedisWait < 0 {
		fail("RedisWait", errors.New("must not be negative"))
	}
	level, err := parseLogLevel(o.LogLevel)
	if err != nil {
		fail("LogLevel", err)
	}
	c.logLevel = level
	target, err := parseRedisURL(o.RedisURL)
	if err != nil {
		fail("RedisURL", err)
	} else if c.redisTLS, err = target.tlsConfig(); err != nil {
		fail("RedisURL", err)
	}
	c.redis = target
	return c, errors.Join(errs...)
}

// splitHostPort accepts host:port with a numeric port in 1..65535. An empty host (":8081")
// means all interfaces, as with net.Listen; that is allowed because someone asked for it.
func splitHostPort(addr string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("%q is not host:port", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q: port must be a number from 1 to 65535", addr)
	}
	return host, port, nil
}

// parseLogLevel accepts the level names users know; logrus would also take "panic" and
// "fatal", which hide everything useful.
func parseLogLevel(s string) (logrus.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return logrus.TraceLevel, nil
	case "debug":
		return logrus.DebugLevel, nil
	case "info":
		return logrus.InfoLevel, nil
	case "warn", "warning":
		return logrus.WarnLevel, nil
	case "error":
		return logrus.ErrorLevel, nil
	}
	return 0, fmt.Errorf("%q is not one of trace, debug, info, warn, error", s)
}

// parseRedisURL turns host:port or a URL (see Options.RedisURL) into the upstream settings'
// shape. Errors never repeat the input: it may hold a password.
func parseRedisURL(raw string) (redisTarget, error) {
	if !strings.Contains(raw, "://") {
		if _, _, err := splitHostPort(raw); err != nil {
			return redisTarget{}, errors.New("want host:port, a redis://, rediss://, redis+cluster://, redis+sentinel:// or unix:// URL")
		}
		return redisTarget{Addr: raw}, nil
	}
	scheme, _, _ := strings.Cut(raw, "://")
	tls := strings.HasPrefix(scheme, "rediss")
	switch scheme {
	case "redis", "rediss":
	case "redis+cluster", "rediss+cluster":
		return parseRedisNodes(raw, topologyCluster, tls)
	case "redis+sentinel", "rediss+sentinel":
		return parseRedisNodes(raw, topologySentinel, tls)
	case "unix":
		u, err := url.Parse(raw)
		if err != nil {
			return redisTarget{}, errors.New("not a valid URL")
		}
		return parseRedisSocket(u)
	default:
		return redisTarget{}, fmt.Errorf("scheme %q is not redis, rediss, redis+cluster, rediss+cluster, redis+sentinel, rediss+sentinel or unix", scheme)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return redisTarget{}, errors.New("not a valid URL")
	}
	t := redisTarget{TLS: tls}
	if u.Hostname() == "" {
		return redisTarget{}, errors.New("URL names no host")
	}
	port := u.Port()
	if port == "" {
		port = defaultRedisPort
	}
	t.Addr = net.JoinHostPort(u.Hostname(), port)
	if _, _, err := splitHostPort(t.Addr); err != nil {
		return redisTarget{}, errors.New("URL port must be a number from 1 to 65535")
	}
	if err := checkDatabase(u.Path); err != nil {
		return redisTarget{}, err
	}
	if err := t.applyURL(u); err != nil {
		return redisTarget{}, err
	}
	return t, nil
}

// checkDatabase accepts an empty path or database 0: the ratelimit service has no database
// setting and always uses database 0 (and a Redis Cluster has no other).
func checkDatabase(path string) error {
	if db := strings.Trim(path, "/"); db != "" && db != "0" {
		return fmt.Errorf("database %q is not supported: the ratelimit service always uses database 0", db)
	}
	return nil
}

// parseRedisSocket reads unix:///path/to/redis.sock, with the password as in a redis:// URL
// (unix://:PASSWORD@/path): a Redis on this host, reached without TCP.
func parseRedisSocket(u *url.URL) (redisTarget, error) {
	if u.Host != "" {
		return redisTarget{}, errors.New("a unix:// URL names a socket path, not a host: write unix:///path/to/redis.sock")
	}
	if !strings.HasPrefix(u.Path, "/") || u.Path == "/" {
		return redisTarget{}, errors.New("a unix:// URL needs the socket's absolute path: unix:///path/to/redis.sock")
	}
	if u.RawQuery != "" {
		return redisTarget{}, errors.New("a unix:// URL takes no query options")
	}
	auth, err := redisAuth(u)
	if err != nil {
		return redisTarget{}, err
	}
	return redisTarget{Network: "unix", Addr: u.Path, Auth: auth}, nil
}

// redisAuth is the upstream REDIS_AUTH value a URL's user info gives.
func redisAuth(u *url.URL) (string, error) {
	if u.User == nil {
		return "", nil
	}
	user := u.User.Username()
	pass, hasPass := u.User.Password()
	switch {
	case !hasPass && user != "":
		// Clients disagree on whether redis://word@host names a user or a password.
		return "", errors.New("URL has a user but no password: write redis://:PASSWORD@host or redis://USER:PASSWORD@host")
	case user != "":
		return user + ":" + pass, nil
	case strings.Contains(pass, ":"):
		// The service splits REDIS_AUTH at the first colon into user and password, so a
		// colon in a user-less password needs Redis' implicit user spelled out.
		return "default:" + pass, nil
	default:
		return pass, nil
	}
}
