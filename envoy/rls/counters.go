package rls

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlconfig "github.com/envoyproxy/ratelimit/src/config"
	"github.com/envoyproxy/ratelimit/src/limiter"
	"github.com/mediocregopher/radix/v4"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// CacheKeyPrefix is the prefix of the service's Redis keys. tollgate runs the service with
// it (whatever CACHE_KEY_PREFIX says), so the keys Counters computes are the service's keys.
const CacheKeyPrefix = ""

// refundScript takes hits back from one counter: never below zero, and never for a counter
// that is gone (its window ended and it expired), which would otherwise come back as a key
// without an expiry.
// It is sent with EVAL: radix cannot pipeline its EVALSHA-with-fallback, and the script is short.
const refundScript = `local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local n = math.min(tonumber(ARGV[1]), tonumber(current))
if n <= 0 then return 0 end
redis.call('DECRBY', KEYS[1], n)
return n`

// addScript adds ARGV[1] to the counter KEYS[1] and gives it a life of ARGV[2] seconds.
// It is the second step of a carry, after its marker was set.
const addScript = `redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1`

// counterTimeout bounds one round of refunds.
const counterTimeout = 2 * time.Second

// Counters changes the service's counters in Redis directly, for what its API cannot do: its
// counters only go up, so hits reserved for a request that then cost less are taken back
// here. The key of a counter comes from the upstream library's own cache-key code, with the
// limit's unit and the time the hits were counted, exactly as the service derives it.
//
// Every command names one key, or keys of one hash slot, so that the same commands work on a
// single Redis, a Sentinel-guarded primary and a Redis Cluster.
type Counters struct {
	target redisTarget
	tls    *tls.Config
	keys   limiter.CacheKeyGenerator

	mu     sync.Mutex
	client redisClient // connected on first use, so a Redis that starts later is fine
}

// NewCounters prepares access to the counters in the Redis at redisURL (any form RedisURL of
// Options takes). It does not connect yet.
func NewCounters(redisURL string) (*Counters, error) {
	target, err := parseRedisURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	tlsConfig, err := target.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &Counters{target: target, tls: tlsConfig, keys: limiter.NewCacheKeyGenerator(CacheKeyPrefix)}, nil
}

// Where describes the Redis, without its secrets.
func (c *Counters) Where() string { return c.target.String() }

// Ping checks that the Redis answers now.
func (c *Counters) Ping(ctx context.Context) error {
	return c.do(ctx, radix.Cmd(nil, "PING"))
}

// Key is the service's Redis key of a counter: the descriptor in domain, counted under a limit
// of unit (SECOND ... YEAR) at time at.
func (c *Counters) Key(domain string, entries []rlsclient.Entry, unit string, at time.Time) (string, error) {
	u, ok := rlsv3.RateLimitResponse_RateLimit_Unit_value[unit]
	if !ok || u == int32(rlsv3.RateLimitResponse_RateLimit_UNKNOWN) {
		return "", fmt.Errorf("unknown unit %q", unit)
	}
	d := &ratelimitv3.RateLimitDescriptor{Entries: make([]*ratelimitv3.RateLimitDescriptor_Entry, len(entries))}
	for i, e := range entries {
		d.Entries[i] = &ratelimitv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value}
	}
	limit := &rlconfig.RateLimit{Limit: &rlsv3.RateLimitResponse_RateLimit{Unit: rlsv3.RateLimitResponse_RateLimit_Unit(u)}}
	return c.keys.GenerateCacheKey(domain, d, limit, at.Unix()).Key, nil
}

// Refund takes each refund's hits back from its counter, in one round trip. A refund whose
// unit names no window is skipped: its hits were never counted under a key.
func (c *Counters) Refund(ctx context.Context, refunds []rlsclient.Refund) error {
	var b batch
	for _, r := range refunds {
		key, err := c.Key(r.Domain, r.Entries, r.Unit, r.At)
		if err != nil {
			continue
		}
		b.add(key, evalCmd(nil, refundScript, []string{key}, strconv.FormatUint(r.Hits, 10)))
	}
	return c.send(ctx, b)
}

// Carry adds what a counter held in the window that ended at boundary to its counter in the
// window that starts there, once however often it is called (also from several gateways). A
// calendar quota's counter is kept under the service's longest window, a year aligned to the
// Unix epoch; when such a window ends inside a calendar period, this keeps what the period
// already spent.
//
// The two counters and the marker that the carry is done live in different hash slots of a
// Redis Cluster, so it is three steps: set the marker (only the first caller does), read the
// ended window, add to the new one. When a later step fails the marker is removed again, so
// the next call carries.
func (c *Counters) Carry(ctx context.Context, domain string, entries []rlsclient.Entry, unit string, boundary time.Time) error {
	before, err := c.Key(domain, entries, unit, boundary.Add(-time.Second))
	if err != nil {
		return err
	}
	after, err := c.Key(domain, entries, unit, boundary)
	if err != nil {
		return err
	}
	seconds := strconv.FormatInt(int64(rlsclient.UnitWindow(unit).Seconds()), 10)
	marker := after + carriedSuffix
	var set string
	if err := c.do(ctx, radix.Cmd(&set, "SET", marker, "1", "NX", "EX", seconds)); err != nil || set != "OK" {
		return err // nil when another call carried already
	}
	var spent string
	err = c.do(ctx, radix.Cmd(&spent, "GET", before))
	if n, _ := strconv.ParseUint(spent, 10, 64); err == nil && n > 0 {
		err = c.eval(ctx, nil, addScript, []string{after}, spent, seconds)
	}
	if err != nil {
		_ = c.do(context.WithoutCancel(ctx), radix.Cmd(nil, "DEL", marker))
	}
	return err
}

// Counts reads counters as they are now: each descriptor's (entries and unit) in the window
// that contains at; a counter that does not exist is 0. One round trip.
func (c *Counters) Counts(ctx context.Context, domain string, counters []rlsclient.Counter, at time.Time) ([]uint64, error) {
	values := make([]string, len(counters))
	var b batch
	for i, ctr := range counters {
		key, err := c.Key(domain, ctr.Entries, ctr.Unit, at)
		if err != nil {
			return nil, err
		}
		b.add(key, radix.Cmd(&values[i], "GET", key))
	}
	if err := c.send(ctx, b); err != nil {
		return nil, err
	}
	out := make([]uint64, len(counters))
	for i, v := range values {
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("counter %d holds %q", i, v)
		}
		out[i] = uint64(max(n, 0))
	}
	return out, nil
}

// setScript sets a counter and returns what it held: ARGV[1] is the new count, ARGV[2] the
// seconds to the end of its window, the life a counter the script creates gets (an existing
// one keeps its own).
const setScript = `local before = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
elseif tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return before`

// SetCount sets a counter in the window that contains at to n, and returns what it held.
func (c *Counters) SetCount(ctx context.Context, domain string, entries []rlsclient.Entry, unit string, at time.Time, n uint64) (uint64, error) {
	key, err := c.Key(domain, entries, unit, at)
	if err != nil {
		return 0, err
	}
	var before int64
	err = c.eval(ctx, &before, setScript, []string{key}, strconv.FormatUint(n, 10), strconv.FormatInt(secondsLeft(unit, at), 10))
	return uint64(max(before, 0)), err
}

// GrantKeyPrefix starts the Redis keys of grants: extra room on one counter for one window.
const GrantKeyPrefix = "tollgate_grant:"

// grantIndex is a sorted set of the grant keys in force, each scored by the Unix time its
// window ends, so the grants are read without scanning Redis's whole key space.
const grantIndex = "tollgate_grants"

// addGrantScript adds ARGV[1] to the grant KEYS[1], which ends with its window in ARGV[2]
// seconds, and returns its total.
const addGrantScript = `local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n`

// AddGrant adds amount to the grant on a counter in the window that contains at, and returns
// the grant's total. The grant's key is the counter's key behind GrantKeyPrefix, and it ends
// with the window.
func (c *Counters) AddGrant(ctx context.Context, domain string, entries []rlsclient.Entry, unit string, at time.Time, amount uint64) (uint64, error) {
	key, err := c.Key(domain, entries, unit, at)
	if err != nil {
		return 0, err
	}
	left := secondsLeft(unit, at)
	grant := GrantKeyPrefix + key
	// The index first: in a Redis Cluster it is in another hash slot than the grant, and an
	// index entry whose grant was never added reads as no grant.
	if err := c.do(ctx, radix.Cmd(nil, "ZADD", grantIndex, strconv.FormatInt(at.Unix()+left, 10), grant)); err != nil {
		return 0, err
	}
	var total int64
	err = c.eval(ctx, &total, addGrantScript, []string{grant}, strconv.FormatUint(amount, 10), strconv.FormatInt(left, 10))
	return uint64(max(total, 0)), err
}

// Grants reads every grant in force, by the key of the counter it is on: the index, less the
// grants whose window ended, then their amounts.
func (c *Counters) Grants(ctx context.Context) (map[string]uint64, error) {
	var keys []string
	pipeline := radix.NewPipeline()
	pipeline.Append(radix.Cmd(nil, "ZREMRANGEBYSCORE", grantIndex, "-inf", strconv.FormatInt(time.Now().Unix(), 10)))
	pipeline.Append(radix.Cmd(&keys, "ZRANGE", grantIndex, "0", "-1"))
	if err := c.do(ctx, pipeline); err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	values := make([]string, len(keys))
	var b batch
	for i, k := range keys {
		b.add(k, radix.Cmd(&values[i], "GET", k))
	}
	if err := c.send(ctx, b); err != nil {
		return nil, err
	}
	for i, v := range values {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && n > 0 {
			out[strings.TrimPrefix(keys[i], GrantKeyPrefix)] = n
		}
	}
	return out, nil
}

// alertKeyPrefix starts the Redis keys that record a quota alert as reported.
const alertKeyPrefix = "tollgate_alert:"

// MarkOnce records key, unless it is recorded already, for ttl; it reports whether this call
// recorded it. Gateways sharing the Redis so report each quota alert once between them.
func (c *Counters) MarkOnce(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	var reply string
	seconds := strconv.FormatInt(max(int64(ttl.Seconds()), 1), 10)
	if err := c.do(ctx, radix.Cmd(&reply, "SET", alertKeyPrefix+key, "1", "NX", "EX", seconds)); err != nil {
		return false, err
	}
	return reply == "OK", nil
}

// eval runs a script on keys with args and decodes its reply into into.
func (c *Counters) eval(ctx context.Context, into any, script string, keys []string, args ...string) error {
	return c.do(ctx, evalCmd(into, script, keys, args...))
}

// evalCmd is EVAL of script on keys with args. radix counts EVAL among the commands without
// keys, which a Cluster client would send to any node; the keys are named here, so it goes to
// the node that holds them.
func evalCmd(into any, script string, keys []string, args ...string) radix.Action {
	cmd := append([]string{script, strconv.Itoa(len(keys))}, keys...)
	named := radix.CmdConfig{ActionProperties: func(name string, args ...string) radix.ActionProperties {
		p := radix.DefaultActionProperties(name, args...)
		p.Keys = keys
		return p
	}}
	return named.Cmd(into, "EVAL", append(cmd, args...)...)
}

// do runs action on the counters' Redis, within counterTimeout.
func (c *Counters) do(ctx context.Context, action radix.Action) error {
	client, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, counterTimeout)
	defer cancel()
	if err := client.Do(ctx, action); err != nil {
		return fmt.Errorf("%s: %w", c.target, err)
	}
	return nil
}

// batch is commands sent together, each on one key.
type batch struct {
	keys    []string
	actions []radix.Action
}

func (b *batch) add(key string, action radix.Action) {
	b.keys = append(b.keys, key)
	b.actions = append(b.actions, action)
}

// send runs a batch in one round trip; on a Redis Cluster, where a pipeline may not span hash
// slots, in one pipeline per slot.
func (c *Counters) send(ctx context.Context, b batch) error {
	if len(b.actions) == 0 {
		return nil
	}
	if c.target.Topology != topologyCluster {
		return c.do(ctx, pipeline(b.actions))
	}
	bySlot := map[uint16][]radix.Action{}
	var order []uint16
	for i, key := range b.keys {
		slot := radix.ClusterSlot([]byte(key))
		if _, seen := bySlot[slot]; !seen {
			order = append(order, slot)
		}
		bySlot[slot] = append(bySlot[slot], b.actions[i])
	}
	for _, slot := range order {
		if err := c.do(ctx, pipeline(bySlot[slot])); err != nil {
			return err
		}
	}
	return nil
}

func pipeline(actions []radix.Action) *radix.Pipeline {
	p := radix.NewPipeline()
	for _, a := range actions {
		p.Append(a)
	}
	return p
}

// secondsLeft is the time from at to the end of the window of unit that contains it, in whole
// seconds (at least 1).
func secondsLeft(unit string, at time.Time) int64 {
	end := rlsclient.WindowStart(unit, at).Add(rlsclient.UnitWindow(unit))
	return max(int64(end.Sub(at).Seconds()), 1)
}

// carriedSuffix marks, next to a counter's key, that the window before it has been carried in.
const carriedSuffix = "_carried"

// connect returns the client, connecting it on first use.
func (c *Counters) connect() (redisClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, nil
	}
	client, err := c.target.connectFollowing(c.tls, 2)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.target, err)
	}
	c.client = client
	return client, nil
}

// Close releases the connections.
func (c *Counters) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		return nil
	}
	err := c.client.Close()
	c.client = nil
	return err
}
