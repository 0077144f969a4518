package rls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/mediocregopher/radix/v4"
)

// redisTopology is how the counters' Redis is deployed.
type redisTopology string

const (
	// topologySingle is one node (the zero value).
	topologySingle redisTopology = ""
	// topologyCluster is a Redis Cluster, found from its seed nodes.
	topologyCluster redisTopology = "cluster"
	// topologySentinel is a primary and its replicas, found through sentinels, which promote a
	// replica when the primary fails.
	topologySentinel redisTopology = "sentinel"
)

// defaultSentinelPort completes sentinel addresses that name no port.
const defaultSentinelPort = "26379"

// parseRedisNodes reads redis+cluster://[auth@]host:port,host:port,…[?options] and
// redis+sentinel://[auth@]host:port,…/MASTER[?options] (and their rediss variants). Standard URL
// parsers refuse a list of hosts, so the hosts are taken out first and the rest (user info,
// path, query) is read as a URL.
func parseRedisNodes(raw string, topology redisTopology, useTLS bool) (redisTarget, error) {
	scheme, rest, _ := strings.Cut(raw, "://")
	authorityEnd := strings.IndexAny(rest, "/?#")
	if authorityEnd < 0 {
		authorityEnd = len(rest)
	}
	authority, tail := rest[:authorityEnd], rest[authorityEnd:]
	userInfo, hosts := "", authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userInfo, hosts = authority[:at+1], authority[at+1:]
	}
	u, err := url.Parse("redis://" + userInfo + "placeholder" + tail)
	if err != nil {
		return redisTarget{}, errors.New("not a valid URL")
	}
	if u.Fragment != "" {
		return redisTarget{}, errors.New("URL fragments are not supported")
	}
	t := redisTarget{Topology: topology, TLS: useTLS}
	defaultPort := defaultRedisPort
	if topology == topologySentinel {
		defaultPort = defaultSentinelPort
	}
	if hosts == "" {
		return redisTarget{}, fmt.Errorf("a %s:// URL names its nodes: host:port,host:port,…", scheme)
	}
	seen := map[string]bool{}
	for i, h := range strings.Split(hosts, ",") {
		addr, err := nodeAddr(h, defaultPort)
		if err != nil {
			return redisTarget{}, fmt.Errorf("node %d: %w", i+1, err)
		}
		if seen[addr] {
			return redisTarget{}, fmt.Errorf("node %d: %s is named twice", i+1, addr)
		}
		seen[addr] = true
		t.Addrs = append(t.Addrs, addr)
	}
	switch topology {
	case topologySentinel:
		t.Master = strings.Trim(u.Path, "/")
		if t.Master == "" || strings.Contains(t.Master, "/") {
			return redisTarget{}, errors.New("a redis+sentinel:// URL ends with the primary's name as the sentinels know it: …/MASTER")
		}
	default:
		if err := checkDatabase(u.Path); err != nil {
			return redisTarget{}, err
		}
	}
	if err := t.applyURL(u); err != nil {
		return redisTarget{}, err
	}
	return t, nil
}

// applyURL takes a URL's user info (the password) and its query options.
func (t *redisTarget) applyURL(u *url.URL) (err error) {
	if t.Auth, err = redisAuth(u); err != nil {
		return err
	}
	return t.applyQuery(u.RawQuery)
}

// nodeAddr validates one node of a list, host[:port], and completes its port.
func nodeAddr(h, defaultPort string) (string, error) {
	if h == "" {
		return "", errors.New("empty address")
	}
	u, err := url.Parse("redis://" + h)
	if err != nil || u.Hostname() == "" || u.User != nil || u.Path != "" {
		return "", fmt.Errorf("%q is not host or host:port", h)
	}
	port := u.Port()
	if port == "" {
		port = defaultPort
	}
	addr := net.JoinHostPort(u.Hostname(), port)
	if _, _, err := splitHostPort(addr); err != nil {
		return "", err
	}
	return addr, nil
}

// applyQuery reads a URL's query options: ca (the CA file of a TLS Redis) and, for Sentinel,
// sentinel_password. Errors name the option, never its value.
func (t *redisTarget) applyQuery(rawQuery string) error {
	if rawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return errors.New("the URL's query is not valid")
	}
	for name, values := range q {
		if len(values) != 1 {
			return fmt.Errorf("URL option %q is given more than once", name)
		}
		v := values[0]
		switch name {
		case "ca":
			if !t.TLS {
				return errors.New("URL option ca needs TLS: use a rediss scheme")
			}
			if v == "" {
				return errors.New("URL option ca is empty: name the CA's PEM file")
			}
			t.CAFile = v
		case "sentinel_password":
			if t.Topology != topologySentinel {
				return errors.New("URL option sentinel_password is for redis+sentinel:// URLs")
			}
			if v == "" {
				return errors.New("URL option sentinel_password is empty")
			}
			t.SentinelAuth = v
		default:
			return fmt.Errorf("URL option %q is not one of ca, sentinel_password", name)
		}
	}
	return nil
}

// String describes the target for logs, status and errors, without its secrets.
func (t redisTarget) String() string {
	var s string
	switch t.Topology {
	case topologyCluster:
		s = "Redis Cluster at " + strings.Join(t.Addrs, ", ")
	case topologySentinel:
		s = fmt.Sprintf("Redis primary %q via sentinels %s", t.Master, strings.Join(t.Addrs, ", "))
	default:
		s = "Redis at " + t.Addr
	}
	if t.TLS {
		s += " (TLS)"
	}
	return s
}

// upstreamType and upstreamURL are the upstream service's REDIS_TYPE and REDIS_URL.
func (t redisTarget) upstreamType() string {
	switch t.Topology {
	case topologyCluster:
		return "CLUSTER"
	case topologySentinel:
		return "SENTINEL"
	default:
		return "SINGLE"
	}
}

func (t redisTarget) upstreamURL() string {
	switch t.Topology {
	case topologyCluster:
		return strings.Join(t.Addrs, ",")
	case topologySentinel:
		return t.Master + "," + strings.Join(t.Addrs, ",")
	default:
		return t.Addr
	}
}

// tlsConfig is the TLS configuration of connections to the target, nil without TLS. Each
// node's certificate is verified for the host it is dialled at (tls.Dialer fills the server
// name in), against CAFile, or REDIS_TLS_CACERT as the upstream service reads it, or else the
// system roots.
func (t redisTarget) tlsConfig() (*tls.Config, error) {
	if !t.TLS {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	caFile := t.CAFile
	if caFile == "" {
		caFile = os.Getenv("REDIS_TLS_CACERT")
	}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("Redis TLS CA: %w", err) //nolint:staticcheck // ST1005: Redis is a name
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("Redis TLS CA: %s holds no PEM certificate", caFile) //nolint:staticcheck // ST1005: Redis is a name
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// dialer is how one connection to a node is made: TLS and AUTH as the upstream service does
// them (auth split at the first colon into user and password).
func dialer(auth string, tlsConfig *tls.Config) radix.Dialer {
	netDialer := &net.Dialer{Timeout: redisDialTimeout}
	d := radix.Dialer{NetDialer: netDialer}
	if tlsConfig != nil {
		d.NetDialer = &tls.Dialer{NetDialer: netDialer, Config: tlsConfig}
	}
	if user, pass, hasUser := strings.Cut(auth, ":"); hasUser {
		d.AuthUser, d.AuthPass = user, pass
	} else {
		d.AuthPass = auth
	}
	return d
}

// redisClient is what tollgate needs of a radix client of any topology.
type redisClient interface {
	Do(ctx context.Context, action radix.Action) error
	Close() error
}

// connect opens a client of the target's topology with poolSize connections per node: a
// Cluster client follows the slots to their nodes, a Sentinel client follows the primary
// through a failover.
func (t redisTarget) connect(ctx context.Context, tlsConfig *tls.Config, poolSize int) (redisClient, error) {
	pool := radix.PoolConfig{Size: poolSize, Dialer: dialer(t.Auth, tlsConfig)}
	switch t.Topology {
	case topologyCluster:
		return radix.ClusterConfig{PoolConfig: pool}.New(ctx, t.Addrs)
	case topologySentinel:
		return radix.SentinelConfig{PoolConfig: pool, SentinelDialer: dialer(t.SentinelAuth, tlsConfig)}.New(ctx, t.Master, t.Addrs)
	default:
		return pool.New(ctx, t.network(), t.Addr)
	}
}

// connectFollowing is connect for a client that stays open: a Cluster client is replaced
// whenever the slots move to other primaries (see followedCluster).
func (t redisTarget) connectFollowing(tlsConfig *tls.Config, poolSize int) (redisClient, error) {
	dial := func() (redisClient, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*redisDialTimeout)
		defer cancel()
		return t.connect(ctx, tlsConfig, poolSize)
	}
	if t.Topology != topologyCluster {
		return dial()
	}
	f, err := followCluster(nil, t.String(), dialer(t.Auth, tlsConfig), t.Addrs, dial)
	if err != nil {
		return nil, err
	}
	return followingClient{f}, nil
}

// followingClient is a Cluster client that follows the slots to their new primaries.
type followingClient struct{ *followedCluster[redisClient] }

func (c followingClient) Do(ctx context.Context, action radix.Action) error {
	return c.client().Do(ctx, action)
}

// DescribeRedis describes the Redis a URL (any form Options.RedisURL takes) names, without its
// secrets: "Redis at host:port", "Redis Cluster at …", `Redis primary "name" via sentinels …`.
func DescribeRedis(redisURL string) (string, error) {
	target, err := parseRedisURL(redisURL)
	if err != nil {
		return "", err
	}
	return target.String(), nil
}
