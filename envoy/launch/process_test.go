package launch_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// Fake Envoys: shell scripts standing in for the binary, so start, stop and crash handling are
// tested without a real Envoy. Each prints "up" to stderr once its signal handling is in place.
const (
	// fakeServer prints its arguments and the bootstrap to stdout and exits 0 on SIGTERM.
	fakeServer = `#!/bin/sh
echo "args: $*"
while [ $# -gt 0 ]; do
  if [ "$1" = "-c" ]; then cat "$2"; fi
  shift
done
trap 'echo "got TERM" >&2; exit 0' TERM
echo up >&2
sleep 1000 &
wait $!
`
	// fakeStubborn ignores SIGTERM, so only SIGKILL ends it.
	fakeStubborn = `#!/bin/sh
trap '' TERM
echo up >&2
while :; do sleep 1; done
`
	// fakeCrash fails at start with a few log lines, like Envoy rejecting its bootstrap.
	fakeCrash = `#!/bin/sh
i=1
while [ $i -le 30 ]; do echo "log line $i" >&2; i=$((i+1)); done
echo "critical: error initializing configuration: bad bootstrap" >&2
exit 3
`
	// fakeKilled dies by a signal of its own.
	fakeKilled = `#!/bin/sh
echo "about to die" >&2
kill -KILL $$
`
	// fakeBadStop exits 7 when asked to stop.
	fakeBadStop = `#!/bin/sh
trap 'echo "cannot shut down cleanly" >&2; exit 7' TERM
echo up >&2
sleep 1000 &
wait $!
`
)

// writeScript writes an executable script into a temp dir and returns its path.
func writeScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "envoy")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// startFake starts script as Envoy with test directories and stops it when the test ends.
func startFake(t *testing.T, script string, mutate func(*launch.Options)) *launch.Process {
	t.Helper()
	o := launch.Options{
		Binary:       writeScript(t, script),
		Bootstrap:    []byte("node: {id: test-envoy}\n"),
		ConfigDir:    t.TempDir(),
		LogDir:       filepath.Join(t.TempDir(), "logs"),
		AdminAddress: "127.0.0.1:1",
		StopGrace:    5 * time.Second,
	}
	if mutate != nil {
		mutate(&o)
	}
	p, err := launch.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	return p
}

func fileContains(path, substr string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), substr) {
		return fmt.Errorf("%s does not contain %q: %q", path, substr, b)
	}
	return nil
}

func waitUp(t *testing.T, p *launch.Process) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "fake envoy up", func() error { return fileContains(p.LogPath(), "up") })
}

func TestStartWritesBootstrapAndLogsToFiles(t *testing.T) {
	p := startFake(t, fakeServer, func(o *launch.Options) { o.Args = []string{"--log-level", "info"} })
	waitUp(t, p)

	b, err := os.ReadFile(p.BootstrapPath())
	if err != nil || string(b) != "node: {id: test-envoy}\n" {
		t.Fatalf("bootstrap file: %q, %v", b, err)
	}
	if filepath.Dir(p.AccessLogPath()) != filepath.Dir(p.LogPath()) || filepath.Base(p.AccessLogPath()) != launch.AccessLogFile {
		t.Fatalf("log paths %s, %s", p.AccessLogPath(), p.LogPath())
	}
	// stdout (the access log) got the arguments and the bootstrap the fake read through -c.
	wantArgs := "args: -c " + p.BootstrapPath() + " --disable-hot-restart --log-level info"
	if err := fileContains(p.AccessLogPath(), wantArgs); err != nil {
		t.Fatal(err)
	}
	if err := fileContains(p.AccessLogPath(), "node: {id: test-envoy}"); err != nil {
		t.Fatal(err)
	}
	if p.Pid() <= 0 {
		t.Fatalf("pid %d", p.Pid())
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := fileContains(p.LogPath(), "got TERM"); err != nil {
		t.Fatalf("Envoy was not asked with SIGTERM: %v", err)
	}
	if p.Err() != nil {
		t.Fatalf("Err after an asked-for stop: %v", p.Err())
	}
	// Stop again: same answer, no hang.
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestStartTruncatesOldLogs(t *testing.T) {
	logDir := t.TempDir()
	old := strings.Repeat("old line from an earlier run\n", 100)
	if err := os.WriteFile(filepath.Join(logDir, launch.EnvoyLogFile), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startFake(t, fakeCrash, func(o *launch.Options) { o.LogDir = logDir })
	<-p.Done()
	var exit *launch.ExitError
	if !errors.As(p.Err(), &exit) {
		t.Fatalf("Err = %v, want *ExitError", p.Err())
	}
	for _, l := range exit.LastLines {
		if strings.Contains(l, "old line") {
			t.Fatalf("tail shows an earlier run's log: %q", exit.LastLines)
		}
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	p := startFake(t, fakeStubborn, func(o *launch.Options) { o.StopGrace = 100 * time.Millisecond })
	waitUp(t, p)
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop of a process that ignores SIGTERM: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned while the process still runs")
	}
	if p.Err() != nil {
		t.Fatalf("Err = %v after a stop", p.Err())
	}
}

func TestStopReportsAFailedShutdown(t *testing.T) {
	p := startFake(t, fakeBadStop, nil)
	waitUp(t, p)
	err := p.Stop()
	var exit *launch.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("Stop = %v, want *ExitError", err)
	}
	if exit.Code != 7 || !exit.DuringStop {
		t.Fatalf("exit %+v, want code 7 during stop", exit)
	}
	if !strings.Contains(err.Error(), "exited with code 7 while stopping") || !strings.Contains(err.Error(), "cannot shut down cleanly") {
		t.Fatalf("message: %v", err)
	}
}

func TestUnexpectedExitIsReportedWithCodeAndLogTail(t *testing.T) {
	p := startFake(t, fakeCrash, func(o *launch.Options) { o.TailLines = 5 })
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("crashing fake did not exit")
	}
	err := p.Err()
	var exit *launch.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("Err = %v, want *ExitError", err)
	}
	if exit.Code != 3 || exit.Signal != "" || exit.DuringStop || exit.Pid != p.Pid() {
		t.Fatalf("exit %+v", exit)
	}
	want := []string{"log line 27", "log line 28", "log line 29", "log line 30",
		"critical: error initializing configuration: bad bootstrap"}
	if strings.Join(exit.LastLines, "|") != strings.Join(want, "|") {
		t.Fatalf("last lines %q, want %q", exit.LastLines, want)
	}
	msg := err.Error()
	for _, s := range []string{"exited with code 3 unexpectedly", p.LogPath(), "bad bootstrap"} {
		if !strings.Contains(msg, s) {
			t.Errorf("message lacks %q:\n%s", s, msg)
		}
	}
	// Stop after a crash reports the crash instead of pretending to stop.
	if err := p.Stop(); !errors.As(err, &exit) {
		t.Fatalf("Stop after a crash = %v", err)
	}
}

func TestExitBySignalIsNamed(t *testing.T) {
	p := startFake(t, fakeKilled, nil)
	<-p.Done()
	var exit *launch.ExitError
	if !errors.As(p.Err(), &exit) {
		t.Fatalf("Err = %v", p.Err())
	}
	if exit.Code != -1 || exit.Signal != "killed" {
		t.Fatalf("exit %+v, want killed by signal", exit)
	}
	if !strings.Contains(exit.Error(), "was killed by signal killed unexpectedly") || !strings.Contains(exit.Error(), "about to die") {
		t.Fatalf("message: %v", exit)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	base := launch.Options{Binary: filepath.Join(dir, "missing-envoy"), ConfigDir: dir, LogDir: dir}
	if _, err := launch.Start(base); err == nil || !strings.Contains(err.Error(), "missing-envoy") {
		t.Fatalf("missing binary: %v", err)
	}
	noDir := base
	noDir.ConfigDir = filepath.Join(dir, "does", "not", "exist")
	if _, err := launch.Start(noDir); err == nil || !strings.Contains(err.Error(), "bootstrap") {
		t.Fatalf("missing config dir: %v", err)
	}
	if _, err := launch.Start(launch.Options{ConfigDir: dir, LogDir: dir}); err == nil {
		t.Fatal("no binary: no error")
	}
	if _, err := launch.Start(launch.Options{Binary: base.Binary}); err == nil {
		t.Fatal("no directories: no error")
	}
}

// fakeAdmin answers /ready with states in turn, then keeps answering the last one.
func fakeAdmin(t *testing.T, states ...string) (addr string, calls *atomic.Int32) {
	t.Helper()
	calls = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
			return
		}
		n := int(calls.Add(1)) - 1
		state := states[min(n, len(states)-1)]
		if state != "LIVE" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = fmt.Fprintln(w, state)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), calls
}

func TestWaitReadyUntilLive(t *testing.T) {
	addr, calls := fakeAdmin(t, "PRE_INITIALIZING", "INITIALIZING", "INITIALIZING", "LIVE")
	p := startFake(t, fakeServer, func(o *launch.Options) { o.AdminAddress = addr })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 4 {
		t.Fatalf("/ready asked %d times, want 4 (until LIVE)", n)
	}
}

func TestWaitReadyGivesUpWithTheLastState(t *testing.T) {
	addr, _ := fakeAdmin(t, "INITIALIZING")
	p := startFake(t, fakeServer, func(o *launch.Options) { o.AdminAddress = addr })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := p.WaitReady(ctx)
	if err == nil || !strings.Contains(err.Error(), "/ready says INITIALIZING") || !strings.Contains(err.Error(), p.LogPath()) {
		t.Fatalf("WaitReady = %v", err)
	}
}

func TestWaitReadyReportsACrash(t *testing.T) {
	addr, _ := fakeAdmin(t, "INITIALIZING")
	p := startFake(t, fakeCrash, func(o *launch.Options) { o.AdminAddress = addr })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.WaitReady(ctx)
	var exit *launch.ExitError
	if !errors.As(err, &exit) || exit.Code != 3 {
		t.Fatalf("WaitReady = %v, want the crash's *ExitError", err)
	}
}
