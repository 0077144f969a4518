// Package report holds the benchmark's results and renders them: a Markdown summary with the
// targets checked, a JSON copy of every number, and a PNG of latency against request rate.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/reload"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/scale"
)

// Report is one benchmark run.
type Report struct {
	Started, Finished time.Time
	Machine           Machine
	Settings          Settings
	// Systems are the compared data planes, the floor (A) first; empty when the overhead
	// phase did not run.
	Systems  []*System
	Reload   *Reload
	Scale    *Scale
	Overload *Overload
	// Profiles are the pprof summaries taken, in order.
	Profiles []Profile
	// Timings are tollgate's own histograms of its share of B's latency, read while B was
	// profiled (TimingsUnder says at what load); empty when the profile phase did not run.
	Timings      []Timing `json:",omitempty"`
	TimingsUnder string   `json:",omitempty"`
	// Notes are remarks the run wants a reader to see (skipped phases, errors).
	Notes []string
}

// Machine describes where and how loaded the run was.
type Machine struct {
	CPUs                    int
	GoVersion, EnvoyVersion string
	LoadBefore, LoadAfter   string // /proc/loadavg
	KernelRelease, CPUModel string
}

// Settings are the knobs the run used.
type Settings struct {
	StepDuration, FixedDuration time.Duration
	Criteria                    load.Criteria
	EnvoyConcurrency            int
	// TollgateGoMaxProcs is GOMAXPROCS of tollgate's processes; 0 means Go's default.
	TollgateGoMaxProcs int
	Users              int
	StreamTokens       int
	// StreamMaxP99 replaces Criteria.MaxP99 for streamed systems.
	StreamMaxP99 time.Duration `json:",omitempty"`
	Debounce     time.Duration
	Edits        int
}

// System is one data plane under load.
type System struct {
	// Key is "A", "B", ...; Name says what it is.
	Key, Name string
	// Floor is the key of the plain Envoy system sending the same requests, for systems that
	// have one other than A.
	Floor string
	// Search holds every step of the max-throughput search.
	Search []load.Step
	// Max is the highest sustained rate (requests per second).
	Max float64
	// Fixed are the runs at fractions of the floor's max, in rate order.
	Fixed []Point
	// MessagesPerRequest is how many ext_proc messages tollgate received per request, from
	// its own counter over a run of its own; 0 when not measured.
	MessagesPerRequest float64 `json:",omitempty"`
}

// Point is one fixed-rate run.
type Point struct {
	// Fraction of the floor's max that Rate is.
	Fraction, Rate float64
	// Label says how Rate was chosen, such as "25% of A's max".
	Label  string
	Result load.Result
	// CPUPerRequest is each process's CPU time divided by the requests of the run.
	CPUPerRequest map[string]time.Duration
	// Skipped, when set, says why the system did not run at this rate (and Result is empty).
	Skipped string `json:",omitempty"`
}

// Reload holds the reload latencies.
type Reload struct {
	Envoy, RateLimit []time.Duration
	Debounce         time.Duration
}

// Scale holds the control plane's growth.
type Scale struct {
	Sizes         []scale.Size
	RateLimitLoad *scale.RateLimitLoad
}

// Timing is one of tollgate's latency histograms over a run: how many it timed, and its
// quantiles, estimated from the buckets as Prometheus does.
type Timing struct {
	What          string
	Count         int64
	P50, P90, P99 time.Duration
}

// Profile is one pprof profile and its top functions.
type Profile struct {
	Name, File, Top string
}

// WriteJSON writes every number of r to path.
func WriteJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// System returns the system with key k, or nil.
func (r *Report) System(k string) *System {
	for _, s := range r.Systems {
		if s.Key == k {
			return s
		}
	}
	return nil
}

func goMaxProcs(n int) string {
	if n == 0 {
		return "the GOMAXPROCS each command picks (`tollgate run`: half the CPUs, the others: the CPU count)"
	}
	return fmt.Sprintf("GOMAXPROCS=%d", n)
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// Markdown writes the summary.
func Markdown(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# tollgate benchmark\n\n")
	fmt.Fprintf(&b, "Run %s → %s (%s). %d CPUs (%s), kernel %s, %s, %s.\n\n",
		r.Started.UTC().Format(time.RFC3339), r.Finished.UTC().Format(time.RFC3339),
		r.Finished.Sub(r.Started).Round(time.Second), r.Machine.CPUs, r.Machine.CPUModel,
		r.Machine.KernelRelease, r.Machine.GoVersion, r.Machine.EnvoyVersion)
	everything := "load generator, Envoy, tollgate, the ratelimit service, Redis and llmsim"
	if r.System("L") != nil {
		everything = "load generator, Envoy, tollgate, the ratelimit service, Redis, LiteLLM and llmsim"
	}
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) before: `%s`, after: `%s`. Everything — %s — shares these CPUs.\n\n",
		r.Machine.LoadBefore, r.Machine.LoadAfter, everything)
	targets(&b, r)
	overhead(&b, r)
	reloads(&b, r)
	overloadSection(&b, r)
	scaling(&b, r)
	timings(&b, r)
	profiles(&b, r)
	if len(r.Notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// targets checks the goals the benchmark exists for.
func targets(b *strings.Builder, r *Report) {
	type row struct{ goal, got, verdict string }
	var rows []row
	a, bs, x := r.System("A"), r.System("B"), r.System("X")
	if x != nil && bs != nil && x.Max > 0 {
		rows = append(rows, row{"B max throughput ≥ 85% of X (JSON)", maxRatio(bs, x), verdict(bs.Max >= 0.85*x.Max)})
		// At half of B's max, a rate both sustain: latency and CPU per request.
		if pb, px := pointLabelled(bs, HalfMaxLabel("B")), pointLabelled(x, HalfMaxLabel("B")); pb != nil && px != nil {
			diff := pb.Result.P50 - px.Result.P50
			rows = append(rows, row{"B p50 ≤ X p50 + 0.5 ms at " + HalfMaxLabel("B"),
				fmt.Sprintf("%s ms vs %s ms (%+.2f ms) at %.0f req/s", msf(pb.Result.P50), msf(px.Result.P50), float64(diff)/float64(time.Millisecond), px.Rate),
				verdict(diff <= time.Millisecond/2 && pb.Result.Success >= 0.999)})
			if cx, cb := totalCPU(px.CPUPerRequest), totalCPU(pb.CPUPerRequest); cx > 0 && cb > 0 {
				rows = append(rows, row{"B CPU per request ≤ 1.3× X (all processes) at " + HalfMaxLabel("B"),
					fmt.Sprintf("%d µs vs %d µs = %s", cb.Microseconds(), cx.Microseconds(), ratio(float64(cb), float64(cx))),
					verdict(cb*10 <= 13*cx)})
			}
		}
	}
	if c, y := r.System("C"), r.System("Y"); c != nil && y != nil && y.Max > 0 {
		rows = append(rows, row{"C max throughput ≥ 90% of Y (streamed)", maxRatio(c, y), verdict(c.Max >= 0.9*y.Max)})
	}
	if v, w := r.System("V"), r.System("W"); v != nil && w != nil && w.Max > 0 {
		rows = append(rows, row{"V max throughput ≥ 90% of W (streamed, usage read by Envoy)", maxRatio(v, w), verdict(v.Max >= 0.9*w.Max)})
	}
	if a != nil && bs != nil && a.Max > 0 {
		rows = append(rows, row{"B max throughput ≥ 45% of A", maxRatio(bs, a), verdict(bs.Max >= 0.45*a.Max)})
		if pa, pb := pointAt(a, 0.5), pointAt(bs, 0.5); pa != nil && pb != nil {
			rows = append(rows, row{"(context, no target) B p50 at 50% of A's max",
				fmt.Sprintf("%s ms vs %s ms (+%s ms) at %.0f req/s", msf(pb.Result.P50), msf(pa.Result.P50), msf(pb.Result.P50-pa.Result.P50), pa.Rate),
				"–"})
		}
	}
	if bs, l := r.System("B"), r.System("L"); bs != nil && l != nil && l.Max > 0 {
		rows = append(rows, row{"B max throughput ≥ 20× L (LiteLLM, routing only)",
			fmt.Sprintf("%.0f / %.0f req/s = %s", bs.Max, l.Max, ratio(bs.Max, l.Max)), verdict(bs.Max >= 20*l.Max)})
	}
	if c, d := r.System("C"), r.System("D"); c != nil && d != nil && d.Max > 0 {
		rows = append(rows, row{"(context, no target) C vs D, plain Envoy streaming", maxRatio(c, d), "–"})
	}
	if a, e := r.System("A"), r.System("E"); a != nil && e != nil && a.Max > 0 {
		rows = append(rows, row{"(context, no target) E, ext_proc without rate limiting: max throughput vs A", maxRatio(e, a), "–"})
	}
	if rl := r.Reload; rl != nil {
		if len(rl.Envoy) > 0 {
			p99 := reload.Percentile(rl.Envoy, 0.99)
			rows = append(rows, row{"reload p99 ≤ 500 ms (save → Envoy serves it)", msf(p99) + " ms", verdict(p99 <= 500*time.Millisecond)})
		}
		if len(rl.RateLimit) > 0 {
			p99 := reload.Percentile(rl.RateLimit, 0.99)
			rows = append(rows, row{"reload p99 ≤ 500 ms (save → ratelimit service has the limit)", msf(p99) + " ms", verdict(p99 <= 500*time.Millisecond)})
		}
	}
	if sc := r.Scale; sc != nil && len(sc.Sizes) > 0 {
		last := sc.Sizes[len(sc.Sizes)-1]
		rows = append(rows, row{fmt.Sprintf("%d quota rules: translate + publish < 1 s", last.N),
			msf(last.TranslatePublish()) + " ms", verdict(last.TranslatePublish() < time.Second)})
		if g, ok := growth(sc.Sizes); ok {
			rows = append(rows, row{"linear growth (time per rule stays flat)", g.text, verdict(g.linear)})
		}
	}
	if len(rows) == 0 {
		return
	}
	b.WriteString("## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, x := range rows {
		fmt.Fprintf(b, "| %s | %s | %s |\n", x.goal, x.got, x.verdict)
	}
	b.WriteString("\n")
}

type growthCheck struct {
	text   string
	linear bool
}

// growth compares translate+publish time per rule between the smallest size of at least 100
// rules (below that, fixed costs dominate) and the largest.
func growth(sizes []scale.Size) (growthCheck, bool) {
	var first *scale.Size
	for i := range sizes {
		if sizes[i].N >= 100 {
			first = &sizes[i]
			break
		}
	}
	last := sizes[len(sizes)-1]
	if first == nil || first.N == last.N || first.TranslatePublish() <= 0 {
		return growthCheck{}, false
	}
	per := func(s scale.Size) float64 { return float64(s.TranslatePublish().Microseconds()) / float64(s.N) }
	f := per(last) / per(*first)
	return growthCheck{
		text: fmt.Sprintf("%.1f µs/rule at %d, %.1f µs/rule at %d (×%.2f)", per(*first), first.N, per(last), last.N, f),
		// Within a factor of two per rule across a 100× range is linear up to noise and
		// cache effects; quadratic growth would be ×100.
		linear: f <= 2,
	}, true
}

// maxRatio compares two systems' max sustained rates.
func maxRatio(s, floor *System) string {
	return fmt.Sprintf("%.0f / %.0f req/s = %.0f%%", s.Max, floor.Max, 100*s.Max/floor.Max)
}

// pointLabelled finds s's fixed-rate run with the given label.
func pointLabelled(s *System, label string) *Point {
	for i := range s.Fixed {
		if s.Fixed[i].Label == label {
			return &s.Fixed[i]
		}
	}
	return nil
}

// HalfMaxLabel labels the fixed rate at half of system key's max.
func HalfMaxLabel(key string) string { return "50% of " + key + "'s max" }

func (p Point) label() string {
	if p.Label != "" {
		return p.Label
	}
	return fmt.Sprintf("%.0f%% of A's max", 100*p.Fraction)
}

// pointAt finds the fixed-rate run at a fraction of A's max. Rates are whole requests per
// second, so a run's fraction is only close to the one asked for (2563 of 5125.6 req/s is
// 0.50004).
func pointAt(s *System, fraction float64) *Point {
	const tolerance = 0.005
	for i := range s.Fixed {
		if math.Abs(s.Fixed[i].Fraction-fraction) < tolerance {
			return &s.Fixed[i]
		}
	}
	return nil
}

func overhead(b *strings.Builder, r *Report) {
	if len(r.Systems) == 0 {
		return
	}
	a := r.System("A")
	st := r.Settings
	b.WriteString("## Data-plane overhead\n\n")
	for _, s := range r.Systems {
		fmt.Fprintf(b, "- **%s**: %s\n", s.Key, s.Name)
	}
	streamBound := ""
	if st.StreamMaxP99 > 0 {
		streamBound = fmt.Sprintf(" (%s ms for streamed systems, whose streams last a while themselves)", msf(st.StreamMaxP99))
	}
	fmt.Fprintf(b, "\nOpen-loop load (vegeta, constant rate). *Sustained* means: ≥ %.1f%% 2xx answers, p99 ≤ %s ms%s, "+
		"and ≥ %.0f%% of the offered rate both sent and answered, over a %s step. The search multiplies the rate "+
		"until a step fails, then bisects; systems take turns step by step so machine noise hits all of them. "+
		"Envoy runs with --concurrency %d; tollgate's processes with %s; the gateways rotate %d users (B and C with per-user quotas that never run out); "+
		"quota checks fail closed, so an overloaded ratelimit path counts as errors.\n\n",
		100*st.Criteria.MinSuccess, msf(st.Criteria.MaxP99), streamBound, 100*st.Criteria.MinDelivered, st.StepDuration,
		st.EnvoyConcurrency, goMaxProcs(st.TollgateGoMaxProcs), st.Users)
	b.WriteString("### Max sustained throughput\n\n| system | max req/s | vs A | vs own floor | p50 ms | p99 ms | first failing step |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Systems {
		p50, p99 := "–", "–"
		if _, best := searchMax(s); best != nil {
			p50, p99 = msf(best.Result.P50), msf(best.Result.P99)
		}
		vs, vsFloor := "–", "–"
		if a != nil {
			vs = ratio(s.Max, a.Max)
		}
		if f := r.System(s.Floor); f != nil {
			vsFloor = fmt.Sprintf("%s (%s)", ratio(s.Max, f.Max), f.Key)
		}
		fmt.Fprintf(b, "| %s | %.0f | %s | %s | %s | %s | %s |\n", s.Key, s.Max, vs, vsFloor, p50, p99, firstFailure(s))
	}
	var msgs []string
	for _, s := range r.Systems {
		if s.MessagesPerRequest > 0 {
			msgs = append(msgs, fmt.Sprintf("%s %.1f", s.Key, s.MessagesPerRequest))
		}
	}
	if len(msgs) > 0 {
		fmt.Fprintf(b, "\next_proc messages per request (tollgate's tollgate_extproc_messages_total over a run at a low rate): %s.\n", strings.Join(msgs, ", "))
	}
	b.WriteString("\n### Latency at fixed rates\n\n")
	fmt.Fprintf(b, "Each run lasts %s; the order of systems rotates from rate to rate.\n\n", st.FixedDuration)
	b.WriteString("| rate | system | sent/s | success | p50 ms | p90 ms | p99 ms | p50 vs A | p99 vs A | p50 vs own floor |\n|---|---|---|---|---|---|---|---|---|---|\n")
	if a != nil {
		for i, pa := range a.Fixed {
			for _, s := range r.Systems {
				if i >= len(s.Fixed) {
					continue
				}
				p := s.Fixed[i]
				if p.Skipped != "" {
					fmt.Fprintf(b, "| %.0f req/s (%s) | %s | skipped: %s | – | – | – | – | – | – | – |\n", p.Rate, p.label(), s.Key, p.Skipped)
					continue
				}
				vsFloor := "–"
				if f := r.System(s.Floor); f != nil && i < len(f.Fixed) {
					vsFloor = fmt.Sprintf("%s (%s)", ratio(float64(p.Result.P50), float64(f.Fixed[i].Result.P50)), f.Key)
				}
				fmt.Fprintf(b, "| %.0f req/s (%s) | %s | %.0f | %.2f%% | %s | %s | %s | %s | %s | %s |\n",
					p.Rate, p.label(), s.Key, p.Result.Sent, 100*p.Result.Success,
					msf(p.Result.P50), msf(p.Result.P90), msf(p.Result.P99),
					ratio(float64(p.Result.P50), float64(pa.Result.P50)), ratio(float64(p.Result.P99), float64(pa.Result.P99)), vsFloor)
			}
		}
	}
	cpuTable(b, r)
	costSplit(b, r)
	versusLiteLLM(b, r)
	b.WriteString("\n![latency vs rate](latency.png)\n\n")
}

// costSplit splits B's CPU per request into the floor (A), the ext_proc round trips (E − A)
// and rate limiting (B − E), per process, at the highest fixed rate that A, E and B all
// sustained. A process's CPU per request falls as its load rises (more work per wake-up), so
// the systems are compared only where none of them is overloaded. It needs system E.
func costSplit(b *strings.Builder, r *Report) {
	a, e, bs := r.System("A"), r.System("E"), r.System("B")
	if a == nil || e == nil || bs == nil {
		return
	}
	idx := -1
	for i := range a.Fixed {
		if i >= len(e.Fixed) || i >= len(bs.Fixed) {
			break
		}
		all := true
		for _, p := range []Point{a.Fixed[i], e.Fixed[i], bs.Fixed[i]} {
			ok, _ := r.Settings.Criteria.Sustained(p.Result)
			all = all && ok && len(p.CPUPerRequest) > 0
		}
		if all && (idx < 0 || a.Fixed[i].Rate > a.Fixed[idx].Rate) {
			idx = i
		}
	}
	if idx < 0 {
		return
	}
	pa, pe, pb := a.Fixed[idx].CPUPerRequest, e.Fixed[idx].CPUPerRequest, bs.Fixed[idx].CPUPerRequest
	var comps []string
	for c := range pb {
		comps = append(comps, c)
	}
	sort.Strings(comps)
	fmt.Fprintf(b, "\n### Where B's CPU goes\n\nAt %.0f req/s, the highest fixed rate A, E and B all sustained: "+
		"B's CPU per request (µs) as the floor, plus what the ext_proc round trips add (E − A), plus what rate limiting "+
		"adds (B − E: tollgate's quota check and charge calls, the ratelimit service, Redis).\n\n", a.Fixed[idx].Rate)
	fmt.Fprintf(b, "| part | %s | total |\n|---|%s---|\n", strings.Join(comps, " | "), strings.Repeat("---|", len(comps)))
	row := func(name string, cpu func(c string) time.Duration) {
		var total time.Duration
		cells := make([]string, len(comps))
		for i, c := range comps {
			d := cpu(c)
			total += d
			cells[i] = fmt.Sprintf("%+.0f", float64(d)/float64(time.Microsecond))
		}
		fmt.Fprintf(b, "| %s | %s | %+.0f |\n", name, strings.Join(cells, " | "), float64(total)/float64(time.Microsecond))
	}
	row("floor (A)", func(c string) time.Duration { return pa[c] })
	row("ext_proc (E − A)", func(c string) time.Duration { return pe[c] - pa[c] })
	row("rate limiting (B − E)", func(c string) time.Duration { return pb[c] - pe[c] })
	row("B", func(c string) time.Duration { return pb[c] })
}

// versusLiteLLM puts B beside L: the max sustained rates, and at half of L's max, a rate both
// sustain unless L's max is above B's, the latencies and the CPU per request.
func versusLiteLLM(b *strings.Builder, r *Report) {
	bs, l := r.System("B"), r.System("L")
	if bs == nil || l == nil {
		return
	}
	idx := -1
	for i, p := range l.Fixed {
		if p.Label == HalfMaxLabel("L") && i < len(bs.Fixed) {
			idx = i
		}
	}
	b.WriteString("\n### tollgate (B) against LiteLLM (L)\n\n")
	if idx >= 0 {
		fmt.Fprintf(b, "The max sustained rates; the rest at %.0f req/s (%s). ", l.Fixed[idx].Rate, l.Fixed[idx].Label)
	}
	b.WriteString("B / L above 1× means B's figure is the higher one: better for throughput, worse for latency and CPU.\n\n")
	b.WriteString("| | B | L | B / L |\n|---|---|---|---|\n")
	fmt.Fprintf(b, "| max sustained req/s | %.0f | %.0f | %s |\n", bs.Max, l.Max, ratio(bs.Max, l.Max))
	if idx < 0 {
		return
	}
	pb, pl := bs.Fixed[idx], l.Fixed[idx]
	fmt.Fprintf(b, "| success | %.2f%% | %.2f%% | |\n", 100*pb.Result.Success, 100*pl.Result.Success)
	fmt.Fprintf(b, "| p50 ms | %s | %s | %s |\n", msf(pb.Result.P50), msf(pl.Result.P50), ratio(float64(pb.Result.P50), float64(pl.Result.P50)))
	fmt.Fprintf(b, "| p99 ms | %s | %s | %s |\n", msf(pb.Result.P99), msf(pl.Result.P99), ratio(float64(pb.Result.P99), float64(pl.Result.P99)))
	if len(pb.CPUPerRequest) == 0 || len(pl.CPUPerRequest) == 0 {
		return
	}
	for _, c := range []struct {
		name string
		of   func(map[string]time.Duration) time.Duration
	}{
		{"CPU µs per request, all processes", totalCPU},
		{"CPU µs per request, the gateway's processes (without llmsim and the load generator)", gatewayCPU},
	} {
		bv, lv := c.of(pb.CPUPerRequest), c.of(pl.CPUPerRequest)
		fmt.Fprintf(b, "| %s | %.0f | %.0f | %s |\n", c.name, us(bv), us(lv), ratio(float64(bv), float64(lv)))
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// totalCPU sums the CPU per request of every process.
func totalCPU(cpu map[string]time.Duration) time.Duration {
	var t time.Duration
	for _, d := range cpu {
		t += d
	}
	return t
}

// gatewayCPU leaves out the processes every system shares: the model and the load generator
// (named so by the overhead phase).
func gatewayCPU(cpu map[string]time.Duration) time.Duration {
	return totalCPU(cpu) - cpu["llmsim"] - cpu["load generator"]
}

// cpuTable shows where each request's CPU went, at the middle fixed rate.
func cpuTable(b *strings.Builder, r *Report) {
	var comps []string
	seen := map[string]bool{}
	for _, s := range r.Systems {
		for _, p := range s.Fixed {
			for c := range p.CPUPerRequest {
				if !seen[c] {
					seen[c] = true
					comps = append(comps, c)
				}
			}
		}
	}
	if len(comps) == 0 {
		return
	}
	sort.Strings(comps)
	b.WriteString("\n### CPU per request (µs), by process\n\nCPU time each process used during a fixed-rate run, divided by the requests of that run. " +
		"Only runs the system sustains (success ≥ 99.9%, p99 within the bound) say what a request costs; in an overloaded run, " +
		"failed requests are cheap and queues distort the figures.\n\n")
	fmt.Fprintf(b, "| rate | system | success | %s | total |\n|---|---|---|%s---|\n", strings.Join(comps, " | "), strings.Repeat("---|", len(comps)))
	for _, s := range r.Systems {
		for _, p := range s.Fixed {
			if p.Skipped != "" {
				continue
			}
			var total time.Duration
			cells := make([]string, len(comps))
			for i, c := range comps {
				d, ok := p.CPUPerRequest[c]
				if !ok {
					cells[i] = "–"
					continue
				}
				total += d
				cells[i] = fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond))
			}
			fmt.Fprintf(b, "| %.0f | %s | %.1f%% | %s | %.0f |\n", p.Rate, s.Key, 100*p.Result.Success, strings.Join(cells, " | "), float64(total)/float64(time.Microsecond))
		}
	}
}

func searchMax(s *System) (float64, *load.Step) {
	var best *load.Step
	for i := range s.Search {
		st := &s.Search[i]
		if st.Sustained && (best == nil || st.Result.Offered > best.Result.Offered) {
			best = st
		}
	}
	if best == nil {
		return 0, nil
	}
	return best.Result.Offered, best
}

// firstFailure names the lowest rate of the search that never held (a rate that failed once
// and then held on its retry did not fail) and why it failed.
func firstFailure(s *System) string {
	held := map[float64]bool{}
	for _, st := range s.Search {
		if st.Sustained {
			held[st.Result.Offered] = true
		}
	}
	var worst *load.Step
	for i := range s.Search {
		st := &s.Search[i]
		if !st.Sustained && !held[st.Result.Offered] && (worst == nil || st.Result.Offered < worst.Result.Offered) {
			worst = st
		}
	}
	if worst == nil {
		return "none (search cap reached)"
	}
	return fmt.Sprintf("%.0f req/s: %s", worst.Result.Offered, worst.Reason)
}

func reloads(b *strings.Builder, r *Report) {
	rl := r.Reload
	if rl == nil {
		return
	}
	b.WriteString("## Reload latency\n\n")
	fmt.Fprintf(b, "From saving the policy file (write + rename, as editors do) until the change is served, through "+
		"the real processes; the control plane's debounce is %s and is included.\n\n", rl.Debounce)
	b.WriteString("| change | edits | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n")
	row := func(name string, ds []time.Duration) {
		if len(ds) == 0 {
			return
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s |\n", name, len(ds),
			msf(reload.Percentile(ds, 0.5)), msf(reload.Percentile(ds, 0.99)), msf(reload.Percentile(ds, 1)))
	}
	row("model added → Envoy routes it (200)", rl.Envoy)
	row("limit changed → ratelimit service reports it (check only)", rl.RateLimit)
	b.WriteString("\n")
}

func scaling(b *strings.Builder, r *Report) {
	sc := r.Scale
	if sc == nil || len(sc.Sizes) == 0 {
		return
	}
	b.WriteString("## Control-plane scale\n\n")
	b.WriteString("In process: a policy with N models, N quotas and N user overrides; medians of several rounds. " +
		"*publish* goes into a fresh xDS server (nothing to reuse); *republish* is the next publish into the same server " +
		"with every limit changed, as a reload does. Retained heap is what the server keeps live for the policy after GC; " +
		"allocated is everything one parse + translate + publish allocates.\n\n")
	b.WriteString("| N | parse ms | translate ms | publish ms | translate+publish ms | republish ms | Envoy resources KiB | RateLimitConfig KiB | retained heap MiB | allocated MiB |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sc.Sizes {
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f |\n", s.N,
			msf(s.Parse), msf(s.Translate), msf(s.Publish), msf(s.TranslatePublish()), msf(s.Republish),
			float64(s.EnvoyBytes)/1024, float64(s.RateLimitBytes)/1024,
			float64(s.RetainedHeap)/(1<<20), float64(s.Allocated)/(1<<20))
	}
	if l := sc.RateLimitLoad; l != nil {
		fmt.Fprintf(b, "\nRatelimit service at N = %d: Publish took %s ms with the service connected; the service answered "+
			"with the new limit %s ms after Publish began.\n", l.N, msf(l.Publish), msf(l.Loaded))
	}
	b.WriteString("\n")
}

func timings(b *strings.Builder, r *Report) {
	if len(r.Timings) == 0 {
		return
	}
	fmt.Fprintf(b, "## Where tollgate's time goes\n\nFrom tollgate's own histograms (`tollgate_extproc_message_duration_seconds`, "+
		"`tollgate_quota_check_duration_seconds`), %s. The rest of a request's latency is Envoy, the network, the backend "+
		"and the wait for a CPU between them.\n\n| what | count | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|\n", r.TimingsUnder)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }
	for _, t := range r.Timings {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s |\n", t.What, t.Count, ms(t.P50), ms(t.P90), ms(t.P99))
	}
	b.WriteString("\n")
}

func profiles(b *strings.Builder, r *Report) {
	if len(r.Profiles) == 0 {
		return
	}
	b.WriteString("## Profiles\n\n")
	for _, p := range r.Profiles {
		fmt.Fprintf(b, "### %s\n\n`%s` (open with `go tool pprof -http : %s`)\n\n```\n%s\n```\n\n", p.Name, p.File, p.File, strings.TrimSpace(p.Top))
	}
}
