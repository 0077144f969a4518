package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/reload"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/scale"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
)

func reloadPhase(ctx context.Context, cfg config, gw *stack.Gateway, logger *slog.Logger) (*report.Reload, error) {
	r := &report.Reload{Debounce: cfg.debounce}
	logger.Info("reload: adding models", "edits", cfg.edits)
	var err error
	if r.Envoy, err = reload.Envoy(ctx, gw, cfg.edits); err != nil {
		return r, fmt.Errorf("Envoy reloads: %w", err) //nolint:staticcheck // ST1005: Envoy is a name
	}
	logger.Info("reload: Envoy", "p50", reload.Percentile(r.Envoy, 0.5), "p99", reload.Percentile(r.Envoy, 0.99))
	if r.RateLimit, err = reload.RateLimit(ctx, gw, cfg.edits); err != nil {
		return r, fmt.Errorf("ratelimit reloads: %w", err)
	}
	logger.Info("reload: ratelimit service", "p50", reload.Percentile(r.RateLimit, 0.5), "p99", reload.Percentile(r.RateLimit, 0.99))
	return r, nil
}

// scalePhase measures each policy size in process, then the ratelimit service's load time
// at the largest; with the profile phase on, it also profiles publishing the largest.
func scalePhase(ctx context.Context, cfg config, bins stack.Bins, out string, rep *report.Report, logger *slog.Logger) error {
	sc := &report.Scale{}
	rep.Scale = sc
	for _, n := range cfg.sizes {
		s, err := scale.Measure(ctx, n, cfg.reps)
		if err != nil {
			return fmt.Errorf("size %d: %w", n, err)
		}
		logger.Info("scale", "n", n, "parse", s.Parse, "translate", s.Translate, "publish", s.Publish,
			"envoy_bytes", s.EnvoyBytes, "ratelimit_bytes", s.RateLimitBytes, "retained_heap", s.RetainedHeap)
		sc.Sizes = append(sc.Sizes, s)
	}
	largest := cfg.sizes[len(cfg.sizes)-1]

	env := cfg.newEnv(bins, filepath.Join(out, "scale"))
	defer env.Close()
	l, err := scale.MeasureRateLimitLoad(ctx, largest, func(ctx context.Context, xdsAddr string) (string, error) {
		rl, err := env.StartRateLimit(ctx, xdsAddr)
		if err != nil {
			return "", err
		}
		return rl.Addr, nil
	})
	if err != nil {
		return fmt.Errorf("ratelimit service load time: %w", err)
	}
	sc.RateLimitLoad = &l
	logger.Info("scale: ratelimit service", "n", largest, "publish", l.Publish, "loaded", l.Loaded)

	if cfg.phases["profile"] {
		path := filepath.Join(out, "pprof", fmt.Sprintf("controlplane-publish-%d-cpu.pprof", largest))
		var rounds int
		err := cpuProfile(path, func() error {
			var err error
			rounds, err = scale.PublishLoop(ctx, largest, cfg.profileDuration)
			return err
		})
		if err != nil {
			return fmt.Errorf("control-plane profile: %w", err)
		}
		rep.Profiles = append(rep.Profiles, report.Profile{
			Name: fmt.Sprintf("Control plane: parse + translate + publish of N = %d, %d rounds (CPU)", largest, rounds),
			File: path, Top: pprofTop(ctx, path),
		})
	}
	return nil
}

// cpuProfile profiles this process while fn runs.
func cpuProfile(path string, fn func() error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	err = fn()
	pprof.StopCPUProfile()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// profilePhase runs B's gateway and takes CPU profiles of tollgate while B's and C's requests
// flow, plus an allocation profile under B. In process (`tollgate run`) that is one process,
// profiled through the ratelimit service's debug port, which serves Go's profiles of the whole
// process; split, `tollgate serve --pprof` and the ratelimit service are profiled apart.
func profilePhase(ctx context.Context, cfg config, bins stack.Bins, out string, rep *report.Report, logger *slog.Logger) error {
	bins.ControlPlane = []string{bins.Tollgate, "serve", "--pprof"}
	m, err := startMainGateway(ctx, cfg, bins, filepath.Join(out, "profile"))
	if err != nil {
		return err
	}
	defer m.env.Close()
	gw := m.gw
	rate := cfg.profileRate
	if rate == 0 {
		rate = 300
		for _, s := range rep.Systems {
			if s.Key == "B" && s.Max > 0 {
				rate = s.Max / 2
			}
		}
	}
	_, gwReq, _, gwStream := requests(cfg, "", gw.URL)
	client := load.Client(30 * time.Second)
	secs := max(1, int(cfg.profileDuration/time.Second))
	for _, run := range []struct {
		key  string
		req  load.Request
		what string
	}{{"B", gwReq, "JSON responses"}, {"C", gwStream, fmt.Sprintf("streamed responses, %d tokens", cfg.streamTokens)}} {
		load.Run(ctx, client, run.req, rate, time.Second, load.Options{}) // warm-up
		pdir := filepath.Join(out, "pprof")
		// What the ext_proc server's profiles are served by, and what they cover.
		extProcAt, extProcWhat := gw.MetricsAddr, "ext_proc server + control plane"
		if cfg.inProcess {
			extProcAt, extProcWhat = gw.RateLimitDebugAddr, "tollgate run (ext_proc server, ratelimit service, control plane)"
		}
		fetches := []struct{ name, url, file, sample string }{
			{fmt.Sprintf("%s under %s at %.0f req/s (CPU)", extProcWhat, run.what, rate),
				fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", extProcAt, secs),
				filepath.Join(pdir, "extproc-"+run.key+"-cpu.pprof"), ""},
		}
		if !cfg.inProcess {
			fetches = append(fetches, struct{ name, url, file, sample string }{
				fmt.Sprintf("ratelimit service under %s at %.0f req/s (CPU)", run.what, rate),
				fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", gw.RateLimitDebugAddr, secs),
				filepath.Join(pdir, "ratelimit-"+run.key+"-cpu.pprof"), ""})
		}
		if run.key == "B" {
			fetches = append(fetches, struct{ name, url, file, sample string }{
				fmt.Sprintf("%s under %s at %.0f req/s (allocated bytes)", extProcWhat, run.what, rate),
				fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", extProcAt, secs),
				filepath.Join(pdir, "extproc-"+run.key+"-allocs.pprof"), "alloc_space"},
				// Where goroutines waited for a CPU: latency, which a CPU profile does not show.
				struct{ name, url, file, sample string }{
					fmt.Sprintf("%s under %s at %.0f req/s (scheduler latency, from a %ds execution trace)", extProcWhat, run.what, rate, traceSeconds),
					fmt.Sprintf("http://%s/debug/pprof/trace?seconds=%d", extProcAt, traceSeconds),
					filepath.Join(pdir, "extproc-"+run.key+"-trace.out"), sampleSchedFromTrace})
		}
		var before map[string]*histogramSeries
		if run.key == "B" {
			if before, err = latencyHistograms(gw); err != nil {
				return err
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, len(fetches))
		for i, f := range fetches {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = download(ctx, f.url, f.file, time.Duration(secs+30)*time.Second)
			}()
		}
		// The load outlasts the profiles a little so they see a steady state throughout.
		r := load.Run(ctx, client, run.req, rate, time.Duration(secs)*time.Second+time.Second, load.Options{})
		wg.Wait()
		logger.Info("profiled", "system", run.key, "result", r.String())
		if run.key == "B" {
			after, err := latencyHistograms(gw)
			if err != nil {
				return err
			}
			rep.Timings = timings(before, after)
			rep.TimingsUnder = fmt.Sprintf("under B's JSON requests at %.0f req/s for %s (%s)", rate, time.Duration(secs)*time.Second+time.Second, extProcWhat)
		}
		for i, f := range fetches {
			if errs[i] != nil {
				return fmt.Errorf("%s: %w", f.name, errs[i])
			}
			file, sample := f.file, f.sample
			if sample == sampleSchedFromTrace {
				if file, err = schedFromTrace(ctx, f.file); err != nil {
					return fmt.Errorf("%s: %w", f.name, err)
				}
				sample = ""
			}
			top := pprofTop(ctx, file, sampleArgs(sample)...)
			rep.Profiles = append(rep.Profiles, report.Profile{Name: f.name, File: file, Top: top})
		}
	}
	return nil
}

// traceSeconds is the length of the execution trace taken under B: its file grows by about a
// megabyte a second at a thousand requests a second.
const traceSeconds = 2

// sampleSchedFromTrace marks a fetch that is an execution trace, summarised by its scheduler
// latency profile.
const sampleSchedFromTrace = "sched-from-trace"

// schedFromTrace writes the scheduler latency profile of an execution trace (how long
// goroutines waited to run, by where they were made runnable) next to it, and returns its path.
func schedFromTrace(ctx context.Context, trace string) (string, error) {
	out := strings.TrimSuffix(trace, "-trace.out") + "-sched.pprof"
	cmd := exec.CommandContext(ctx, "go", "tool", "trace", "-pprof=sched", trace)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	profile, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go tool trace -pprof=sched: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, os.WriteFile(out, profile, 0o644)
}

func sampleArgs(index string) []string {
	if index == "" {
		return nil
	}
	return []string{"-sample_index=" + index}
}

// download saves the body of a 200 answer from url to file.
func download(ctx context.Context, url, file string, timeout time.Duration) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, bytes.TrimSpace(body))
	}
	return os.WriteFile(file, body, 0o644)
}

// pprofTop summarises a profile with `go tool pprof -top`; the text says so if that fails.
func pprofTop(ctx context.Context, file string, extra ...string) string {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=25"}, extra...)
	cmd := exec.CommandContext(ctx, "go", append(args, file)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Sprintf("go tool pprof failed: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out)
}
