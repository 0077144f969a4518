// `tollgate run`: the Redis the quota counters live in, given or embedded.

package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/tollgate-dev/tollgate/envoy/rls"
)

// embeddedClockTick is how often the embedded Redis' key TTLs are advanced; see
// startCounters.
const embeddedClockTick = 5 * time.Second

// counters is the Redis the ratelimit service keeps its counters in.
type counters struct {
	url      string
	embedded *miniredis.Miniredis
	quit     chan struct{}
	ticking  chan struct{}
}

// startCounters uses the Redis at redisURL, or, when it is empty, starts an embedded in-memory
// Redis-compatible server on a free loopback port. The ratelimit service behaves the same on
// it, but its counters live and die with this process.
func startCounters(logger *slog.Logger, redisURL string) (*counters, error) {
	if redisURL != "" {
		c := &counters{url: redisURL}
		logger.Info("quota counters are kept in " + c.describe())
		return c, nil
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded Redis: %w", err)
	}
	c := &counters{url: m.Addr(), embedded: m, quit: make(chan struct{}), ticking: make(chan struct{})}
	// The embedded server never expires keys on its own: its TTLs only move when told to.
	// Advancing them with the wall clock keeps memory flat as windows pass. (Counting is
	// unaffected either way: each window has its own key.)
	go func() {
		defer close(c.ticking)
		tick := time.NewTicker(embeddedClockTick)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-c.quit:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	logger.Info("quota counters are kept in an embedded in-memory Redis: per process and not persisted, they start from zero on every run (use --redis or REDIS_URL to keep them)",
		"addr", m.Addr())
	return c, nil
}

// describe says where the counters are, without any password the URL holds.
func (c *counters) describe() string {
	if c.embedded != nil {
		return fmt.Sprintf("embedded in-memory Redis on %s (per process, not persisted)", c.url)
	}
	d, err := rls.DescribeRedis(c.url)
	if err != nil {
		return "Redis from --redis"
	}
	return d
}

func (c *counters) close() {
	if c.embedded == nil {
		return
	}
	close(c.quit)
	<-c.ticking
	c.embedded.Close()
}
