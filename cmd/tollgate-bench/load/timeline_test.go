package load

import (
	"testing"
	"time"
)

// The pacer keeps each stage's own rate and does not make up a stage's missing hits in the
// next one.
func TestSteppedPacer(t *testing.T) {
	p := &steppedPacer{stages: []Stage{{Rate: 100, Duration: time.Second}, {Rate: 10, Duration: time.Second}}}
	if wait, stop := p.Pace(500*time.Millisecond, 10); wait != 0 || stop {
		t.Errorf("behind in stage 1: wait %s stop %v, want no wait", wait, stop)
	}
	if wait, _ := p.Pace(500*time.Millisecond, 51); wait != 10*time.Millisecond {
		t.Errorf("on time in stage 1: wait %s, want 10ms", wait)
	}
	// Stage 2 starts with only 20 of stage 1's 100 hits sent: it owes 10/s from here, not 80.
	if wait, _ := p.Pace(time.Second, 20); wait != 0 {
		t.Errorf("first call of stage 2: wait %s, want 0 (its first hit is due)", wait)
	}
	if wait, _ := p.Pace(time.Second+time.Millisecond, 21); wait != 99*time.Millisecond {
		t.Errorf("stage 2 after one hit: wait %s, want about 99ms", wait)
	}
	if _, stop := p.Pace(2*time.Second, 40); !stop {
		t.Error("did not stop after the last stage")
	}
	if p.Rate(1500*time.Millisecond) != 10 || p.Rate(3*time.Second) != 0 {
		t.Errorf("rates %v, %v", p.Rate(1500*time.Millisecond), p.Rate(3*time.Second))
	}
}

func TestWindow(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		out := make([]time.Duration, len(n))
		for i, v := range n {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tl := Timeline{Seconds: []Second{
		{Sent: 4, Codes: map[string]int{"200": 2, "503": 1, "0": 1}, OK: ms(10, 20), Refused: ms(1)},
		{Sent: 3, Codes: map[string]int{"200": 3}, OK: ms(5, 30, 40)},
		{Sent: 1, Codes: map[string]int{"200": 1}, OK: ms(7)},
	}}
	w := tl.Window(0, 2)
	if w.Seconds != 2 || w.Sent != 7 || w.OK != 5 || w.Refused != 1 || w.Failed != 1 {
		t.Errorf("window %+v", w)
	}
	if w.OKP50 != 20*time.Millisecond || w.OKP99 != 40*time.Millisecond || w.RefusedMax != time.Millisecond {
		t.Errorf("latencies p50 %s p99 %s refused max %s", w.OKP50, w.OKP99, w.RefusedMax)
	}
	if w.OKRate() != 2.5 || w.Codes["200"] != 5 {
		t.Errorf("rate %v codes %v", w.OKRate(), w.Codes)
	}
	if e := tl.Window(2, 10); e.Seconds != 1 || e.OK != 1 {
		t.Errorf("clipped window %+v", e)
	}
}
