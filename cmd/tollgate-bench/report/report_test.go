package report

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/scale"
)

func result(rate float64, p50 time.Duration) load.Result {
	return load.Result{Offered: rate, Sent: rate, Throughput: rate, Requests: uint64(rate), Success: 1,
		P50: p50, P90: 2 * p50, P99: 3 * p50}
}

func sampleReport() *Report {
	crit := load.Criteria{MinSuccess: 0.999, MaxP99: 50 * time.Millisecond, MinDelivered: 0.95}
	a := &System{Key: "A", Name: "floor", Max: 2000,
		Search: []load.Step{{Result: result(1000, time.Millisecond), Sustained: true}, {Result: result(2000, time.Millisecond), Sustained: true},
			{Result: result(3000, time.Second), Reason: "p99 3000ms > 50ms"}},
		Fixed: []Point{{Fraction: 0.5, Rate: 1000, Result: result(1000, time.Millisecond),
			CPUPerRequest: map[string]time.Duration{"envoy": 300 * time.Microsecond}},
			{Label: HalfMaxLabel("B"), Rate: 400, Result: result(400, time.Millisecond),
				CPUPerRequest: map[string]time.Duration{"envoy": 400 * time.Microsecond}}}}
	b := &System{Key: "B", Name: "tollgate", Max: 800,
		Search: []load.Step{{Result: result(800, 3*time.Millisecond), Sustained: true}, {Result: result(1200, time.Second), Reason: "success 90% < 99.9%"}},
		Fixed: []Point{{Fraction: 0.5, Rate: 1000, Result: result(1000, 4*time.Millisecond),
			CPUPerRequest: map[string]time.Duration{"envoy": 900 * time.Microsecond, "tollgate": 200 * time.Microsecond}},
			{Label: HalfMaxLabel("B"), Rate: 400, Result: result(400, 1500*time.Microsecond),
				CPUPerRequest: map[string]time.Duration{"envoy": 800 * time.Microsecond, "tollgate": 500 * time.Microsecond}}}}
	b.MessagesPerRequest = 3
	c := &System{Key: "C", Name: "tollgate streamed", Floor: "Y", Max: 300, MessagesPerRequest: 52.5}
	d := &System{Key: "D", Name: "floor streamed", Max: 1000}
	x := &System{Key: "X", Name: "do-nothing ext_proc", Floor: "A", Max: 900,
		Fixed: []Point{{Fraction: 0.5, Rate: 1000, Result: result(1000, 2*time.Millisecond),
			CPUPerRequest: map[string]time.Duration{"envoy": 700 * time.Microsecond, "null ext_proc": 200 * time.Microsecond}},
			{Label: HalfMaxLabel("B"), Rate: 400, Result: result(400, 1200*time.Microsecond),
				CPUPerRequest: map[string]time.Duration{"envoy": 600 * time.Microsecond, "null ext_proc": 300 * time.Microsecond}}}}
	y := &System{Key: "Y", Name: "do-nothing ext_proc streamed", Floor: "A", Max: 320}
	v := &System{Key: "V", Name: "tollgate streamed, usage read by Envoy", Floor: "W", Max: 250, MessagesPerRequest: 4}
	w := &System{Key: "W", Name: "do-nothing ext_proc streamed, usage read by Envoy", Floor: "A", Max: 300}
	return &Report{
		Started: time.Unix(0, 0), Finished: time.Unix(60, 0),
		Settings: Settings{Criteria: crit, StepDuration: 4 * time.Second, FixedDuration: 10 * time.Second},
		Systems:  []*System{a, b, c, d, x, y, v, w},
		Reload:   &Reload{Envoy: []time.Duration{100 * time.Millisecond, 120 * time.Millisecond}, RateLimit: []time.Duration{600 * time.Millisecond}},
		Scale: &Scale{Sizes: []scale.Size{
			{N: 100, Translate: time.Millisecond, Publish: time.Millisecond},
			{N: 10000, Translate: 300 * time.Millisecond, Publish: 500 * time.Millisecond},
		}},
	}
}

func TestMarkdownChecksTargets(t *testing.T) {
	var buf bytes.Buffer
	if err := Markdown(&buf, sampleReport()); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		// 800 of 900 is 89%.
		"| B max throughput ≥ 85% of X (JSON) | 800 / 900 req/s = 89% | met |",
		"| B p50 ≤ X p50 + 0.5 ms at 50% of B's max | 1.50 ms vs 1.20 ms (+0.30 ms) at 400 req/s | met |",
		// 1,300 µs against 900 µs is 1.44×.
		"| B CPU per request ≤ 1.3× X (all processes) at 50% of B's max | 1300 µs vs 900 µs = 1.44× | **missed** |",
		"| C max throughput ≥ 90% of Y (streamed) | 300 / 320 req/s = 94% | met |",
		"| B max throughput ≥ 45% of A | 800 / 2000 req/s = 40% | **missed** |",
		// 250 of 300 is 83%.
		"| V max throughput ≥ 90% of W (streamed, usage read by Envoy) | 250 / 300 req/s = 83% | **missed** |",
		"at a low rate): B 3.0, C 52.5, V 4.0.",
		"| (context, no target) C vs D, plain Envoy streaming | 300 / 1000 req/s = 30% | – |",
		"(context, no target) B p50 at 50% of A's max | 4.00 ms vs 1.00 ms (+3.00 ms) at 1000 req/s | – |",
		"save → Envoy serves it) | 120.00 ms | met |",
		"save → ratelimit service has the limit) | 600.00 ms | **missed** |",
		"10000 quota rules: translate + publish < 1 s | 800.00 ms | met |",
		// 20 µs/rule at 100 against 80 µs/rule at 10,000 is not linear.
		"(×4.00) | **missed** |",
		"| B | 800 | 0.40× |",
		"1200 req/s: success 90% < 99.9%",
		"| 1000 | B | 100.0% | 900 | – | 200 | 1100 |",
		"| 1000 | X | 100.0% | 700 | 200 | – | 900 |",
		"| 1000 req/s (50% of A's max) | B |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}
}

// A's max is rarely a whole rate, so the run at half of it sits only near the fraction 0.5;
// the latency there must still be reported.
func TestLatencyTargetFindsRoundedRate(t *testing.T) {
	r := sampleReport()
	for _, s := range r.Systems {
		if len(s.Fixed) > 0 {
			s.Fixed[0].Fraction = 1000 / 2001.4
		}
	}
	var buf bytes.Buffer
	if err := Markdown(&buf, r); err != nil {
		t.Fatal(err)
	}
	if want := "B p50 at 50% of A's max | 4.00 ms vs 1.00 ms"; !strings.Contains(buf.String(), want) {
		t.Errorf("report lacks %q\n%s", want, buf.String())
	}
}

func TestCostSplitSubtractsSystems(t *testing.T) {
	r := sampleReport()
	r.Systems = append(r.Systems, &System{Key: "E", Name: "ext_proc only", Floor: "A", Max: 1200,
		Fixed: []Point{{Fraction: 0.5, Rate: 1000, Result: result(1000, 2*time.Millisecond),
			CPUPerRequest: map[string]time.Duration{"envoy": 600 * time.Microsecond, "tollgate": 150 * time.Microsecond}}}})
	var buf bytes.Buffer
	if err := Markdown(&buf, r); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"E, ext_proc without rate limiting: max throughput vs A | 1200 / 2000 req/s = 60% | – |",
		"At 1000 req/s, the highest fixed rate A, E and B all sustained",
		"| part | envoy | tollgate | total |",
		"| floor (A) | +300 | +0 | +300 |",
		"| ext_proc (E − A) | +300 | +150 | +450 |",
		"| rate limiting (B − E) | +300 | +50 | +350 |",
		"| B | +900 | +200 | +1100 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}

	// Without a rate all three sustained there is nothing to split: CPU per request of an
	// overloaded system is not comparable.
	r.Systems[1].Fixed[0].Result.P99 = time.Second
	buf.Reset()
	if err := Markdown(&buf, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "Where B's CPU goes") {
		t.Error("split shown although B was overloaded at every fixed rate")
	}
}

// With L, B's ratio to L shows: max throughput among the targets' context, and beside each
// other at half of L's max.
func TestReportComparesBWithLiteLLM(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := Markdown(&buf, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "LiteLLM") {
		t.Error("a report without L mentions LiteLLM")
	}

	bs := r.Systems[1]
	bs.Fixed = append(bs.Fixed, Point{Fraction: 0.1, Rate: 200, Label: HalfMaxLabel("L"), Result: result(200, 2*time.Millisecond),
		CPUPerRequest: map[string]time.Duration{"envoy": 300 * time.Microsecond, "tollgate": 100 * time.Microsecond,
			"llmsim": 50 * time.Microsecond, "load generator": 50 * time.Microsecond}})
	r.Systems[0].Fixed = append(r.Systems[0].Fixed, Point{Fraction: 0.1, Rate: 200, Label: HalfMaxLabel("L"), Result: result(200, time.Millisecond)})
	r.Systems = append(r.Systems, &System{Key: "L", Name: "LiteLLM proxy", Floor: "A", Max: 400,
		Fixed: []Point{
			{Fraction: 0.5, Rate: 1000, Skipped: "over 2× L's max (400 req/s)"},
			{Label: HalfMaxLabel("B"), Rate: 400, Result: result(400, 20*time.Millisecond)},
			{Fraction: 0.1, Rate: 200, Label: HalfMaxLabel("L"), Result: result(200, 8*time.Millisecond),
				CPUPerRequest: map[string]time.Duration{"litellm": 1900 * time.Microsecond,
					"llmsim": 50 * time.Microsecond, "load generator": 50 * time.Microsecond}},
		}})
	buf.Reset()
	if err := Markdown(&buf, r); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"| B max throughput ≥ 20× L (LiteLLM, routing only) | 800 / 400 req/s = 2.00× | **missed** |",
		"| L | 400 | 0.20× | 0.20× (A) |",
		"### tollgate (B) against LiteLLM (L)",
		"the rest at 200 req/s (50% of L's max).",
		"| max sustained req/s | 800 | 400 | 2.00× |",
		"| p50 ms | 2.00 | 8.00 | 0.25× |",
		"| p99 ms | 6.00 | 24.00 | 0.25× |",
		"| CPU µs per request, all processes | 500 | 2000 | 0.25× |",
		"(without llmsim and the load generator) | 400 | 1900 | 0.21× |",
		"| 200 | L | 100.0% |",
		"| 1000 req/s (50% of A's max) | L | skipped: over 2× L's max (400 req/s) | – |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(md, "| 1000 | L |") {
		t.Error("the CPU table shows a skipped run")
	}
	if err := Plot(filepath.Join(t.TempDir(), "latency.png"), r.Systems); err != nil {
		t.Errorf("plot with a skipped run: %v", err)
	}
}

func TestPlotWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latency.png")
	if err := Plot(path, sampleReport().Systems); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
		t.Fatalf("image is %v, want a readable size", b)
	}
	if err := Plot(path, []*System{{Key: "X"}}); err == nil {
		t.Fatal("plotting systems without data succeeded")
	}
}

func TestOverloadSectionJudgesTheTargets(t *testing.T) {
	r := &Report{Overload: &Overload{
		System: "C", Max: 1000, MaxFrom: "--overload-max", Offered: 2000, Then: 500,
		Burst: time.Minute, Recovery: 30 * time.Second, MaxInFlight: 48,
		SteadyRSS: map[string]int64{"envoy": 100 << 20, "tollgate": 50 << 20},
		PeakRSS:   map[string]int64{"envoy": 300 << 20, "tollgate": 60 << 20},
		HalfP99:   20 * time.Millisecond,
		During: load.Window{Seconds: 60, Sent: 120000, OK: 57000, Refused: 63000, Codes: map[string]int{"200": 57000, "503": 63000},
			OKP99: 90 * time.Millisecond, RefusedP99: 5 * time.Millisecond},
		LatencyRecovery: time.Second, RSSRecovery: -1,
		CountedTokens: 106, ExpectedTokens: 106,
		EnvoyRefusedP99: time.Millisecond, EnvoyRefusedMax: 4 * time.Millisecond,
	}}
	var b strings.Builder
	if err := Markdown(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| goodput while offered the burst ≥ 90% of max | 950 req/s = 95% | met |",
		"| p99 of admitted ≤ 5× p99 at half load (20.00 ms) | 90.00 ms | met |",
		"envoy 100 → 300 MiB; tollgate 50 → 60 MiB | **missed** |",
		"| RSS back ≤ 30s after the burst | not within the run | **missed** |",
		"| counters in Redis = tokens of the 200s | 106 counted, 106 in the 200s | met |",
		"listener.maxConcurrentRequests was 48",
		"by the gateway (Envoy's usage log) | 1.00 ms; 4.00 ms | met |",
		"as the load generator on the same CPUs saw it | 5.00 ms; 0.00 ms | met |",
		"200×57000 503×63000",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestTimingsSectionOnlyWhenProfiled(t *testing.T) {
	markdown := func(r *Report) string {
		var buf bytes.Buffer
		if err := Markdown(&buf, r); err != nil {
			t.Fatal(err)
		}
		return buf.String()
	}
	r := sampleReport()
	if strings.Contains(markdown(r), "Where tollgate's time goes") {
		t.Error("a run without the profile phase has a timings section")
	}
	r.Timings = []Timing{{What: "quota check and reservation", Count: 9000, P50: 243 * time.Microsecond, P90: 648 * time.Microsecond, P99: 2331 * time.Microsecond}}
	r.TimingsUnder = "under B's JSON requests at 1350 req/s for 9s"
	md := markdown(r)
	for _, want := range []string{"## Where tollgate's time goes", "under B's JSON requests at 1350 req/s for 9s.",
		"| quota check and reservation | 9000 | 0.243 | 0.648 | 2.331 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
