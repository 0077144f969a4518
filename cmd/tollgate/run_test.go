package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// testRunOptions returns run options on free ports and a valid policy whose endpoints agree
// with them.
func testRunOptions(t *testing.T) runOptions {
	t.Helper()
	a := testutil.FreeAddrs(t, 8)
	o := runOptions{
		xdsAddr: a[0], extProcAddr: a[1], metricsAddr: a[2], adminAddr: a[3],
		rateLimitGRPC: a[4], rateLimitHTTP: a[5], rateLimitDebug: a[6],
		logDir: filepath.Join(t.TempDir(), "logs"), logLevel: "info", envoyLogLevel: "info",
		policyFile: filepath.Join(t.TempDir(), "policy.yaml"),
	}
	policy := fmt.Sprintf(`
listener: {port: %s}
extProc: {port: %s}
rateLimit: {port: %s}
backends:
  - {name: sim, url: "http://127.0.0.1:9"}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 50, per: hour}
`, portOf(t, a[7]), portOf(t, o.extProcAddr), portOf(t, o.rateLimitGRPC))
	if err := os.WriteFile(o.policyFile, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestPlanRunAcceptsAgreeingEndpoints(t *testing.T) {
	o := testRunOptions(t)
	envoyBin := filepath.Join(t.TempDir(), "envoy")
	if err := os.WriteFile(envoyBin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(launch.EnvVar, envoyBin)
	plan, err := planRun(o)
	if err != nil {
		t.Fatal(err)
	}
	if plan.envoyBin != envoyBin || !filepath.IsAbs(plan.logDir) || plan.rateLimit.GRPCAddr != o.rateLimitGRPC || plan.rateLimit.XDSAddr != o.xdsAddr {
		t.Fatalf("plan %+v", plan)
	}
	if info, err := os.Stat(plan.logDir); err != nil || !info.IsDir() {
		t.Fatalf("log dir not created: %v", err)
	}
}

func TestPlanRunReportsEveryDisagreement(t *testing.T) {
	o := testRunOptions(t)
	policyExtProc, policyRateLimit := o.extProcAddr, o.rateLimitGRPC
	a := testutil.FreeAddrs(t, 2)
	o.extProcAddr, o.rateLimitGRPC = a[0], a[1]
	_, err := planRun(o)
	if err == nil {
		t.Fatal("no error for endpoints the policy does not name")
	}
	for _, want := range []string{
		"the policy's extProc is " + policyExtProc + " but tollgate run listens on " + a[0] + " (--extproc)",
		"pass --extproc " + policyExtProc,
		"the policy's rateLimit is " + policyRateLimit + " but tollgate run listens on " + a[1] + " (--ratelimit-grpc)",
		"pass --ratelimit-grpc " + policyRateLimit,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestPlanRunNamesAPortInUse(t *testing.T) {
	o := testRunOptions(t)
	l, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	_, err = planRun(o)
	if err == nil || !strings.Contains(err.Error(), "--metrics "+o.metricsAddr+" cannot be used") {
		t.Fatalf("planRun = %v, want the busy --metrics named", err)
	}
}

func TestPlanRunRejectsSharedPorts(t *testing.T) {
	o := testRunOptions(t)
	o.rateLimitHTTP = o.adminAddr
	_, err := planRun(o)
	if err == nil || !strings.Contains(err.Error(), "--admin and --ratelimit-http both use port "+portOf(t, o.adminAddr)) {
		t.Fatalf("planRun = %v", err)
	}
}

func TestPlanRunReportsPolicyErrors(t *testing.T) {
	o := testRunOptions(t)
	if err := os.WriteFile(o.policyFile, []byte("models: [{name: x, backend: nope}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := planRun(o)
	var list *policies.Errors
	if !errors.As(err, &list) {
		t.Fatalf("planRun = %v, want policy errors", err)
	}
}

func TestCheckEndpoint(t *testing.T) {
	ep := func(addr string, port int) policies.Endpoint { return policies.Endpoint{Address: addr, Port: port} }
	for _, tc := range []struct {
		name   string
		ep     policies.Endpoint
		listen string
		ok     bool
	}{
		{"same address", ep("127.0.0.1", 8081), "127.0.0.1:8081", true},
		{"all interfaces", ep("10.1.2.3", 8081), "0.0.0.0:8081", true},
		{"empty host", ep("127.0.0.1", 8081), ":8081", true},
		{"host name", ep("localhost", 8081), "127.0.0.1:8081", true},
		{"other port", ep("127.0.0.1", 8081), "127.0.0.1:9091", false},
		{"other IP", ep("127.0.0.2", 8081), "127.0.0.1:8081", false},
		{"not host:port", ep("127.0.0.1", 8081), "8081", false},
	} {
		err := checkEndpoint("rateLimit", tc.ep, "ratelimit-grpc", tc.listen, "tollgate run")
		if (err == nil) != tc.ok {
			t.Errorf("%s: checkEndpoint = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// The ext_proc server's socket and the policy's extProc must name the same Unix socket, or the
// same TCP endpoint; a mix of the two is refused with what to change.
func TestCheckExtProcSocket(t *testing.T) {
	tcp := policies.ExtProcEndpoint{Endpoint: policies.Endpoint{Address: "127.0.0.1", Port: 1063}}
	sock := tcp
	sock.Socket = "/run/tollgate/extproc.sock"
	for _, tc := range []struct {
		name   string
		ep     policies.ExtProcEndpoint
		listen string
		want   string // in the error; "" for none
	}{
		{"both TCP", tcp, "127.0.0.1:1063", ""},
		{"both the socket", sock, "unix:/run/tollgate/extproc.sock", ""},
		{"policy socket, flag TCP", sock, "127.0.0.1:1063", "pass --extproc unix:/run/tollgate/extproc.sock"},
		{"another socket", sock, "unix:/tmp/other.sock", "pass --extproc unix:/run/tollgate/extproc.sock"},
		{"policy TCP, flag socket", tcp, "unix:/tmp/x.sock", "set extProc.socket: /tmp/x.sock"},
		{"other TCP port", tcp, "127.0.0.1:2000", "pass --extproc 127.0.0.1:1063"},
	} {
		err := checkExtProc(tc.ep, tc.listen, "tollgate run")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want no error", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// A socket left behind by a process that is gone is replaced; one a live server listens on is
// not taken over.
func TestListenOnUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extproc.sock")
	first, err := listen(unixPrefix + path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen(unixPrefix + path); err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Errorf("a second listener on a live socket: %v", err)
	}
	// A process killed outright leaves its socket file behind.
	first.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = first.Close()
	second, err := listen(unixPrefix + path)
	if err != nil {
		t.Fatalf("listening over a stale socket: %v", err)
	}
	_ = second.Close()
}

func TestRunCommandWithoutEnvoy(t *testing.T) {
	o := testRunOptions(t)
	missing := filepath.Join(t.TempDir(), "envoy")
	t.Setenv(launch.EnvVar, missing)
	var stdout, stderr bytes.Buffer
	code := runCommand([]string{"-f", o.policyFile,
		"--xds", o.xdsAddr, "--extproc", o.extProcAddr, "--metrics", o.metricsAddr, "--admin", o.adminAddr,
		"--ratelimit-grpc", o.rateLimitGRPC, "--ratelimit-http", o.rateLimitHTTP, "--ratelimit-debug", o.rateLimitDebug,
		"--log-dir", o.logDir}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"Envoy not found", launch.EnvVar + "=" + missing, launch.InstallCommand, "task setup"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout: %q", stdout.String())
	}
}

func TestRunCommandUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--log-level", "loud"}, {"extra-argument"}} {
		var stdout, stderr bytes.Buffer
		if code := runCommand(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}

func TestEmbeddedCounters(t *testing.T) {
	var logs bytes.Buffer
	c, err := startCounters(slog.New(slog.NewTextHandler(&logs, nil)), "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "not persisted") {
		t.Errorf("no log line saying the counters are not persisted: %s", logs.String())
	}
	if d := c.describe(); !strings.Contains(d, "embedded") || !strings.Contains(d, c.url) {
		t.Errorf("describe = %q", d)
	}
	conn, err := net.DialTimeout("tcp", c.url, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprint(conn, "*1\r\n$4\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	_ = conn.Close()
	if err != nil || line != "+PONG\r\n" {
		t.Fatalf("PING answered %q, %v", line, err)
	}
	c.close()
	if conn, err := net.DialTimeout("tcp", c.url, time.Second); err == nil {
		_ = conn.Close()
		t.Fatal("embedded Redis still accepts connections after close")
	}
}

func TestExternalCountersHidePasswords(t *testing.T) {
	for url, want := range map[string]string{
		"10.0.0.5:6379":                       "Redis at 10.0.0.5:6379",
		"redis://:s3cret@redis.internal:6380": "Redis at redis.internal:6380",
		"rediss://user:s3cret@cache:6379":     "Redis at cache:6379 (TLS)",
		"redis+sentinel://:s3cret@s1,s2/main": `Redis primary "main" via sentinels s1:26379, s2:26379`,
	} {
		c, err := startCounters(slog.New(slog.DiscardHandler), url)
		if err != nil {
			t.Fatal(err)
		}
		got := c.describe()
		if got != want || strings.Contains(got, "s3cret") {
			t.Errorf("describe(%q) = %q, want %q", url, got, want)
		}
		c.close()
	}
}

func TestTaskEndsAsked(t *testing.T) {
	tk := startTask("part", func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	})
	if tk.finished() {
		t.Fatal("finished before being stopped")
	}
	if err := tk.stop(); err != nil || tk.unexpected {
		t.Fatalf("stop = %v, unexpected = %v", err, tk.unexpected)
	}
	g := &gateway{rateLimit: tk}
	if err := g.failures(); err != nil {
		t.Fatalf("failures after a stop: %v", err)
	}
}

func TestTaskEndsUnexpectedly(t *testing.T) {
	boom := errors.New("listener gone")
	tk := startTask("control plane", func(context.Context) error { return boom })
	<-tk.done
	g := &gateway{logger: slog.New(slog.DiscardHandler), controlPlane: tk}
	if !g.exited() {
		t.Fatal("exited = false after a part ended")
	}
	if err := g.stop(); err != nil {
		t.Fatalf("stop reports an exit that happened before it: %v", err)
	}
	err := g.failures()
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "the control plane stopped") {
		t.Fatalf("failures = %v", err)
	}
}

func TestAwaitGivesUpWhenAPartExits(t *testing.T) {
	tk := startTask("ratelimit service", func(context.Context) error { return errors.New("redis gone") })
	g := &gateway{rateLimit: tk}
	ok, err := g.await(context.Background(), "control plane", time.Minute, polling(func(context.Context) error {
		return errors.New("not yet")
	}))
	if ok || err != nil {
		t.Fatalf("await = %v, %v; want false without an error of its own", ok, err)
	}
}

func TestAwaitTimesOutWithTheLastProbeError(t *testing.T) {
	g := &gateway{}
	ok, err := g.await(context.Background(), "control plane", 100*time.Millisecond, polling(func(context.Context) error {
		return errors.New("connection refused")
	}))
	if ok || err == nil || !strings.Contains(err.Error(), "control plane did not start: connection refused") {
		t.Fatalf("await = %v, %v", ok, err)
	}
}

// TestSignalCatcher uses SIGUSR1 for the stop signal: a real SIGINT would reach any handler
// another test left behind.
func TestSignalCatcher(t *testing.T) {
	var cancelled, forced atomic.Bool
	forcedCh := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := catchSignals(slog.New(slog.DiscardHandler), func() { cancelled.Store(true); cancel() },
		func() { forced.Store(true); close(forcedCh) }, syscall.SIGUSR1)
	defer s.stop()

	// A handler registered by someone else (as the ratelimit service does) loses the signal.
	other := make(chan os.Signal, 1)
	signal.Notify(other, syscall.SIGUSR1)
	defer signal.Stop(other)
	s.reclaim()

	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("first signal did not cancel")
	}
	if forced.Load() {
		t.Fatal("first signal forced an exit")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-forcedCh:
	case <-time.After(10 * time.Second):
		t.Fatal("second signal did not force an exit")
	}
	select {
	case sig := <-other:
		t.Fatalf("a handler reclaim should have dropped got %v", sig)
	default:
	}
	if !cancelled.Load() {
		t.Fatal("cancel not called")
	}
}

func TestQuotaLines(t *testing.T) {
	p := &policies.Policy{Quotas: []policies.Quota{
		{Model: "qwen3", Cost: "tokens", Limit: policies.Limit{Count: 50}, Per: "hour"},
		{Model: "gpt-4", Cost: "weighted", Limit: policies.Limit{Count: 40}, Per: "day", Shadow: true,
			Overrides: []policies.Override{{User: "alice", Limit: policies.Limit{Count: 10}}}},
	}}
	got := strings.Join(quotaLines(p), "\n")
	want := "gpt-4: 40 weighted per day per user (1 override(s)) (shadow: counted, not enforced)\n" +
		"qwen3: 50 tokens per hour per user"
	if got != want {
		t.Fatalf("quotaLines:\n%s\nwant:\n%s", got, want)
	}
}

func TestRateLimitLogLevel(t *testing.T) {
	for in, want := range map[string]string{"debug": "debug", "DEBUG-4": "debug", "info": "info", "warn": "warn", "error": "error", "junk": "info"} {
		if got := rateLimitLogLevel(in); got != want {
			t.Errorf("rateLimitLogLevel(%q) = %q, want %q", in, got, want)
		}
	}
}

// tollgate run halves the Go runtime's processors for Envoy's sake, unless GOMAXPROCS is set.
func TestShareCPUsWithEnvoy(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)

	runtime.GOMAXPROCS(4)
	if n, set := shareCPUsWithEnvoy(func(string) (string, bool) { return "", false }); !set || n != 2 || runtime.GOMAXPROCS(0) != 2 {
		t.Errorf("4 processors: set %v to %d (now %d), want 2", set, n, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(1)
	if n, set := shareCPUsWithEnvoy(func(string) (string, bool) { return "", false }); !set || n != 1 {
		t.Errorf("1 processor: set %v to %d, want 1", set, n)
	}
	runtime.GOMAXPROCS(4)
	if _, set := shareCPUsWithEnvoy(func(string) (string, bool) { return "3", true }); set || runtime.GOMAXPROCS(0) != 4 {
		t.Errorf("GOMAXPROCS given: changed to %d", runtime.GOMAXPROCS(0))
	}
}

func TestCollectGarbageLessOftenUnlessGOGCIsSet(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)

	if !collectGarbageLessOften(func(string) (string, bool) { return "", false }) {
		t.Error("GOGC unset: the target was not set")
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC unset: the target is %d, want %d", got, gcPercent)
	}
	if collectGarbageLessOften(func(string) (string, bool) { return "50", true }) {
		t.Error("GOGC=50 given: tollgate set its own target")
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC given: the target changed to %d", got)
	}
}
