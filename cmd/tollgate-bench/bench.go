package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
)

// benchmark runs the chosen phases and writes the report. A failing phase is noted in the
// report and the others still run; the error then says which failed.
func benchmark(ctx context.Context, cfg config, logger *slog.Logger, stdout io.Writer) error {
	out, err := filepath.Abs(cfg.out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	bins, err := resolveBins(cfg)
	if err != nil {
		return err
	}
	rep := &report.Report{
		Started: time.Now(),
		Machine: machineInfo(bins.Envoy),
		Settings: report.Settings{
			StepDuration: cfg.stepDuration, FixedDuration: cfg.fixedDuration, Criteria: cfg.criteria,
			EnvoyConcurrency: cfg.envoyConcurrency, TollgateGoMaxProcs: cfg.tollgateGoMaxProcs, Users: cfg.users, StreamTokens: cfg.streamTokens, StreamMaxP99: cfg.streamMaxP99,
			Debounce: cfg.debounce, Edits: cfg.edits,
		},
	}
	logger.Info("benchmark starting", "out", out, "phases", phaseList(cfg), "load", rep.Machine.LoadBefore)

	var failed []string
	fail := func(phase string, err error) {
		logger.Error("phase failed", "phase", phase, "error", err)
		rep.Notes = append(rep.Notes, fmt.Sprintf("phase %s failed: %v", phase, err))
		failed = append(failed, phase)
	}

	if cfg.phases["overhead"] || cfg.phases["reload"] {
		if err := dataPlanePhases(ctx, cfg, bins, filepath.Join(out, "run"), rep, logger, fail); err != nil {
			fail("start", err)
		}
	}
	if cfg.phases["overload"] && ctx.Err() == nil {
		if err := overloadPhase(ctx, cfg, bins, out, rep, logger); err != nil {
			fail("overload", err)
		}
	}
	if cfg.phases["scale"] && ctx.Err() == nil {
		if err := scalePhase(ctx, cfg, bins, out, rep, logger); err != nil {
			fail("scale", err)
		}
	}
	if cfg.phases["profile"] && ctx.Err() == nil {
		if err := profilePhase(ctx, cfg, bins, out, rep, logger); err != nil {
			fail("profile", err)
		}
	}

	rep.Finished = time.Now()
	rep.Machine.LoadAfter = loadAvg()
	if err := writeReport(out, rep); err != nil {
		return err
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	_, _ = stdout.Write(md)
	logger.Info("benchmark done", "report", filepath.Join(out, "report.md"), "took", rep.Finished.Sub(rep.Started).Round(time.Second))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) > 0 {
		return fmt.Errorf("phases failed: %s (see the report's notes)", strings.Join(failed, ", "))
	}
	return nil
}

// mainGateway is llmsim and B's gateway in an Env of their own.
type mainGateway struct {
	env     *stack.Env
	simPort int
	sim     *proc.Process
	gw      *stack.Gateway
}

// startMainGateway runs llmsim and B's gateway (`tollgate run` unless --in-process=false),
// their files under dir. The caller closes the Env; on error it is closed already.
func startMainGateway(ctx context.Context, cfg config, bins stack.Bins, dir string) (mainGateway, error) {
	m := mainGateway{env: cfg.newEnv(bins, dir)}
	m.env.InProcess = cfg.inProcess
	var err error
	if m.simPort, m.sim, err = m.env.StartSim(ctx); err == nil {
		m.gw, err = m.env.StartGateway(ctx, m.simPort, stack.PolicyOptions{})
	}
	if err != nil {
		m.env.Close()
		return mainGateway{}, err
	}
	return m, nil
}

// dataPlanePhases runs the overhead and reload phases on one set of processes.
func dataPlanePhases(ctx context.Context, cfg config, bins stack.Bins, dir string, rep *report.Report, logger *slog.Logger, fail func(string, error)) error {
	m, err := startMainGateway(ctx, cfg, bins, dir)
	if err != nil {
		return err
	}
	defer m.env.Close()
	env, simPort, sim, gw := m.env, m.simPort, m.sim, m.gw
	if cfg.phases["overhead"] {
		plain, err := env.StartPlain(ctx, simPort)
		if err != nil {
			return err
		}
		// Each variant is a gateway of its own (its files in a directory of their own):
		// switching one gateway's policy between runs would measure reloads as well.
		gws := gateways{main: gw}
		for _, v := range []struct {
			on     bool
			into   **stack.Gateway
			dir    string
			opts   stack.PolicyOptions
			adjust func(*stack.Env)
		}{
			{cfg.extProcOnly, &gws.extProcOnly, "ext-proc-only", stack.PolicyOptions{NoQuotas: true}, nil},
			{cfg.nullExtProc, &gws.null, "null-ext-proc", stack.PolicyOptions{NullExtProc: true}, nil},
			{cfg.nullRedis, &gws.nullRedis, "null-redis", stack.PolicyOptions{NullExtProc: true, NullRedisPing: true}, nil},
			{cfg.split && cfg.inProcess, &gws.split, "split", stack.PolicyOptions{}, func(e *stack.Env) { e.InProcess = false }},
			{cfg.unixSocket, &gws.unixSocket, "unix-socket", stack.PolicyOptions{ExtProcSocket: true}, nil},
			{cfg.envoyStreams, &gws.envoyStreams, "envoy-streams", stack.PolicyOptions{EnvoyStreams: true}, nil},
			{cfg.envoyStreams && cfg.nullExtProc, &gws.nullEnvoyStreams, "null-envoy-streams", stack.PolicyOptions{NullExtProc: true, EnvoyStreams: true}, nil},
			{cfg.redisSocket, &gws.redisSocket, "redis-socket", stack.PolicyOptions{RedisSocket: true}, nil},
			{len(cfg.comparedEnv()) > 0, &gws.compared, "compared-env", stack.PolicyOptions{}, func(e *stack.Env) {
				e.TollgateEnv = append(e.TollgateEnv, cfg.comparedEnv()...)
			}},
			{cfg.checkOnly, &gws.checkOnly, "check-only", stack.PolicyOptions{}, func(e *stack.Env) { e.CheckOnly, e.InProcess = true, false }},
		} {
			if !v.on {
				continue
			}
			e := cfg.newEnv(bins, filepath.Join(dir, v.dir))
			e.InProcess = cfg.inProcess
			if v.adjust != nil {
				v.adjust(e)
			}
			defer e.Close()
			if *v.into, err = e.StartGateway(ctx, simPort, v.opts); err != nil {
				return err
			}
		}
		var lite *stack.LiteLLM
		if cfg.litellm {
			logger.Info("starting LiteLLM (slow: every worker imports it)", "workers", cfg.litellmWorkers, "timeout", stack.LiteLLMStartTimeout)
			if lite, err = env.StartLiteLLM(ctx, simPort, cfg.litellmWorkers); err != nil {
				// The other systems still run: L is a comparison, not tollgate's measurement.
				fail("litellm", err)
				lite = nil
			} else {
				logger.Info("LiteLLM serving", "version", lite.Version, "url", lite.URL)
			}
		}
		systems, err := overheadPhase(ctx, cfg, plain, gws, lite, sim, logger)
		rep.Systems = systems
		if err != nil {
			fail("overhead", err)
		}
	}
	if cfg.phases["reload"] && ctx.Err() == nil {
		r, err := reloadPhase(ctx, cfg, gw, logger)
		rep.Reload = r
		if err != nil {
			fail("reload", err)
		}
	}
	return nil
}

func writeReport(out string, rep *report.Report) error {
	var errs []error
	if len(rep.Systems) > 0 {
		if err := report.Plot(filepath.Join(out, "latency.png"), rep.Systems); err != nil {
			rep.Notes = append(rep.Notes, "no plot: "+err.Error())
		}
	}
	if err := report.WriteJSON(filepath.Join(out, "results.json"), rep); err != nil {
		errs = append(errs, err)
	}
	f, err := os.Create(filepath.Join(out, "report.md"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := report.Markdown(f, rep); err != nil {
		errs = append(errs, err)
	}
	if err := f.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func phaseList(cfg config) string {
	var out []string
	for _, p := range allPhases() {
		if cfg.phases[p] {
			out = append(out, p)
		}
	}
	return strings.Join(out, ",")
}

// resolveBins checks that every program the phases need exists, before anything starts.
func resolveBins(cfg config) (stack.Bins, error) {
	var b stack.Bins
	var errs []error
	abs := func(name, path string) string {
		p, err := filepath.Abs(path)
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (build it with `task build`, or pass --%s)", name, err, name))
		}
		return p
	}
	b.Tollgate = abs("tollgate", cfg.tollgate)
	b.ControlPlane = []string{b.Tollgate, "serve"}
	b.LLMSim = abs("llmsim", cfg.llmsim)
	self, err := os.Executable()
	if err != nil {
		errs = append(errs, fmt.Errorf("the benchmark's own path, to run the do-nothing ext_proc server: %w", err))
	}
	b.NullExtProc = []string{self, nullExtProcCommand}
	envoyBin, err := findEnvoy(cfg.envoy)
	if err != nil {
		errs = append(errs, err)
	}
	b.Envoy = envoyBin
	b.Redis = cfg.redis
	if b.Redis == "" {
		if b.Redis, err = exec.LookPath("redis-server"); err != nil {
			errs = append(errs, errors.New("redis-server not found: run `task setup` or pass --redis"))
		}
	}
	if cfg.litellm && cfg.phases["overhead"] {
		if b.LiteLLM, err = findLiteLLM(cfg.litellmBin); err != nil {
			errs = append(errs, err)
		}
	}
	return b, errors.Join(errs...)
}

// findLiteLLM looks for the litellm command: the flag, the project's venv under the working
// directory, then PATH.
func findLiteLLM(flagValue string) (string, error) {
	if flagValue != "" {
		p, err := filepath.Abs(flagValue)
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			return "", fmt.Errorf("--litellm-bin: %w", err)
		}
		return p, nil
	}
	// Where `task install-litellm` (run by `LITELLM=1 task bench`) installs it.
	local := filepath.Join(".tools", "litellm-venv", "bin", "litellm")
	if _, err := os.Stat(local); err == nil {
		return filepath.Abs(local)
	}
	if p, err := exec.LookPath("litellm"); err == nil {
		return p, nil
	}
	return "", errors.New("no litellm found: run `LITELLM=1 task bench` or `task install-litellm` (a venv in .tools/litellm-venv), or pass --litellm-bin")
}

// machineInfo records what the numbers depend on.
func machineInfo(envoyBin string) report.Machine {
	m := report.Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.KernelRelease = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command(envoyBin, "--version").Output(); err == nil {
		// "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": keep the version.
		m.EnvoyVersion = "Envoy " + envoyVersion(string(out))
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// envoyVersion picks the release out of `envoy --version` output
// ("<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL").
func envoyVersion(out string) string {
	_, v, ok := strings.Cut(out, "version: ")
	if !ok {
		return strings.TrimSpace(out)
	}
	v = strings.TrimSpace(v)
	if parts := strings.Split(v, "/"); len(parts) > 1 {
		return parts[1]
	}
	return v
}
