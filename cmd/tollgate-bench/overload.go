package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
	"github.com/tollgate-dev/tollgate/envoy"
)

// The overload phase's shape: a burst at twice the sustained maximum, then half of it.
const (
	overloadFactor   = 2.0
	recoveryFraction = 0.5
	// rssInterval is how often the processes' resident memory is read.
	rssInterval = 250 * time.Millisecond
	// minInFlightBound is the lowest in-flight bound the phase sets on its own, and
	// inFlightHeadroom the factor over Little's law it sets it with.
	minInFlightBound = 16
	inFlightHeadroom = 1.5
)

// overloadPhase offers B's gateway twice the rate it sustains (its max, searched here unless
// the overhead phase found it or --overload-max gives it) for --overload-burst, then half of
// it for --overload-recovery, on one clock, and reports what was served, what was refused and
// how fast, each process's memory, and how long the gateway took to recover.
func overloadPhase(ctx context.Context, cfg config, bins stack.Bins, out string, rep *report.Report, logger *slog.Logger) error {
	m, err := startMainGateway(ctx, cfg, bins, filepath.Join(out, "overload"))
	if err != nil {
		return err
	}
	defer m.env.Close()
	sim, gw := m.sim, m.gw
	_, jsonReq, _, streamReq := requests(cfg, "", gw.URL)
	req, key, criteria := streamReq, "C", cfg.criteria
	criteria.MaxP99 = cfg.streamMaxP99
	if !cfg.overloadStream {
		req, key, criteria = jsonReq, "B", cfg.criteria
	}
	o := &report.Overload{System: key, Burst: cfg.overloadBurst, Recovery: cfg.overloadRecovery}
	rep.Overload = o
	client := load.Client(30 * time.Second)
	opts := load.Options{MaxWorkers: cfg.maxWorkers}
	load.Run(ctx, client, req, 100, cfg.warmup, opts)
	burstOpts := load.Options{MaxWorkers: cfg.overloadWorkers}

	o.Max = cfg.overloadMax
	if s := rep.System(key); o.Max == 0 && s != nil && s.Max > 0 {
		o.Max, o.MaxFrom = s.Max, "the overhead phase"
	}
	if o.Max == 0 {
		search := load.NewSearch(cfg.startRate, cfg.growth, cfg.maxRate, cfg.refine, criteria)
		for rate, ok := search.Next(); ok && ctx.Err() == nil; rate, ok = search.Next() {
			r := load.Run(ctx, client, req, rate, cfg.stepDuration, opts)
			search.Record(r)
			logger.Info("overload: searching the max", "system", key, "result", r.String())
		}
		o.Max, _ = search.Max()
		o.MaxFrom = "a search in this phase"
	} else if o.MaxFrom == "" {
		o.MaxFrom = "--overload-max"
	}
	if o.Max == 0 {
		return fmt.Errorf("%s sustained no rate", key)
	}
	pids := gw.Pids()
	pids["llmsim"] = sim.Pid()

	// Memory at the max, then latency at half of it: what the burst is compared with.
	sampler := startRSSSampler(pids)
	atMax := load.Run(ctx, client, req, o.Max, cfg.fixedDuration, opts)
	o.SteadyRSS = sampler.stop().peak(0, math.MaxInt64)
	logger.Info("overload: at the max", "result", atMax.String(), "rss", o.SteadyRSS)
	half := load.Run(ctx, client, req, recoveryFraction*o.Max, cfg.fixedDuration, opts)
	o.HalfP99 = half.P99
	logger.Info("overload: at half the max", "result", half.String())
	if o.MaxInFlight = cfg.overloadMaxInFlight; o.MaxInFlight < 0 {
		// Little's law: what the gateway holds in flight serving its max at the latency of
		// a calm moment, with half again as headroom. docs/operations.md gives operators
		// the same rule.
		o.MaxInFlight = max(minInFlightBound, int(math.Ceil(inFlightHeadroom*o.Max*half.P50.Seconds())))
	}
	if o.MaxInFlight > 0 {
		if err := gw.WritePolicy(gw.Policy(stack.PolicyOptions{MaxConcurrentRequests: o.MaxInFlight})); err != nil {
			return err
		}
		want := fmt.Sprintf("%s::default_priority::max_requests::%d", envoy.ClusterExtProc, o.MaxInFlight)
		if err := gw.AwaitEnvoyAdmin(ctx, "/clusters", want, 30*time.Second); err != nil {
			return err
		}
		logger.Info("overload: bounded the requests in flight", "listener.maxConcurrentRequests", o.MaxInFlight)
	}

	// The counters start from 0, so after the run they must hold exactly the tokens of its
	// answered requests: one probe, whose usage gives every request's, and the 200s.
	time.Sleep(chargesSettle) // the runs before finish charging first
	if err := gw.ResetCounters(ctx); err != nil {
		return err
	}
	perRequest, err := gw.TokensOf(ctx, "bench-probe", string(req.Body), req.Header)
	if err != nil {
		return fmt.Errorf("probe request: %w", err)
	}

	sampler = startRSSSampler(pids)
	o.Offered, o.Then = overloadFactor*o.Max, recoveryFraction*o.Max
	stages := []load.Stage{{Rate: o.Offered, Duration: cfg.overloadBurst}, {Rate: o.Then, Duration: cfg.overloadRecovery}}
	logger.Info("overload: burst", "rate", stages[0].Rate, "for", stages[0].Duration, "then", stages[1].Rate, "for", stages[1].Duration)
	burstStart := time.Now()
	tl := load.RunStages(ctx, client, req, stages, burstOpts)
	samples := sampler.stop()
	burst := int(cfg.overloadBurst / time.Second)
	o.During = tl.Window(0, burst)
	o.After = tl.Window(burst, len(tl.Seconds))
	o.PeakRSS = samples.peak(0, cfg.overloadBurst+cfg.overloadRecovery)
	o.LatencyRecovery = latencyRecovery(tl, burst, o.HalfP99)
	o.RSSRecovery = samples.recovery(cfg.overloadBurst, o.SteadyRSS)
	for _, s := range tl.Seconds {
		o.PerSecond = append(o.PerSecond, report.OverloadSecond{Sent: s.Sent, OK: len(s.OK), Refused: len(s.Refused),
			OKP99: load.Quantile(s.OK, 0.99), RefusedP99: load.Quantile(s.Refused, 0.99)})
	}
	o.ExpectedTokens = perRequest * int64(1+o.During.OK+o.After.OK)
	if o.CountedTokens, err = settledCount(ctx, gw); err != nil {
		return fmt.Errorf("reading the counters: %w", err)
	}
	refusals, err := gw.AnswerDurations(http.StatusServiceUnavailable, burstStart, burstStart.Add(cfg.overloadBurst))
	if err != nil {
		return fmt.Errorf("reading the usage log: %w", err)
	}
	o.EnvoyRefusedP99 = load.Quantile(refusals, 0.99)
	if len(refusals) > 0 {
		o.EnvoyRefusedMax = refusals[len(refusals)-1]
	}
	logger.Info("overload: done", "envoy_refused_p99", o.EnvoyRefusedP99, "counted_tokens", o.CountedTokens, "tokens_of_200s", o.ExpectedTokens, "goodput", o.During.OKRate(), "max", o.Max, "codes", o.During.Codes,
		"admitted_p99", o.During.OKP99, "shed_p99", o.During.RefusedP99, "peak_rss", o.PeakRSS,
		"latency_recovery", o.LatencyRecovery, "rss_recovery", o.RSSRecovery)
	return nil
}

// chargesSettle is long enough for charges batched after a run to reach Redis.
const chargesSettle = time.Second

// settledCount reads the gateway's counters until two readings chargesSettle apart agree.
func settledCount(ctx context.Context, gw *stack.Gateway) (int64, error) {
	last := int64(-1)
	for range 20 {
		n, err := gw.CountedTokens(ctx)
		if err != nil {
			return 0, err
		}
		if n == last {
			return n, nil
		}
		last = n
		time.Sleep(chargesSettle)
	}
	return last, nil
}

// latencyRecovery is how long after the burst every later second's 2xx p99 stayed within
// twice halfP99 with every request answered 2xx; -1 if none did.
func latencyRecovery(tl load.Timeline, burst int, halfP99 time.Duration) time.Duration {
	recovered := -1
	for i := len(tl.Seconds) - 1; i >= burst; i-- {
		s := tl.Seconds[i]
		if len(s.OK) != s.Sent || load.Quantile(s.OK, 0.99) > 2*halfP99 {
			break
		}
		recovered = i
	}
	if recovered < 0 || recovered == len(tl.Seconds) {
		return -1
	}
	return time.Duration(recovered-burst) * time.Second
}

// rssSampler reads every process's resident memory every rssInterval until stopped.
type rssSampler struct {
	pids  map[string]int
	start time.Time
	done  chan struct{}
	wg    sync.WaitGroup
	got   rssSamples
}

type rssSample struct {
	at  time.Duration
	rss map[string]int64
}

type rssSamples []rssSample

func startRSSSampler(pids map[string]int) *rssSampler {
	s := &rssSampler{pids: pids, start: time.Now(), done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for {
			sample := rssSample{at: time.Since(s.start), rss: map[string]int64{}}
			for name, pid := range s.pids {
				if u, err := proc.PidUsage(pid); err == nil {
					sample.rss[name] = u.RSS
				}
			}
			s.got = append(s.got, sample)
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() rssSamples {
	close(s.done)
	s.wg.Wait()
	return s.got
}

// peak is each process's highest resident memory among the samples taken in [from, to).
func (ss rssSamples) peak(from, to time.Duration) map[string]int64 {
	out := map[string]int64{}
	for _, s := range ss {
		if s.at < from || s.at >= to {
			continue
		}
		for name, rss := range s.rss {
			out[name] = max(out[name], rss)
		}
	}
	return out
}

// recovery is how long after end every later sample had each process within rssSlack of its
// steady memory; -1 if that never held.
func (ss rssSamples) recovery(end time.Duration, steady map[string]int64) time.Duration {
	back := time.Duration(-1)
	for i := len(ss) - 1; i >= 0 && ss[i].at >= end; i-- {
		for name, rss := range ss[i].rss {
			if float64(rss) > rssSlack*float64(steady[name]) {
				return back
			}
		}
		back = ss[i].at - end
	}
	return back
}

// rssSlack is how far above its steady state a process's memory may stay and count as back.
const rssSlack = 1.25
