package proc

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis must not shift the fields.
	stat := "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0"
	got, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Fatalf("cpu = %s, want %s (utime 250 + stime 50 ticks)", got, want)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Fatal("no error for a stat line without a command name")
	}
}

func TestParseStatusRSS(t *testing.T) {
	status := "Name:\tenvoy\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t4\n"
	if got := parseStatusRSS(status); got != 2048<<10 {
		t.Fatalf("rss = %d, want %d", got, 2048<<10)
	}
	if got := parseStatusRSS("Name:\tx\n"); got != 0 {
		t.Fatalf("rss without VmRSS = %d, want 0", got)
	}
}

func TestOwnUsage(t *testing.T) {
	u, err := PidUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 {
		t.Fatalf("rss of the test process = %d, want > 0", u.RSS)
	}
}

func TestStartStopAndLog(t *testing.T) {
	dir := t.TempDir()
	p, err := Start("echoer", dir, []string{"ECHOER_WORD=ready"}, "/bin/sh", "-c", "echo $ECHOER_WORD; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	err = WaitFor(context.Background(), 5*time.Second, "log line", func() error {
		if !p.LogContains("ready") {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if done, _ := p.Exited(); done {
		t.Fatal("process exited early")
	}
	p.Stop()
	if done, _ := p.Exited(); !done {
		t.Fatal("process still running after Stop")
	}
}

func TestWaitForGivesUp(t *testing.T) {
	err := WaitFor(context.Background(), 50*time.Millisecond, "never", func() error { return errors.New("nope") })
	if err == nil {
		t.Fatal("WaitFor returned nil for a condition that never holds")
	}
}

func TestFreePortsAreDistinctAndFree(t *testing.T) {
	ports, err := FreePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice in %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", Addr(p))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		l.Close()
	}
}
