package launch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// startChild runs script with sh, its output in a log file, and stops it when the test ends.
func startChild(t *testing.T, script string, o launch.ChildOptions) (*launch.Child, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "child.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	o.Path = "/bin/sh"
	o.Args = []string{"-c", script}
	o.Stdout, o.Stderr = f, f
	c, err := launch.StartChild(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c, logPath
}

// signalled returns the signal that ended a process, if one did.
func signalled(err error) (syscall.Signal, bool) {
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return 0, false
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0, false
	}
	return ws.Signal(), true
}

// running reports whether pid is a live (not zombie) process.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

// readPid waits for the pid a script wrote to path.
func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, 10*time.Second, "pid file", func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}

func TestChildStopsWithItsStopSignal(t *testing.T) {
	c, log := startChild(t, `trap 'echo "got INT"; exit 0' INT; echo "env $CHILD_WORD"; echo up; while :; do sleep 1; done`,
		launch.ChildOptions{StopSignal: syscall.SIGINT, Env: []string{"CHILD_WORD=hello"}})
	testutil.Eventually(t, 10*time.Second, "child up", func() error { return fileContains(log, "up") })
	if done, _ := c.Exited(); done {
		t.Fatal("child exited early")
	}
	if err := fileContains(log, "env hello"); err != nil {
		t.Fatalf("Env not passed: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop = %v, want the child's clean exit", err)
	}
	if err := fileContains(log, "got INT"); err != nil {
		t.Fatalf("not asked with SIGINT: %v", err)
	}
	if !c.Asked() {
		t.Error("Asked = false after Stop")
	}
	if done, err := c.Exited(); !done || err != nil {
		t.Errorf("Exited = %v, %v after Stop", done, err)
	}
	// Stop again: same answer, no hang.
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestChildStopEscalatesToSIGKILL(t *testing.T) {
	c, log := startChild(t, `trap '' TERM; echo up; while :; do sleep 1; done`, launch.ChildOptions{StopGrace: 100 * time.Millisecond})
	testutil.Eventually(t, 10*time.Second, "child up", func() error { return fileContains(log, "up") })
	err := c.Stop()
	if sig, ok := signalled(err); !ok || sig != syscall.SIGKILL {
		t.Fatalf("Stop of a child that ignores SIGTERM = %v, want killed by SIGKILL", err)
	}
	if !c.Asked() {
		t.Error("Asked = false after Stop")
	}
}

func TestChildKillIsNotAStop(t *testing.T) {
	c, log := startChild(t, `echo up; while :; do sleep 1; done`, launch.ChildOptions{})
	testutil.Eventually(t, 10*time.Second, "child up", func() error { return fileContains(log, "up") })
	if sig, ok := signalled(c.Kill()); !ok || sig != syscall.SIGKILL {
		t.Fatal("Kill did not end the child with SIGKILL")
	}
	if c.Asked() {
		t.Error("Asked = true after Kill")
	}
	if err := c.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Signal after the exit = %v, want os.ErrProcessDone", err)
	}
}

func TestChildExitOnItsOwnIsNotAsked(t *testing.T) {
	c, _ := startChild(t, `exit 3`, launch.ChildOptions{})
	var exit *exec.ExitError
	if err := c.Wait(); !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("Wait = %v, want exit code 3", err)
	}
	if c.Asked() {
		t.Error("Asked = true for an exit nobody asked for")
	}
	if err := c.Stop(); !errors.As(err, &exit) {
		t.Fatalf("Stop after the exit = %v, want the exit", err)
	}
}

// OwnGroup: Stop's signal reaches what the child started.
func TestChildOwnGroupStopsTheGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	c, _ := startChild(t, fmt.Sprintf(`sleep 1000 & echo $! > %s; wait`, pidFile), launch.ChildOptions{Group: launch.OwnGroup})
	grandchild := readPid(t, pidFile)
	if err := c.Stop(); err != nil {
		if sig, ok := signalled(err); !ok || sig != syscall.SIGTERM {
			t.Fatalf("Stop = %v", err)
		}
	}
	testutil.Eventually(t, 5*time.Second, "the grandchild gone", func() error {
		if running(grandchild) {
			return fmt.Errorf("process %d still runs", grandchild)
		}
		return nil
	})
}

// OwnGroupSweep: the child alone gets the stop signal; what it leaves behind is killed after
// it exits, even a process that ignores the signal (a non-interactive shell's background jobs
// ignore SIGINT).
func TestChildOwnGroupSweepKillsTheLeftovers(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	c, _ := startChild(t, fmt.Sprintf(`sleep 1000 & echo $! > %s; wait`, pidFile),
		launch.ChildOptions{Group: launch.OwnGroupSweep, StopSignal: syscall.SIGINT})
	grandchild := readPid(t, pidFile)
	_ = c.Stop()
	testutil.Eventually(t, 5*time.Second, "the grandchild gone", func() error {
		if running(grandchild) {
			return fmt.Errorf("process %d still runs", grandchild)
		}
		return nil
	})
}

func TestChildAwait(t *testing.T) {
	c, log := startChild(t, `sleep 0.2; echo ready; while :; do sleep 1; done`, launch.ChildOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Await(ctx, 10*time.Millisecond, func(context.Context) error { return fileContains(log, "ready") }); err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Await(short, 10*time.Millisecond, func(context.Context) error { return errors.New("not this") })
	if err == nil || err.Error() != "not this" {
		t.Fatalf("Await cut short by ctx = %v, want the last answer", err)
	}

	dying, _ := startChild(t, `sleep 0.2; exit 1`, launch.ChildOptions{})
	err = dying.Await(ctx, 10*time.Millisecond, func(context.Context) error { return errors.New("never ready") })
	if !errors.Is(err, launch.ErrExited) || !strings.Contains(err.Error(), "never ready") {
		t.Fatalf("Await of an exiting child = %v, want ErrExited with the last answer", err)
	}
}

func TestPollKeepsTheLastRealAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := launch.Poll(ctx, 10*time.Millisecond, func(ctx context.Context) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("connection refused")
	})
	if err == nil || err.Error() != "connection refused" {
		t.Fatalf("Poll = %v, want the last answer before ctx ended", err)
	}
	n := 0
	if err := launch.Poll(context.Background(), time.Millisecond, func(context.Context) error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d probes, want nil after 3", err, n)
	}
}

func TestStartChildErrors(t *testing.T) {
	if _, err := launch.StartChild(launch.ChildOptions{}); err == nil {
		t.Fatal("no program: no error")
	}
	if _, err := launch.StartChild(launch.ChildOptions{Path: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("missing program: no error")
	}
}

func TestFreePortsAreDistinctFreeAndNeverRepeated(t *testing.T) {
	seen := map[int]bool{}
	for range 3 {
		ports, err := launch.FreePorts(50)
		if err != nil {
			t.Fatal(err)
		}
		if len(ports) != 50 {
			t.Fatalf("%d ports, want 50", len(ports))
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				t.Fatalf("port %d is not free: %v", p, err)
			}
			_ = l.Close()
		}
	}
}
