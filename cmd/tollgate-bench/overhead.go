package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
)

// loadedSystem is one system under load with what the phase needs to drive and account it.
type loadedSystem struct {
	rep    *report.System
	req    load.Request
	client *http.Client
	// pids names the processes whose CPU a request of this system costs; trees names those
	// whose CPU is that of their whole process tree (a supervisor and its workers).
	pids, trees map[string]int
	search      *load.Search
	// maxOverload, when > 0, skips fixed rates above maxOverload times the system's max: far
	// past its capacity a system only queues requests until they time out.
	maxOverload float64
	// drain has every run wait until the process trees are idle: a slow system keeps working
	// on requests the load generator gave up on, which would take the CPU from the next run.
	drain bool
	// streamed systems are held to the streams' latency bound (--stream-max-p99).
	streamed bool
}

// criteria are what sustained means for s.
func (s *loadedSystem) criteria(cfg config) load.Criteria {
	c := cfg.criteria
	if s.streamed {
		c.MaxP99 = cfg.streamMaxP99
	}
	return c
}

// requests builds what each system sends: the same chat completion, streamed for C and D.
func requests(cfg config, plainURL, gatewayURL string) (plain, gateway, plainStream, gatewayStream load.Request) {
	base := func(url string, stream bool) load.Request {
		h := http.Header{"Content-Type": {"application/json"}}
		if stream {
			h.Set("x-llmsim-output-tokens", strconv.Itoa(cfg.streamTokens))
			h.Set("x-llmsim-token-delay", cfg.streamTokenDelay.String())
		}
		return load.Request{
			URL:        url + "/v1/chat/completions",
			Body:       []byte(stack.ChatBody("qwen3", stream)),
			Header:     h,
			UserHeader: stack.UserHeader,
			Users:      cfg.users,
		}
	}
	return base(plainURL, false), base(gatewayURL, false), base(plainURL, true), base(gatewayURL, true)
}

// overheadPhase searches each system's max sustained rate, then runs every system at fixed
// fractions of the floor's max. Systems take turns so that machine noise spreads over all.
// extProcOnly, when not nil, is a gateway without quotas (system E); lite, when not nil, the
// LiteLLM proxy (system L).
func overheadPhase(ctx context.Context, cfg config, plain *stack.Plain, gws gateways, lite *stack.LiteLLM, sim *proc.Process, logger *slog.Logger) ([]*report.System, error) {
	systems := overheadSystems(cfg, plain, gws, sim)
	if lite != nil {
		systems = append(systems, liteLLMSystem(cfg, lite, sim))
	}
	out, err := measureOverhead(ctx, cfg, systems, logger)
	if err == nil {
		counted := map[string]*stack.Gateway{"B": gws.main, "C": gws.main, "V": gws.envoyStreams}
		for _, s := range systems {
			gw := counted[s.rep.Key]
			if gw == nil {
				continue
			}
			if s.rep.MessagesPerRequest, err = messagesPerRequest(ctx, s, gw); err != nil {
				return out, fmt.Errorf("%s's messages per request: %w", s.rep.Key, err)
			}
			logger.Info("ext_proc messages per request", "system", s.rep.Key, "messages", s.rep.MessagesPerRequest)
		}
	}
	return out, err
}

// messagesPerRequest runs s at a low rate and divides the ext_proc messages gw's tollgate
// received meanwhile by the requests answered.
func messagesPerRequest(ctx context.Context, s *loadedSystem, gw *stack.Gateway) (float64, error) {
	before, err := gw.ExtProcMessages()
	if err != nil {
		return 0, err
	}
	r := load.Run(ctx, s.client, s.req, messagesRate, messagesDuration, load.Options{})
	after, err := gw.ExtProcMessages()
	if err != nil {
		return 0, err
	}
	if r.Requests == 0 {
		return 0, errors.New("no request answered")
	}
	return (after - before) / float64(r.Requests), nil
}

// The run that counts messages per request: low enough for every system to sustain.
const (
	messagesRate     = 50
	messagesDuration = 2 * time.Second
)

// gateways are the tollgate gateways of the overhead phase: B's (and C's), and when not nil
// X's (a do-nothing ext_proc server) and B's variants: E's (no quotas), K's (checks only, no
// reservations), S's (split into processes, quota checks over gRPC), G's (another
// GOMAXPROCS), U's (the ext_proc server on a Unix socket), R's (Redis on a Unix socket), V's
// (Envoy reads streams' usage), W's (V's configuration with the do-nothing server) and Z's (X
// with a Redis round trip per request).
type gateways struct {
	main, extProcOnly, checkOnly, null, split, compared, unixSocket, redisSocket *stack.Gateway
	envoyStreams, nullEnvoyStreams, nullRedis                                    *stack.Gateway
}

// overheadSystems are A, B and C, and the floors and variants that run.
func overheadSystems(cfg config, plain *stack.Plain, gws gateways, sim *proc.Process) []*loadedSystem {
	gw, extProcOnly := gws.main, gws.extProcOnly
	self := os.Getpid()
	plainReq, gwReq, plainStream, gwStream := requests(cfg, plain.URL, gw.URL)
	plainPids := map[string]int{"envoy": plain.Envoy.Pid(), "llmsim": sim.Pid(), "load generator": self}
	gatewayPids := func(g *stack.Gateway) map[string]int {
		pids := g.Pids()
		pids["llmsim"], pids["load generator"] = sim.Pid(), self
		return pids
	}
	gwPids := gatewayPids(gw)
	streamNote := fmt.Sprintf(", streamed (SSE, %d tokens per response, %s apart)", cfg.streamTokens, cfg.streamTokenDelay)
	systems := []*loadedSystem{
		{rep: &report.System{Key: "A", Name: "plain Envoy, static route to llmsim (the floor)"}, req: plainReq, pids: plainPids},
		{rep: &report.System{Key: "B", Name: gatewayName(cfg), Floor: "A"}, req: gwReq, pids: gwPids},
		{rep: &report.System{Key: "C", Name: "B" + streamNote, Floor: "A"}, req: gwStream, pids: gwPids, streamed: true},
	}
	if cfg.streamFloor {
		systems[2].rep.Floor = "D"
		systems = append(systems, &loadedSystem{rep: &report.System{Key: "D", Name: "A" + streamNote}, req: plainStream, pids: plainPids, streamed: true})
	}
	if gws.null != nil {
		// B's and C's floor from here on: what the same exchange costs with no work done in it.
		pids := gatewayPids(gws.null)
		delete(pids, "redis") // idle: nothing calls the ratelimit service
		x, y := gwReq, gwStream
		x.URL = gws.null.URL + "/v1/chat/completions"
		y.URL = x.URL
		systems[1].rep.Floor, systems[2].rep.Floor = "X", "Y"
		systems = append(systems,
			&loadedSystem{rep: &report.System{Key: "X", Name: "B's Envoy configuration with a do-nothing ext_proc server (B's floor)", Floor: "A"}, req: x, pids: pids},
			&loadedSystem{rep: &report.System{Key: "Y", Name: "X" + streamNote + " (C's floor)", Floor: "A"}, req: y, pids: pids, streamed: true})
	}
	if gws.nullRedis != nil {
		z := gwReq
		z.URL = gws.nullRedis.URL + "/v1/chat/completions"
		systems = append(systems, &loadedSystem{rep: &report.System{Key: "Z", Name: "X with one Redis round trip (PING) per request before the body is answered: the floor of a quota checked in Redis on the request's path", Floor: "X"},
			req: z, pids: gatewayPids(gws.nullRedis)})
	}
	if gws.envoyStreams != nil {
		// C's requests on a gateway where Envoy reads streams' usage, and its own floor.
		v := gwStream
		v.URL = gws.envoyStreams.URL + "/v1/chat/completions"
		systems = append(systems, &loadedSystem{rep: &report.System{Key: "V", Name: "C with Envoy reading the streams' usage (extProc.streamUsage: envoy)", Floor: "A"},
			req: v, pids: gatewayPids(gws.envoyStreams), streamed: true})
		if gws.nullEnvoyStreams != nil {
			pids := gatewayPids(gws.nullEnvoyStreams)
			delete(pids, "redis")
			w := gwStream
			w.URL = gws.nullEnvoyStreams.URL + "/v1/chat/completions"
			systems[len(systems)-1].rep.Floor = "W"
			systems = append(systems, &loadedSystem{rep: &report.System{Key: "W", Name: "V's Envoy configuration with the do-nothing ext_proc server, streams marked for Envoy (V's floor)", Floor: "A"},
				req: w, pids: pids, streamed: true})
		}
	}
	// B's variants: one lever changed each, the same JSON requests.
	variants := []struct {
		gw        *stack.Gateway
		key, name string
	}{
		{extProcOnly, "E", "B without quotas: ext_proc only (model routing, usage accounting), no ratelimit calls"},
		{gws.split, "S", "B split: `tollgate serve` and `tollgate ratelimit` as processes of their own, quota checks over loopback gRPC"},
		{gws.unixSocket, "U", "B with Envoy reaching the ext_proc server over a Unix socket"},
		{gws.redisSocket, "R", "B with tollgate and the ratelimit service reaching Redis over a Unix socket"},
		{gws.compared, "G", fmt.Sprintf("B with %s in tollgate's environment", strings.Join(cfg.comparedEnv(), " "))},
		{gws.checkOnly, "K", "B checking quotas only: nothing reserved at admission, the whole cost charged at the end"},
	}
	for _, v := range variants {
		if v.gw == nil {
			continue
		}
		req := gwReq
		req.URL = v.gw.URL + "/v1/chat/completions"
		systems = append(systems, &loadedSystem{
			rep:  &report.System{Key: v.key, Name: v.name, Floor: floorOf(gws)},
			req:  req,
			pids: gatewayPids(v.gw),
		})
	}
	return systems
}

// gatewayName says what B is.
func gatewayName(cfg config) string {
	if cfg.inProcess {
		return "tollgate run: the ext_proc server with the ratelimit service in one process (quota checks in-process), redis-server"
	}
	return "tollgate: ext_proc + ratelimit check and charge (ratelimit service + redis-server)"
}

// floorOf is the floor of the gateways' JSON systems: X when it runs, else A.
func floorOf(gws gateways) string {
	if gws.null != nil {
		return "X"
	}
	return "A"
}

// liteLLMSystem is L: the LiteLLM proxy, sent the same request as A and B (it ignores the user
// header). Its CPU is its process tree's: uvicorn's supervisor and its workers.
func liteLLMSystem(cfg config, lite *stack.LiteLLM, sim *proc.Process) *loadedSystem {
	req, _, _, _ := requests(cfg, lite.URL, lite.URL)
	version := lite.Version
	if version == "" {
		version = "(version unknown)"
	}
	return &loadedSystem{
		rep:   &report.System{Key: "L", Floor: "A", Name: fmt.Sprintf("LiteLLM proxy %s, routing only (%d uvicorn workers; no database, callbacks, caching or key checks)", version, lite.Workers)},
		req:   req,
		pids:  map[string]int{"llmsim": sim.Pid(), "load generator": os.Getpid()},
		trees: map[string]int{"litellm": lite.Proc.Pid()},
		// A's fractions are many times L's capacity: such a run takes the client timeout to
		// end, then the proxy works through the abandoned requests for as long again.
		maxOverload: liteLLMMaxOverload,
		drain:       true,
	}
}

// liteLLMMaxOverload is the highest fixed rate L runs, as a multiple of its max.
const liteLLMMaxOverload = 2

// skipReason says why s does not run at rate, or "" when it does.
func (s *loadedSystem) skipReason(rate float64) string {
	if s.maxOverload <= 0 || rate <= s.maxOverload*s.rep.Max {
		return ""
	}
	return fmt.Sprintf("over %g× %s's max (%.0f req/s)", s.maxOverload, s.rep.Key, s.rep.Max)
}

// quiesce waits, when the system drains, until its process trees are idle.
func (s *loadedSystem) quiesce(ctx context.Context, logger *slog.Logger) {
	if !s.drain || len(s.trees) == 0 {
		return
	}
	start := time.Now()
	cpu := func() time.Duration {
		var t time.Duration
		for _, d := range usage(nil, s.trees) {
			t += d
		}
		return t
	}
	ok := quiet(ctx, cpu, idlePeriod, idleCPU, drainTimeout)
	switch took := time.Since(start); {
	case ctx.Err() != nil:
	case !ok:
		logger.Warn("still busy after the run", "system", s.rep.Key, "waited", took.Round(time.Second))
	case took > 2*idlePeriod:
		logger.Info("drained", "system", s.rep.Key, "took", took.Round(100*time.Millisecond))
	}
}

const (
	// idlePeriod and idleCPU define idle: less than 5% of one CPU.
	idlePeriod, idleCPU = 500 * time.Millisecond, 25 * time.Millisecond
	drainTimeout        = 2 * time.Minute
)

// quiet reads cpu every period until it grows by less than idle in one period (true), or
// until timeout passes or ctx ends (false).
func quiet(ctx context.Context, cpu func() time.Duration, period, idle, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	last := cpu()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(period):
		}
		now := cpu()
		if now-last < idle {
			return true
		}
		last = now
	}
	return false
}

// measureOverhead runs the search and the fixed rates over systems, the floor first.
func measureOverhead(ctx context.Context, cfg config, systems []*loadedSystem, logger *slog.Logger) ([]*report.System, error) {
	out := make([]*report.System, len(systems))
	for i, s := range systems {
		s.client = load.Client(30 * time.Second)
		s.search = load.NewSearch(cfg.startRate, cfg.growth, cfg.maxRate, cfg.refine, s.criteria(cfg))
		out[i] = s.rep
	}
	opts := load.Options{MaxWorkers: cfg.maxWorkers}

	// Warm up: connections, Envoy's and the Go runtimes' first allocations, Redis keys.
	for _, s := range systems {
		r := load.Run(ctx, s.client, s.req, cfg.startRate, cfg.warmup, opts)
		logger.Info("warm-up", "system", s.rep.Key, "result", r.String())
		s.quiesce(ctx, logger)
	}

	// Max sustained throughput: one step per system per round.
	for round := 0; ctx.Err() == nil; round++ {
		ran := false
		for _, s := range systems {
			rate, ok := s.search.Next()
			if !ok {
				continue
			}
			ran = true
			r := load.Run(ctx, s.client, s.req, rate, cfg.stepDuration, opts)
			if ctx.Err() != nil {
				break
			}
			s.search.Record(r)
			step := s.search.Steps[len(s.search.Steps)-1]
			logger.Info("search step", "system", s.rep.Key, "sustained", step.Sustained, "why not", step.Reason, "result", r.String())
			settle(ctx, step.Sustained)
			s.quiesce(ctx, logger)
		}
		if !ran {
			break
		}
	}
	for _, s := range systems {
		s.rep.Search = s.search.Steps
		s.rep.Max, _ = s.search.Max()
		logger.Info("max sustained", "system", s.rep.Key, "rate", s.rep.Max)
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	floor := systems[0].rep.Max
	if floor == 0 {
		return out, fmt.Errorf("the floor (%s) sustained no rate: nothing to take fractions of", systems[0].rep.Key)
	}

	// Fixed rates, as fractions of the floor's max; the order of systems rotates per rate.
	// One more rate, half of B's max, is one every system should sustain: there the
	// latencies and the CPU per request compare systems that are not overloaded. With L, half
	// of L's max is one more such rate, where B and L compare.
	type fixed struct {
		rate  float64
		label string
	}
	var rates []fixed
	for _, f := range cfg.fractions {
		rates = append(rates, fixed{math.Round(f * floor), fmt.Sprintf("%.0f%% of %s's max", 100*f, systems[0].rep.Key)})
	}
	for _, s := range systems[1:] {
		if k := s.rep.Key; (k == "B" || k == "L") && s.rep.Max > 0 {
			rates = append(rates, fixed{math.Round(s.rep.Max / 2), report.HalfMaxLabel(k)})
		}
	}
	for i, fr := range rates {
		rate, f := fr.rate, fr.rate/floor
		for j := range systems {
			s := systems[(i+j)%len(systems)]
			if why := s.skipReason(rate); why != "" {
				s.rep.Fixed = append(s.rep.Fixed, report.Point{Fraction: f, Rate: rate, Label: fr.label, Skipped: why})
				logger.Info("fixed rate skipped", "system", s.rep.Key, "rate", rate, "why", why)
				continue
			}
			before := usage(s.pids, s.trees)
			r := load.Run(ctx, s.client, s.req, rate, cfg.fixedDuration, opts)
			after := usage(s.pids, s.trees)
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			s.rep.Fixed = append(s.rep.Fixed, report.Point{Fraction: f, Rate: rate, Label: fr.label, Result: r, CPUPerRequest: perRequest(before, after, r.Requests)})
			ok, _ := s.criteria(cfg).Sustained(r)
			logger.Info("fixed rate", "system", s.rep.Key, "fraction", f, "result", r.String())
			settle(ctx, ok)
			s.quiesce(ctx, logger)
		}
	}
	return out, nil
}

// settle gives queues a moment to drain between runs, longer after an overload.
func settle(ctx context.Context, sustained bool) {
	d := 500 * time.Millisecond
	if !sustained {
		d = 3 * time.Second
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// usage reads the CPU time of each named process, and of each named process tree; unreadable
// ones are left out.
func usage(pids, trees map[string]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range pids {
		if u, err := proc.PidUsage(pid); err == nil {
			out[name] = u.CPU
		}
	}
	for name, pid := range trees {
		if u, err := proc.TreeUsage(pid); err == nil {
			out[name] = u.CPU
		}
	}
	return out
}

func perRequest(before, after map[string]time.Duration, requests uint64) map[string]time.Duration {
	if requests == 0 {
		return nil
	}
	out := map[string]time.Duration{}
	for name, a := range after {
		if b, ok := before[name]; ok {
			out[name] = (a - b) / time.Duration(requests)
		}
	}
	return out
}
