// Package stack starts the systems the benchmark compares, as separate processes on loopback
// ports: llmsim as the model, a plain Envoy with a static route to it (the floor), the full
// tollgate gateway (tollgate's control plane and ext_proc server, the ratelimit service,
// redis-server and an Envoy configured over ADS), and, for comparison, the LiteLLM proxy.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/nullproc"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/policies"
)

// Bins are the programs the stacks run.
type Bins struct {
	// Tollgate runs `tollgate ratelimit`.
	Tollgate string
	// ControlPlane is the command that serves the policy, before its flags: normally
	// {Tollgate, "serve"}. Its flags are those of `tollgate serve`.
	ControlPlane []string
	LLMSim       string
	Envoy        string
	Redis        string
	// LiteLLM is the `litellm` command of a LiteLLM proxy install; only StartLiteLLM needs it.
	LiteLLM string
	// NullExtProc is the command that runs the do-nothing ext_proc server, before its flags
	// (--listen, --model-header, --model); only a gateway with PolicyOptions.NullExtProc needs it.
	NullExtProc []string
}

// Env starts processes and stops them all on Close, newest first.
type Env struct {
	Bins Bins
	// Dir holds logs, bootstraps and policies.
	Dir string
	// EnvoyConcurrency is each Envoy's worker thread count (--concurrency).
	EnvoyConcurrency int
	// Debounce is the control plane's policy-file debounce (--debounce).
	Debounce time.Duration
	// TollgateEnv is added to the environment of tollgate's processes (the control plane and
	// the ratelimit service), for runtime settings such as GOMAXPROCS.
	TollgateEnv []string
	// CheckOnly runs the control plane without the gateway's Redis (no --redis): requests are
	// only checked, nothing is reserved, as before reservations existed.
	CheckOnly bool
	// InProcess runs the gateway as `tollgate run`: one tollgate process holds the control
	// plane, the ext_proc server and the ratelimit service, which quota checks then call
	// in-process; it starts and stops Envoy itself. Otherwise `tollgate serve` and `tollgate
	// ratelimit` are processes of their own, and quota checks are gRPC calls between them.
	InProcess bool

	mu    sync.Mutex
	procs []*proc.Process
	names map[string]int // how often each process name was used, for distinct log files
}

// Close stops every process the Env started, newest first, so Envoys go before the services
// they call.
func (e *Env) Close() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
}

func (e *Env) start(name, bin string, args ...string) (*proc.Process, error) {
	return e.startWithEnv(name, nil, bin, args...)
}

func (e *Env) startWithEnv(name string, env []string, bin string, args ...string) (*proc.Process, error) {
	e.mu.Lock()
	if e.names == nil {
		e.names = map[string]int{}
	}
	e.names[name]++
	if n := e.names[name]; n > 1 {
		name = fmt.Sprintf("%s-%d", name, n)
	}
	e.mu.Unlock()
	p, err := proc.Start(name, filepath.Join(e.Dir, "logs"), env, bin, args...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// probeInterval is how often readiness is polled while a process starts.
const probeInterval = 20 * time.Millisecond

// newProbeClient is the client readiness checks and single requests use.
func newProbeClient() *http.Client { return &http.Client{Timeout: 2 * time.Second} }

// get fetches url with client and fails unless the status is 200.
func get(client *http.Client, url string) error {
	_, err := getBody(client, url)
	return err
}

// getBody fetches url with client and returns the body of a 200 answer.
func getBody(client *http.Client, url string) ([]byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %.512s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, err
}

// StartSim runs llmsim with no artificial latency and returns its port.
func (e *Env) StartSim(ctx context.Context) (int, *proc.Process, error) {
	ps, err := launch.FreePorts(1)
	if err != nil {
		return 0, nil, err
	}
	p, err := e.start("llmsim", e.Bins.LLMSim, "--listen", proc.Addr(ps[0]), "--name", "sim", "--log-level", "warn")
	if err != nil {
		return 0, nil, err
	}
	url := fmt.Sprintf("http://%s/healthz", proc.Addr(ps[0]))
	client := newProbeClient()
	return ps[0], p, p.Await(ctx, 10*time.Second, probeInterval, "llmsim healthy", func() error { return get(client, url) })
}

// Plain is an Envoy with a static route to llmsim: no ext_proc, no rate limiting.
type Plain struct {
	// URL is the listener, http://127.0.0.1:PORT.
	URL   string
	Envoy *proc.Process
}

// StartPlain runs the floor: Envoy routing everything to llmsim on simPort.
func (e *Env) StartPlain(ctx context.Context, simPort int) (*Plain, error) {
	ps, err := launch.FreePorts(2)
	if err != nil {
		return nil, err
	}
	listen, admin := ps[0], ps[1]
	path := filepath.Join(e.Dir, "plain-envoy.yaml")
	if err := os.WriteFile(path, []byte(PlainBootstrap(listen, admin, simPort)), 0o644); err != nil {
		return nil, err
	}
	p, err := e.startEnvoy("envoy-plain", path)
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://%s", proc.Addr(listen))
	client := newProbeClient()
	err = p.Await(ctx, 30*time.Second, probeInterval, "plain Envoy ready", func() error {
		return get(client, fmt.Sprintf("http://%s/ready", proc.Addr(admin)))
	})
	if err != nil {
		return nil, err
	}
	return &Plain{URL: url, Envoy: p}, nil
}

func (e *Env) startEnvoy(name, bootstrapPath string) (*proc.Process, error) {
	concurrency := e.EnvoyConcurrency
	if concurrency <= 0 {
		concurrency = 1
	}
	return e.start(name, e.Bins.Envoy, "-c", bootstrapPath, "--disable-hot-restart",
		"--log-level", "warn", "--concurrency", fmt.Sprint(concurrency))
}

// PlainBootstrap is the floor's static Envoy configuration: one listener, one route to llmsim,
// the router filter and nothing else. Timeouts match what tollgate configures for models.
func PlainBootstrap(listenPort, adminPort, simPort int) string {
	return fmt.Sprintf(`admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
static_resources:
  listeners:
  - name: plain
    address: {socket_address: {address: 127.0.0.1, port_value: %d}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          codec_type: AUTO
          route_config:
            name: plain
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: llmsim, timeout: 300s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: llmsim
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: llmsim
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}
`, adminPort, listenPort, simPort)
}

// Gateway is the full tollgate stack.
type Gateway struct {
	// URL is Envoy's listener, http://127.0.0.1:PORT.
	URL        string
	PolicyPath string
	// MetricsAddr serves the control plane's /metrics, /status and /healthz (and
	// /debug/pprof/ when it runs with --pprof).
	MetricsAddr string
	// RateLimitAddr is the ratelimit service's gRPC address; RateLimitDebugAddr its debug
	// port (pprof).
	RateLimitAddr, RateLimitDebugAddr string

	// ControlPlane and RateLimit are one process, `tollgate run`, when the Env runs gateways
	// InProcess; Envoy is then nil (run's child), and EnvoyPid its process id.
	ControlPlane, RateLimit, Redis, Envoy *proc.Process
	EnvoyPid                              int
	// AccessLogPath is Envoy's usage log when the gateway runs as `tollgate run`; "" otherwise.
	AccessLogPath string
	// ExtProc is the do-nothing ext_proc server of a gateway started with
	// PolicyOptions.NullExtProc; nil otherwise (the control plane serves ext_proc).
	ExtProc *proc.Process

	client  *http.Client
	simPort int
	ports   gatewayPorts
}

type gatewayPorts struct {
	listener, admin, xds, extProc, metrics, rateLimit, rateLimitHTTP, rateLimitDebug, redis int
}

// PolicyOptions vary the gateway's policy between edits.
type PolicyOptions struct {
	// Models are served besides qwen3 (the model the load uses).
	Models []string
	// Limit is the per-user hourly token limit on qwen3; 0 means the maximum, so load never
	// gets 429.
	Limit uint64
	// NoQuotas leaves the quotas out: requests still pass the ext_proc server (model routing,
	// usage accounting) but nothing is checked or charged at the ratelimit service.
	NoQuotas bool
	// NullExtProc puts the do-nothing ext_proc server where tollgate's would be: the same
	// Envoy configuration (it implies NoQuotas), an ext_proc server that only answers.
	NullExtProc bool
	// ExtProcSocket has Envoy reach the ext_proc server over a Unix socket instead of TCP.
	ExtProcSocket bool
	// NullRedisPing, with NullExtProc, has the do-nothing server PING the gateway's Redis once
	// per request before it answers the request body.
	NullRedisPing bool
	// EnvoyStreams has Envoy read streams' usage (the policy's extProc.streamUsage: envoy);
	// with NullExtProc the do-nothing server then marks streams for it.
	EnvoyStreams bool
	// RedisSocket has tollgate and the ratelimit service reach Redis over a Unix socket.
	RedisSocket bool
	// MaxConcurrentRequests, when not 0, is the policy's listener.maxConcurrentRequests.
	MaxConcurrentRequests int
}

// MaxLimit is the largest limit a quota can have.
const MaxLimit = 1<<32 - 1

// UserHeader names the user in the gateway's policy.
const UserHeader = "x-user-id"

// Policy renders the gateway's policy. Quota checks fail closed, so an overloaded or late
// ratelimit service shows up as errors instead of as unchecked requests that look fast.
func (g *Gateway) Policy(o PolicyOptions) string {
	limit := o.Limit
	if limit == 0 {
		limit = MaxLimit
	}
	extProc := fmt.Sprintf("address: 127.0.0.1, port: %d", g.ports.extProc)
	if o.ExtProcSocket {
		extProc = "socket: " + g.extProcSocket()
	}
	if o.EnvoyStreams {
		extProc += ", streamUsage: " + policies.StreamUsageEnvoy
	}
	extProc = "{" + extProc + "}"
	listener := fmt.Sprintf("{address: 127.0.0.1, port: %d}", g.ports.listener)
	if o.MaxConcurrentRequests > 0 {
		listener = fmt.Sprintf("{address: 127.0.0.1, port: %d, maxConcurrentRequests: %d}", g.ports.listener, o.MaxConcurrentRequests)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `listener: %s
extProc: %s
rateLimit: {address: 127.0.0.1, port: %d, failureMode: closed}
identity: {header: %s}
backends:
  - {name: sim, url: "http://127.0.0.1:%d"}
models:
  - {name: qwen3, backend: sim}
`, listener, extProc, g.ports.rateLimit, UserHeader, g.simPort)
	for _, m := range o.Models {
		fmt.Fprintf(&b, "  - {name: %s, backend: sim}\n", m)
	}
	b.WriteString("costs:\n  - {name: tokens, type: TotalToken}\n")
	if !o.NoQuotas && !o.NullExtProc {
		fmt.Fprintf(&b, "quotas:\n  - {model: qwen3, cost: tokens, limit: %d, per: hour}\n", limit)
	}
	return b.String()
}

// extProcSocket is where the ext_proc server listens when PolicyOptions.ExtProcSocket is set.
func (g *Gateway) extProcSocket() string {
	return filepath.Join(filepath.Dir(g.PolicyPath), "extproc.sock")
}

// extProcListen is the ext_proc server's --extproc.
func (g *Gateway) extProcListen(o PolicyOptions) string {
	if o.ExtProcSocket {
		return "unix:" + g.extProcSocket()
	}
	return proc.Addr(g.ports.extProc)
}

// redisSocket is Redis' Unix socket, which it always listens on besides its port.
func (g *Gateway) redisSocket() string {
	return filepath.Join(filepath.Dir(g.PolicyPath), "redis", "redis.sock")
}

// redisURL is how tollgate reaches Redis.
func (g *Gateway) redisURL(o PolicyOptions) string {
	if o.RedisSocket {
		return "unix://" + g.redisSocket()
	}
	return proc.Addr(g.ports.redis)
}

// AwaitEnvoyAdmin polls Envoy's admin interface at path until its answer contains want.
func (g *Gateway) AwaitEnvoyAdmin(ctx context.Context, path, want string, timeout time.Duration) error {
	url := "http://" + proc.Addr(g.ports.admin) + path
	return proc.WaitFor(ctx, timeout, fmt.Sprintf("Envoy's %s showing %q", path, want), func() error {
		body, err := getBody(g.client, url)
		if err != nil {
			return err
		}
		if !strings.Contains(string(body), want) {
			return fmt.Errorf("%s does not show %q yet", path, want)
		}
		return nil
	})
}

// WritePolicy saves the policy as an editor does (write a temporary file, rename it over).
func (g *Gateway) WritePolicy(content string) error {
	tmp := g.PolicyPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, g.PolicyPath)
}

// StartGateway runs Redis, the control plane, the ratelimit service and an Envoy serving the
// policy opts describes, and waits until a request for qwen3 passes through all of them. The
// gateway's files live in e.Dir, so one Env holds one gateway.
func (e *Env) StartGateway(ctx context.Context, simPort int, opts PolicyOptions) (*Gateway, error) {
	ps, err := launch.FreePorts(9)
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		PolicyPath: filepath.Join(e.Dir, "policy.yaml"),
		client:     newProbeClient(),
		simPort:    simPort,
		ports: gatewayPorts{
			listener: ps[0], admin: ps[1], xds: ps[2], extProc: ps[3], metrics: ps[4],
			rateLimit: ps[5], rateLimitHTTP: ps[6], rateLimitDebug: ps[7], redis: ps[8],
		},
	}
	g.URL = "http://" + proc.Addr(g.ports.listener)
	g.MetricsAddr = proc.Addr(g.ports.metrics)
	g.RateLimitAddr = proc.Addr(g.ports.rateLimit)
	g.RateLimitDebugAddr = proc.Addr(g.ports.rateLimitDebug)
	if err := os.MkdirAll(e.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := g.WritePolicy(g.Policy(opts)); err != nil {
		return nil, err
	}

	if g.Redis, err = e.startRedis(ctx, g.ports.redis, g.redisSocket()); err != nil {
		return nil, err
	}
	if e.InProcess && !opts.NullExtProc {
		return g, e.startRun(ctx, g, opts)
	}
	if len(e.Bins.ControlPlane) == 0 {
		return nil, errors.New("no control plane command")
	}
	debounce := e.Debounce
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	extProcAddr := g.extProcListen(opts)
	if opts.NullExtProc {
		var redisPing string
		if opts.NullRedisPing {
			redisPing = proc.Addr(g.ports.redis)
		}
		if g.ExtProc, err = e.startNullExtProc(ctx, extProcAddr, opts.EnvoyStreams, redisPing); err != nil {
			return nil, err
		}
		extProcAddr = "" // the control plane serves none
	}
	cpArgs := append(append([]string(nil), e.Bins.ControlPlane[1:]...),
		"-f", g.PolicyPath,
		"--xds", proc.Addr(g.ports.xds),
		"--extproc", extProcAddr,
		"--metrics", g.MetricsAddr,
		"--debounce", debounce.String(),
		"--charge-spool", "")
	if !e.CheckOnly {
		cpArgs = append(cpArgs, "--redis", g.redisURL(opts))
	}
	if g.ControlPlane, err = e.startWithEnv("tollgate-serve", e.TollgateEnv, e.Bins.ControlPlane[0], cpArgs...); err != nil {
		return nil, err
	}
	if err := g.ControlPlane.Await(ctx, 20*time.Second, probeInterval, "control plane serving", func() error {
		return get(g.client, "http://"+g.MetricsAddr+"/healthz")
	}); err != nil {
		return nil, err
	}
	if g.RateLimit, err = e.startRateLimit(ctx, g.ports.rateLimit, g.ports.rateLimitHTTP, g.ports.rateLimitDebug,
		proc.Addr(g.ports.xds), g.redisURL(opts)); err != nil {
		return nil, err
	}

	bs, err := bootstrap.YAML(bootstrap.Options{XDSAddress: proc.Addr(g.ports.xds), AdminAddress: proc.Addr(g.ports.admin)})
	if err != nil {
		return nil, err
	}
	bsPath := filepath.Join(e.Dir, "gateway-envoy.yaml")
	if err := os.WriteFile(bsPath, bs, 0o644); err != nil {
		return nil, err
	}
	if g.Envoy, err = e.startEnvoy("envoy-gateway", bsPath); err != nil {
		return nil, err
	}
	err = g.Envoy.Await(ctx, 30*time.Second, probeInterval, "gateway serving qwen3", func() error {
		return g.Ask("qwen3", "warmup")
	})
	if err != nil {
		return nil, err
	}
	g.EnvoyPid = g.Envoy.Pid()
	return g, nil
}

// startRun runs the gateway as `tollgate run`, with the Env's Redis and Envoy.
func (e *Env) startRun(ctx context.Context, g *Gateway, opts PolicyOptions) error {
	g.AccessLogPath = filepath.Join(e.Dir, "run-logs", "envoy-access.log")
	args := []string{"run",
		"-f", g.PolicyPath,
		"--redis", g.redisURL(opts),
		"--xds", proc.Addr(g.ports.xds),
		"--extproc", g.extProcListen(opts),
		"--metrics", g.MetricsAddr,
		"--admin", proc.Addr(g.ports.admin),
		"--ratelimit-grpc", g.RateLimitAddr,
		"--ratelimit-http", proc.Addr(g.ports.rateLimitHTTP),
		"--ratelimit-debug", g.RateLimitDebugAddr,
		"--log-dir", filepath.Dir(g.AccessLogPath),
		"--charge-spool", "",
		"--envoy-log-level", "warning",
	}
	env := append([]string{"ENVOY_BIN=" + e.Bins.Envoy}, e.TollgateEnv...)
	p, err := e.startWithEnv("tollgate-run", env, e.Bins.Tollgate, args...)
	if err != nil {
		return err
	}
	g.ControlPlane, g.RateLimit = p, p
	if err := p.Await(ctx, 60*time.Second, probeInterval, "tollgate run serving qwen3", func() error {
		return g.Ask("qwen3", "warmup")
	}); err != nil {
		return err
	}
	g.EnvoyPid, err = proc.ChildNamed(p.Pid(), "envoy")
	return err
}

// Pids names the gateway's processes by what they are, each process once.
func (g *Gateway) Pids() map[string]int {
	pids := map[string]int{"envoy": g.EnvoyPid, "redis": g.Redis.Pid()}
	switch {
	case g.ExtProc != nil:
		pids["null ext_proc"] = g.ExtProc.Pid()
	case g.RateLimit == g.ControlPlane:
		pids["tollgate"] = g.ControlPlane.Pid()
	default:
		pids["tollgate"], pids["ratelimit"] = g.ControlPlane.Pid(), g.RateLimit.Pid()
	}
	return pids
}

// Metrics is the /metrics page of the gateway's tollgate (the process with the ext_proc server).
func (g *Gateway) Metrics() (string, error) {
	body, err := getBody(g.client, "http://"+g.MetricsAddr+"/metrics")
	return string(body), err
}

// ExtProcMessages is the number of ext_proc messages the gateway's tollgate has received from
// Envoy so far, all kinds together (tollgate_extproc_messages_total).
func (g *Gateway) ExtProcMessages() (float64, error) {
	page, err := g.Metrics()
	if err != nil {
		return 0, err
	}
	const name = "tollgate_extproc_messages_total{"
	var total float64
	found := false
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q: %w", line, err)
		}
		total += v
		found = true
	}
	if !found {
		return 0, errors.New("/metrics has no tollgate_extproc_messages_total")
	}
	return total, nil
}

// startNullExtProc runs the do-nothing ext_proc server on addr and waits until it accepts
// connections.
func (e *Env) startNullExtProc(ctx context.Context, addr string, markStreams bool, redisPing string) (*proc.Process, error) {
	if len(e.Bins.NullExtProc) == 0 {
		return nil, errors.New("no command for the do-nothing ext_proc server")
	}
	args := append(append([]string(nil), e.Bins.NullExtProc[1:]...),
		"--listen", addr, "--model-header", policies.DefaultModelHeader, "--model", "qwen3",
		"--mark-streams="+strconv.FormatBool(markStreams), "--redis-ping", redisPing)
	p, err := e.startWithEnv("null-extproc", e.TollgateEnv, e.Bins.NullExtProc[0], args...)
	if err != nil {
		return nil, err
	}
	network, dial := nullproc.Network(addr)
	return p, p.Await(ctx, 10*time.Second, probeInterval, "do-nothing ext_proc server listening", func() error {
		conn, err := net.DialTimeout(network, dial, time.Second)
		if err == nil {
			_ = conn.Close()
		}
		return err
	})
}

// Ask sends one chat completion for model as user through the gateway and fails unless the
// answer is 200.
func (g *Gateway) Ask(model, user string) error { return ask(g.client, g.URL, model, user) }

// ChatBody is the chat completion request every run sends: the seed demo's question.
func ChatBody(model string, stream bool) string {
	if stream {
		return fmt.Sprintf(`{"model":%q,"stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`, model)
	}
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello from Alice!"}]}`, model)
}

// RateLimit is a ratelimit service (with its own Redis) taking its limits from an xDS server.
type RateLimit struct {
	// Addr is the service's gRPC address.
	Addr           string
	Service, Redis *proc.Process
}

// StartRateLimit runs Redis and `tollgate ratelimit` against the ADS server at xdsAddr, and
// waits until the service has loaded a configuration (so something must be published).
func (e *Env) StartRateLimit(ctx context.Context, xdsAddr string) (*RateLimit, error) {
	ps, err := launch.FreePorts(4)
	if err != nil {
		return nil, err
	}
	redis, err := e.startRedis(ctx, ps[0], filepath.Join(e.Dir, "redis", "redis.sock"))
	if err != nil {
		return nil, err
	}
	svc, err := e.startRateLimit(ctx, ps[1], ps[2], ps[3], xdsAddr, proc.Addr(ps[0]))
	if err != nil {
		return nil, err
	}
	return &RateLimit{Addr: proc.Addr(ps[1]), Service: svc, Redis: redis}, nil
}

func (e *Env) startRateLimit(ctx context.Context, grpcPort, httpPort, debugPort int, xdsAddr, redisAddr string) (*proc.Process, error) {
	p, err := e.startWithEnv("ratelimit", e.TollgateEnv, e.Bins.Tollgate, "ratelimit",
		"--grpc", proc.Addr(grpcPort),
		"--http", proc.Addr(httpPort),
		"--debug", proc.Addr(debugPort),
		"--xds", xdsAddr,
		"--redis", redisAddr,
		"--log-level", "info")
	if err != nil {
		return nil, err
	}
	return p, p.Await(ctx, 30*time.Second, probeInterval, "ratelimit service has a configuration", func() error {
		if !p.LogContains("Successfully loaded new configuration") {
			return errors.New("no configuration loaded yet")
		}
		return nil
	})
}

func (e *Env) startRedis(ctx context.Context, port int, socket string) (*proc.Process, error) {
	dir := filepath.Join(e.Dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p, err := e.start("redis", e.Bins.Redis, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--unixsocket", socket, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir)
	if err != nil {
		return nil, err
	}
	return p, p.Await(ctx, 10*time.Second, probeInterval, "redis up", func() error {
		c, err := net.DialTimeout("tcp", proc.Addr(port), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}
