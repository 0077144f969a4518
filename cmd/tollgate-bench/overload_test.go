package main

import (
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
)

func TestLatencyRecovery(t *testing.T) {
	ok := func(p99 time.Duration) load.Second { return load.Second{Sent: 1, OK: []time.Duration{p99}} }
	refused := load.Second{Sent: 1, Refused: []time.Duration{time.Millisecond}}
	half := 10 * time.Millisecond
	// Burst of 2 s; after it, one slow second, one with a refusal, then normal for good.
	tl := load.Timeline{Seconds: []load.Second{ok(time.Second), ok(time.Second), ok(50 * time.Millisecond), refused, ok(15 * time.Millisecond), ok(12 * time.Millisecond)}}
	if got := latencyRecovery(tl, 2, half); got != 2*time.Second {
		t.Errorf("recovery %s, want 2s", got)
	}
	tl.Seconds = append(tl.Seconds, ok(time.Second))
	if got := latencyRecovery(tl, 2, half); got != -1 {
		t.Errorf("a run ending slow recovered after %s, want -1", got)
	}
}

func TestRSSRecovery(t *testing.T) {
	steady := map[string]int64{"envoy": 100}
	ss := rssSamples{
		{at: 0, rss: map[string]int64{"envoy": 300}},
		{at: time.Second, rss: map[string]int64{"envoy": 300}},
		{at: 2 * time.Second, rss: map[string]int64{"envoy": 120}},
		{at: 3 * time.Second, rss: map[string]int64{"envoy": 110}},
	}
	if got := ss.recovery(time.Second, steady); got != time.Second {
		t.Errorf("recovery %s, want 1s after the burst", got)
	}
	if p := ss.peak(0, time.Second); p["envoy"] != 300 {
		t.Errorf("peak %v", p)
	}
	ss = append(ss, rssSample{at: 4 * time.Second, rss: map[string]int64{"envoy": 200}})
	if got := ss.recovery(time.Second, steady); got != -1 {
		t.Errorf("memory up again at the end, recovery %s, want -1", got)
	}
}
