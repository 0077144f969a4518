package report

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
)

// Overload is the overload phase: one system offered twice its max, then half of it.
type Overload struct {
	// System is the key of the system offered the load (B: JSON, C: streamed).
	System string
	// Max is the sustained rate the burst is twice of, and MaxFrom where it came from.
	Max     float64
	MaxFrom string
	// Offered and Then are the rates of the burst and of the stretch after it; Burst and
	// Recovery how long they lasted.
	Offered, Then   float64
	Burst, Recovery time.Duration
	// SteadyRSS is each process's peak resident memory while serving Max; PeakRSS during the
	// burst and after it.
	SteadyRSS, PeakRSS map[string]int64
	// MaxInFlight is the gateway's listener.maxConcurrentRequests during the burst; 0: the
	// policy's default.
	MaxInFlight int
	// HalfP99 is the p99 of a run at half the max before the burst: "normal".
	HalfP99 time.Duration
	// During and After sum the burst and the stretch after it.
	During, After load.Window
	// LatencyRecovery is how long after the burst every second's p99 was back within twice
	// HalfP99 with every request answered 2xx; RSSRecovery how long until every process's
	// memory stayed within 1.25× of SteadyRSS. -1: not within the run.
	LatencyRecovery, RSSRecovery time.Duration
	// EnvoyRefusedP99 and EnvoyRefusedMax are how long Envoy took over the burst's 503s by
	// its usage log, from a request's first byte to the answer's last (whole milliseconds):
	// the gateway's part of the refused answers' latency, without the load generator's.
	EnvoyRefusedP99, EnvoyRefusedMax time.Duration
	// CountedTokens is what the quota counters held after the run, from 0 before it, and
	// ExpectedTokens the tokens of its 200s (and of one probe request).
	CountedTokens, ExpectedTokens int64
	// PerSecond is the run second by second.
	PerSecond []OverloadSecond
}

// OverloadSecond is one second of the overload run, by when its requests were sent.
type OverloadSecond struct {
	Sent, OK, Refused int
	OKP99, RefusedP99 time.Duration
}

// The targets for the overload phase.
const (
	goodputTarget      = 0.9
	admittedP99Factor  = 5
	shedLatencyTarget  = 10 * time.Millisecond
	peakRSSFactor      = 2
	latencyRecoveryMax = 2 * time.Second
	rssRecoveryMax     = 30 * time.Second
)

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func recoveryText(d time.Duration) string {
	if d < 0 {
		return "not within the run"
	}
	return d.String()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func overloadSection(b *strings.Builder, r *Report) {
	o := r.Overload
	if o == nil || o.Max == 0 {
		return
	}
	b.WriteString("## Overload\n\n")
	fmt.Fprintf(b, "System %s, sustained max %.0f req/s (from %s). Offered %.0f req/s for %s, then %.0f req/s for %s, "+
		"open loop on one clock. *Refused* answers are any status but 2xx; *failed* requests got no answer.\n\n",
		o.System, o.Max, o.MaxFrom, o.Offered, o.Burst, o.Then, o.Recovery)
	if o.MaxInFlight > 0 {
		fmt.Fprintf(b, "The gateway's listener.maxConcurrentRequests was %d.\n\n", o.MaxInFlight)
	} else {
		b.WriteString("The gateway's listener.maxConcurrentRequests was its default.\n\n")
	}
	goodput := o.During.OKRate()
	peakOK := true
	var peaks []string
	names := make([]string, 0, len(o.PeakRSS))
	for n := range o.PeakRSS {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		steady := o.SteadyRSS[n]
		peaks = append(peaks, fmt.Sprintf("%s %.0f → %.0f MiB", n, mib(steady), mib(o.PeakRSS[n])))
		if (n == "envoy" || n == "tollgate") && float64(o.PeakRSS[n]) > peakRSSFactor*float64(steady) {
			peakOK = false
		}
	}
	b.WriteString("| target | got | verdict |\n|---|---|---|\n")
	fmt.Fprintf(b, "| goodput while offered the burst ≥ %.0f%% of max | %.0f req/s = %.0f%% | %s |\n",
		100*goodputTarget, goodput, 100*goodput/o.Max, verdict(goodput >= goodputTarget*o.Max))
	fmt.Fprintf(b, "| p99 of admitted ≤ %d× p99 at half load (%s ms) | %s ms | %s |\n", admittedP99Factor,
		msf(o.HalfP99), msf(o.During.OKP99), verdict(o.During.OKP99 <= admittedP99Factor*o.HalfP99))
	fmt.Fprintf(b, "| shed answered in ≤ %s: p99; max, by the gateway (Envoy's usage log) | %s ms; %s ms | %s |\n", shedLatencyTarget,
		msf(o.EnvoyRefusedP99), msf(o.EnvoyRefusedMax), verdict(o.During.Refused == 0 || o.EnvoyRefusedP99 <= shedLatencyTarget))
	fmt.Fprintf(b, "| the same, as the load generator on the same CPUs saw it | %s ms; %s ms | %s |\n",
		msf(o.During.RefusedP99), msf(o.During.RefusedMax), verdict(o.During.Refused == 0 || o.During.RefusedP99 <= shedLatencyTarget))
	fmt.Fprintf(b, "| Envoy and tollgate peak RSS ≤ %d× steady at max | %s | %s |\n", peakRSSFactor, strings.Join(peaks, "; "), verdict(peakOK))
	fmt.Fprintf(b, "| p99 back to normal ≤ %s after the burst | %s | %s |\n", latencyRecoveryMax,
		recoveryText(o.LatencyRecovery), verdict(o.LatencyRecovery >= 0 && o.LatencyRecovery <= latencyRecoveryMax))
	fmt.Fprintf(b, "| RSS back ≤ %s after the burst | %s | %s |\n", rssRecoveryMax,
		recoveryText(o.RSSRecovery), verdict(o.RSSRecovery >= 0 && o.RSSRecovery <= rssRecoveryMax))
	fmt.Fprintf(b, "| counters in Redis = tokens of the 200s | %d counted, %d in the 200s | %s |\n",
		o.CountedTokens, o.ExpectedTokens, verdict(o.CountedTokens == o.ExpectedTokens))
	b.WriteString("\n| stretch | sent | 2xx | refused | failed | codes | 2xx p50 ms | 2xx p99 ms | refused p99 ms | refused max ms |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range []struct {
		name string
		w    load.Window
	}{{"burst", o.During}, {"after", o.After}} {
		fmt.Fprintf(b, "| %s | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n", w.name, w.w.Sent, w.w.OK, w.w.Refused, w.w.Failed,
			load.FormatCodes(w.w.Codes, "×", " "), msf(w.w.OKP50), msf(w.w.OKP99), msf(w.w.RefusedP99), msf(w.w.RefusedMax))
	}
	b.WriteString("\nSecond by second (by when requests were sent): sent / 2xx / refused, 2xx p99 ms.\n\n```\n")
	for i, s := range o.PerSecond {
		fmt.Fprintf(b, "%3ds %6d %6d %6d %9s\n", i, s.Sent, s.OK, s.Refused, msf(s.OKP99))
	}
	b.WriteString("```\n\n")
}
