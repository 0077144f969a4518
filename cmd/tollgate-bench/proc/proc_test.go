package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
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

func TestParseStat(t *testing.T) {
	// utime 250, stime 50, cutime 120, cstime 30 ticks; parent 77.
	stat := "1234 (python) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 120 30 20 0 1 0 100 0 0"
	got, err := parseStat(stat)
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{state: 'S', ppid: 77, cpu: 3 * time.Second, childCPU: 1500 * time.Millisecond}
	if got != want {
		t.Fatalf("parseStat = %+v, want %+v", got, want)
	}
	if _, err := parseStat("1 (x) S 1 2 3"); err == nil {
		t.Fatal("no error for a short stat line")
	}
}

func TestTree(t *testing.T) {
	// 1 ─┬─ 10 ─┬─ 11 ── 13
	//    │      └─ 12
	//    └─ 20 ── 21
	stats := map[int]procStat{}
	for pid, ppid := range map[int]int{1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20} {
		stats[pid] = procStat{ppid: ppid}
	}
	got := tree(10, stats)
	if got[0] != 10 {
		t.Errorf("tree(10) = %v: the root comes first", got)
	}
	slices.Sort(got)
	if want := []int{10, 11, 12, 13}; !slices.Equal(got, want) {
		t.Errorf("tree(10) = %v, want %v", got, want)
	}
	if got := tree(21, stats); !slices.Equal(got, []int{21}) {
		t.Errorf("tree(21) = %v, want just the leaf", got)
	}
}

// A parent that only waits while its child burns CPU: the tree's CPU is the child's, and Stop
// leaves no child behind even though the child ignores the SIGINT its parent dies of (a
// non-interactive shell's background jobs do).
func TestTreeUsageAndStopTakeTheChildren(t *testing.T) {
	p, err := Start("tree", t.TempDir(), nil, "/bin/sh", "-c", "sh -c 'while :; do :; done' & wait")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	err = WaitFor(context.Background(), 20*time.Second, "the child's CPU counted", func() error {
		u, err := TreeUsage(p.Pid())
		if err != nil {
			return err
		}
		if u.CPU < 200*time.Millisecond {
			return fmt.Errorf("tree CPU %s", u.CPU)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	own, err := PidUsage(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	tu, err := TreeUsage(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	if own.CPU >= tu.CPU || tu.RSS <= own.RSS {
		t.Errorf("parent alone %+v, tree %+v: the tree should count the busy child", own, tu)
	}
	children := tree(p.Pid(), readStats())[1:]
	if len(children) == 0 {
		t.Fatal("no child in the tree")
	}
	p.Stop()
	// SIGKILL takes effect when the child is next scheduled: give it a moment.
	err = WaitFor(context.Background(), 5*time.Second, "children gone after Stop", func() error {
		for _, c := range children {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
			if err != nil {
				continue // gone
			}
			if st, err := parseStat(string(b)); err == nil && st.state != 'Z' {
				return fmt.Errorf("child %d still running (state %c)", c, st.state)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if _, err := TreeUsage(p.Pid()); err == nil {
		t.Error("TreeUsage of an ended process: no error")
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

func TestAwaitGivesUpWhenTheProcessExits(t *testing.T) {
	p, err := Start("quitter", t.TempDir(), nil, "/bin/sh", "-c", "echo 'cannot start: bad flag'; exit 2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	// A wait that ignored the exit would take the whole minute and say "not within 1m0s".
	err = p.Await(context.Background(), time.Minute, 20*time.Millisecond, "quitter serving", func() error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "quitter serving: quitter exited (exit status 2)") || !strings.Contains(err.Error(), "cannot start: bad flag") {
		t.Fatalf("Await = %v, want the exit with the log", err)
	}
}
