// Package load drives open-loop HTTP load with vegeta: fixed-rate runs summarised as
// latency percentiles and success ratios, and a search for the highest rate a system sustains.
package load

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Request is what every hit of one system sends.
type Request struct {
	URL    string
	Body   []byte
	Header http.Header
	// UserHeader, when set, carries a different user on consecutive hits, cycling through
	// Users ids, so per-user counters spread out as they do with real traffic.
	UserHeader string
	Users      int
}

// targeter returns a vegeta.Targeter for r. Targeters are called from many workers at once.
func (r Request) targeter() vegeta.Targeter {
	var seq atomic.Uint64
	users := uint64(max(r.Users, 1))
	return func(t *vegeta.Target) error {
		t.Method = http.MethodPost
		t.URL = r.URL
		t.Body = r.Body
		t.Header = r.Header.Clone()
		if t.Header == nil {
			t.Header = http.Header{}
		}
		if r.UserHeader != "" {
			t.Header.Set(r.UserHeader, "bench-user-"+strconv.FormatUint(seq.Add(1)%users, 10))
		}
		return nil
	}
}

// Client is an HTTP client for one system. Keeping it across runs keeps connections warm, so
// a run measures the system and not the connection setup of its first second.
func Client(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// Result summarises one fixed-rate run.
type Result struct {
	// Offered is the requested rate (requests per second); Sent the rate vegeta achieved.
	Offered, Sent float64
	// Throughput is successful responses per second, counted until the last one arrived.
	Throughput float64
	Requests   uint64
	// Success is the fraction of 2xx/3xx answers.
	Success            float64
	P50, P90, P99, Max time.Duration
	Duration           time.Duration
	// Codes counts answers by status code ("0" means no answer: a transport error).
	Codes map[string]int
	// Errors holds up to five distinct transport errors.
	Errors []string
}

// String is a one-line summary for progress logs.
func (r Result) String() string {
	return fmt.Sprintf("offered %.0f/s sent %.0f/s ok %.0f/s success %.3f%% p50 %s p90 %s p99 %s max %s codes %s",
		r.Offered, r.Sent, r.Throughput, 100*r.Success, ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max), codes(r.Codes))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

func codes(c map[string]int) string { return FormatCodes(c, ":", ",") }

// FormatCodes lists answer counts by status, in status order: code, pair, count, then sep
// before the next.
func FormatCodes(c map[string]int, pair, sep string) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s%s%d", k, pair, c[k])
	}
	return strings.Join(parts, sep)
}

// Options tune a run.
type Options struct {
	// MaxWorkers bounds vegeta's concurrent requests; past it vegeta stops keeping to the
	// rate (which the Sent rate then shows). Default 2000.
	MaxWorkers uint64
}

// Run sends r at rate requests per second for d and summarises the answers. It ends early,
// with what it has, when ctx ends.
func Run(ctx context.Context, client *http.Client, r Request, rate float64, d time.Duration, o Options) Result {
	attacker, stop := newAttacker(ctx, client, o)
	defer stop()
	pacer := vegeta.ConstantPacer{Freq: int(rate + 0.5), Per: time.Second}
	var m vegeta.Metrics
	for res := range attacker.Attack(r.targeter(), pacer, d, "") {
		m.Add(res)
	}
	m.Close()
	out := Result{
		Offered:    rate,
		Sent:       m.Rate,
		Throughput: m.Throughput,
		Requests:   m.Requests,
		Success:    m.Success,
		P50:        m.Latencies.P50,
		P90:        m.Latencies.P90,
		P99:        m.Latencies.P99,
		Max:        m.Latencies.Max,
		Duration:   m.Duration,
		Codes:      m.StatusCodes,
	}
	for i, e := range m.Errors {
		if i == 5 {
			break
		}
		out.Errors = append(out.Errors, e)
	}
	return out
}

// newAttacker is a vegeta attacker with o's bounds, stopped when ctx ends (until stop).
func newAttacker(ctx context.Context, client *http.Client, o Options) (*vegeta.Attacker, func() bool) {
	if o.MaxWorkers == 0 {
		o.MaxWorkers = 2000
	}
	attacker := vegeta.NewAttacker(
		vegeta.Client(client),
		vegeta.MaxWorkers(o.MaxWorkers),
		vegeta.Workers(min(64, o.MaxWorkers)),
		// Bodies are drained but not kept: the status says enough, and keeping them would
		// cost the load generator CPU the systems under test need.
		vegeta.MaxBody(0),
	)
	return attacker, context.AfterFunc(ctx, func() { attacker.Stop() })
}
