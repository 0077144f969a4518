package load

import (
	"context"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Stage is one stretch of a stepped run: rate requests per second for Duration.
type Stage struct {
	Rate     float64
	Duration time.Duration
}

// steppedPacer sends each stage's rate in turn, on one clock, so a change of rate does not
// wait for the previous stage's requests to drain: an overloaded system's backlog stays its
// own problem and shows in the seconds after the change. Hits a stage could not send (every
// worker busy) are not made up in the next one. vegeta calls Pace from one goroutine.
type steppedPacer struct {
	stages []Stage
	stage  int    // the stage the last Pace call fell in
	base   uint64 // hits sent before that stage began
}

func total(stages []Stage) time.Duration {
	var t time.Duration
	for _, s := range stages {
		t += s.Duration
	}
	return t
}

// at is the stage elapsed falls in and when it began.
func (p *steppedPacer) at(elapsed time.Duration) (int, time.Duration) {
	var begin time.Duration
	for i, s := range p.stages {
		if elapsed < begin+s.Duration {
			return i, begin
		}
		begin += s.Duration
	}
	return len(p.stages), begin
}

// Pace is vegeta.Pacer's: no wait while behind the stage's rate, else until the next hit.
func (p *steppedPacer) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	i, begin := p.at(elapsed)
	if i == len(p.stages) {
		return 0, true
	}
	if i != p.stage {
		p.stage, p.base = i, hits
	}
	rate := p.stages[i].Rate
	if rate <= 0 {
		return time.Millisecond, false
	}
	// The stage's k-th hit (from 0) is due k/rate after the stage began.
	inStage := (elapsed - begin).Seconds()
	next := float64(hits-p.base) / rate
	if next <= inStage {
		return 0, false
	}
	return time.Duration((next - inStage) * float64(time.Second)), false
}

// Rate is the rate of the stage elapsed falls in.
func (p *steppedPacer) Rate(elapsed time.Duration) float64 {
	if i, _ := p.at(elapsed); i < len(p.stages) {
		return p.stages[i].Rate
	}
	return 0
}

// Second is what happened to the requests sent in one second of a stepped run.
type Second struct {
	Sent int
	// Codes counts answers by status ("0": no answer, a transport error).
	Codes map[string]int
	// OK are the latencies of 2xx answers, Refused of every other answer with a status,
	// sorted.
	OK, Refused []time.Duration
}

// Timeline is a stepped run, second by second from its start.
type Timeline struct {
	Stages  []Stage
	Seconds []Second
}

// RunStages sends r through the stages in turn and records each second's answers. It ends
// early, with what it has, when ctx ends.
func RunStages(ctx context.Context, client *http.Client, r Request, stages []Stage, o Options) Timeline {
	attacker, stop := newAttacker(ctx, client, o)
	defer stop()
	pacer := &steppedPacer{stages: stages}
	tl := Timeline{Stages: stages, Seconds: make([]Second, int(math.Ceil(total(stages).Seconds())))}
	start := time.Now()
	for res := range attacker.Attack(r.targeter(), pacer, total(stages), "") {
		// Every answer counts: one sent a hair past the end (start is taken just before
		// vegeta's own) goes into the last second.
		i := min(max(int(res.Timestamp.Sub(start)/time.Second), 0), len(tl.Seconds)-1)
		s := &tl.Seconds[i]
		s.Sent++
		if s.Codes == nil {
			s.Codes = map[string]int{}
		}
		s.Codes[strconv.Itoa(int(res.Code))]++
		switch {
		case res.Code >= 200 && res.Code < 300:
			s.OK = append(s.OK, res.Latency)
		case res.Code != 0:
			s.Refused = append(s.Refused, res.Latency)
		}
	}
	for i := range tl.Seconds {
		slices.Sort(tl.Seconds[i].OK)
		slices.Sort(tl.Seconds[i].Refused)
	}
	return tl
}

// Window sums the seconds [from, to) of a timeline.
type Window struct {
	Seconds int
	Sent    int
	// OK and Refused count 2xx and other answers; Failed counts requests with no answer.
	OK, Refused, Failed int
	Codes               map[string]int
	// OKP50, OKP99 and RefusedP99, RefusedMax are latencies of the 2xx and other answers.
	OKP50, OKP99, RefusedP99, RefusedMax time.Duration
}

// Window sums seconds [from, to), clipped to the timeline.
func (tl Timeline) Window(from, to int) Window {
	from, to = max(from, 0), min(to, len(tl.Seconds))
	w := Window{Seconds: max(to-from, 0), Codes: map[string]int{}}
	var ok, refused []time.Duration
	for _, s := range tl.Seconds[from:max(from, to)] {
		w.Sent += s.Sent
		for c, n := range s.Codes {
			w.Codes[c] += n
		}
		ok = append(ok, s.OK...)
		refused = append(refused, s.Refused...)
	}
	w.OK, w.Refused = len(ok), len(refused)
	w.Failed = w.Sent - w.OK - w.Refused
	slices.Sort(ok)
	slices.Sort(refused)
	w.OKP50, w.OKP99 = Quantile(ok, 0.5), Quantile(ok, 0.99)
	w.RefusedP99 = Quantile(refused, 0.99)
	if len(refused) > 0 {
		w.RefusedMax = refused[len(refused)-1]
	}
	return w
}

// OKRate is the 2xx answers per second of the window.
func (w Window) OKRate() float64 {
	if w.Seconds == 0 {
		return 0
	}
	return float64(w.OK) / float64(w.Seconds)
}

// Quantile of sorted durations (nearest rank); 0 for none.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
