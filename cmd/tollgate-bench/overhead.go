package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
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
	// pids names the processes whose CPU a request of this system costs.
	pids   map[string]int
	search *load.Search
}

// requests builds what each system sends: the same chat completion, streamed for C and D.
func requests(cfg config, plainURL, gatewayURL string) (plain, gateway, plainStream, gatewayStream load.Request) {
	base := func(url string, stream bool) load.Request {
		h := http.Header{"Content-Type": {"application/json"}}
		if stream {
			h.Set("x-llmsim-output-tokens", strconv.Itoa(cfg.streamTokens))
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
// extProcOnly, when not nil, is a gateway without quotas (system E).
func overheadPhase(ctx context.Context, cfg config, plain *stack.Plain, gw, extProcOnly *stack.Gateway, sim *proc.Process, logger *slog.Logger) ([]*report.System, error) {
	self := os.Getpid()
	plainReq, gwReq, plainStream, gwStream := requests(cfg, plain.URL, gw.URL)
	plainPids := map[string]int{"envoy": plain.Envoy.Pid(), "llmsim": sim.Pid(), "load generator": self}
	gatewayPids := func(g *stack.Gateway) map[string]int {
		return map[string]int{
			"envoy": g.Envoy.Pid(), "llmsim": sim.Pid(), "load generator": self,
			"tollgate": g.ControlPlane.Pid(), "ratelimit": g.RateLimit.Pid(), "redis": g.Redis.Pid(),
		}
	}
	gwPids := gatewayPids(gw)
	streamNote := fmt.Sprintf(", streamed (SSE, %d tokens per response)", cfg.streamTokens)
	systems := []*loadedSystem{
		{rep: &report.System{Key: "A", Name: "plain Envoy, static route to llmsim (the floor)"}, req: plainReq, pids: plainPids},
		{rep: &report.System{Key: "B", Name: "tollgate: ext_proc + ratelimit check and charge (ratelimit service + redis-server)", Floor: "A"}, req: gwReq, pids: gwPids},
		{rep: &report.System{Key: "C", Name: "B" + streamNote, Floor: "A"}, req: gwStream, pids: gwPids},
	}
	if cfg.streamFloor {
		systems[2].rep.Floor = "D"
		systems = append(systems, &loadedSystem{rep: &report.System{Key: "D", Name: "A" + streamNote + " (C's floor)"}, req: plainStream, pids: plainPids})
	}
	if extProcOnly != nil {
		req := gwReq
		req.URL = extProcOnly.URL + "/v1/chat/completions"
		systems = append(systems, &loadedSystem{
			rep:  &report.System{Key: "E", Name: "B without quotas: ext_proc only (model routing, usage accounting), no ratelimit calls", Floor: "A"},
			req:  req,
			pids: gatewayPids(extProcOnly),
		})
	}
	out := make([]*report.System, len(systems))
	for i, s := range systems {
		s.client = load.Client(30 * time.Second)
		s.search = load.NewSearch(cfg.startRate, cfg.growth, cfg.maxRate, cfg.refine, cfg.criteria)
		out[i] = s.rep
	}
	opts := load.Options{MaxWorkers: cfg.maxWorkers}

	// Warm up: connections, Envoy's and the Go runtimes' first allocations, Redis keys.
	for _, s := range systems {
		r := load.Run(ctx, s.client, s.req, cfg.startRate, cfg.warmup, opts)
		logger.Info("warm-up", "system", s.rep.Key, "result", r.String())
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
		return out, fmt.Errorf("the plain Envoy sustained no rate: nothing to take fractions of")
	}

	// Fixed rates, as fractions of the floor's max; the order of systems rotates per rate.
	// One more rate, half of B's max, is one every system should sustain: there the
	// latencies and the CPU per request compare systems that are not overloaded.
	type fixed struct {
		rate  float64
		label string
	}
	var rates []fixed
	for _, f := range cfg.fractions {
		rates = append(rates, fixed{math.Round(f * floor), fmt.Sprintf("%.0f%% of A's max", 100*f)})
	}
	if b := systems[1].rep.Max; b > 0 {
		rates = append(rates, fixed{math.Round(b / 2), "50% of B's max"})
	}
	for i, fr := range rates {
		rate, f := fr.rate, fr.rate/floor
		for j := range systems {
			s := systems[(i+j)%len(systems)]
			before := usage(s.pids)
			r := load.Run(ctx, s.client, s.req, rate, cfg.fixedDuration, opts)
			after := usage(s.pids)
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			s.rep.Fixed = append(s.rep.Fixed, report.Point{Fraction: f, Rate: rate, Label: fr.label, Result: r, CPUPerRequest: perRequest(before, after, r.Requests)})
			ok, _ := cfg.criteria.Sustained(r)
			logger.Info("fixed rate", "system", s.rep.Key, "fraction", f, "result", r.String())
			settle(ctx, ok)
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

// usage reads the CPU time of each named process; unreadable ones are left out.
func usage(pids map[string]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range pids {
		if u, err := proc.PidUsage(pid); err == nil {
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
