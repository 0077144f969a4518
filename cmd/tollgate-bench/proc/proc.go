// Package proc runs the benchmark's child processes (llmsim, Envoy, tollgate, the ratelimit
// service, Redis, LiteLLM) on envoy/launch's supervisor: output to a log file per process, a
// polite stop, and the CPU time and resident memory each one (or each process tree) used, read
// from /proc so the benchmark can say which process a request's CPU went to.
package proc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// stopGrace is how long Stop waits after SIGINT before it kills the process.
const stopGrace = 5 * time.Second

// Process is a running child process.
type Process struct {
	Name    string
	LogPath string

	child *launch.Child
}

// Start runs bin with args and this process's environment plus env; its stdout and stderr go
// to logDir/name.log. The child leads a process group of its own, so a Ctrl-C on the benchmark
// reaches the children only through Stop, in order, instead of all at once; on Linux the
// kernel kills it when the benchmark is killed outright, so nothing is left running.
func Start(name, logDir string, env []string, bin string, args ...string) (*Process, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// The child has its own copy of the file once started.
	defer func() { _ = f.Close() }()
	child, err := launch.StartChild(launch.ChildOptions{
		Path:   bin,
		Args:   args,
		Env:    env,
		Stdout: f, Stderr: f,
		StopSignal:  syscall.SIGINT,
		StopGrace:   stopGrace,
		Group:       launch.OwnGroupSweep,
		DeathSignal: syscall.SIGKILL,
	})
	if err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	return &Process{Name: name, LogPath: logPath, child: child}, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.child.Pid() }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) { return p.child.Exited() }

// Stop sends SIGINT, then SIGKILL after a grace period, and waits for the exit. Then it kills
// whatever is left of the process's group: children the process started and did not stop
// itself, such as the workers of a Python server whose supervisor went first.
func (p *Process) Stop() { _ = p.child.Stop() }

// LogTail returns up to the last n bytes of the process's log.
func (p *Process) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// LogContains reports whether the process has written s to its log.
func (p *Process) LogContains(s string) bool {
	b, _ := os.ReadFile(p.LogPath)
	return strings.Contains(string(b), s)
}

// Usage is what a process has used so far.
type Usage struct {
	// CPU is user plus system time of all the process's threads.
	CPU time.Duration
	// RSS is the resident set size in bytes.
	RSS int64
}

// Usage reads the process's CPU time and resident memory from /proc.
func (p *Process) Usage() (Usage, error) { return PidUsage(p.Pid()) }

// clockTicks is the kernel's USER_HZ, the unit of CPU times in /proc/PID/stat. It is 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// PidUsage reads a process's CPU time (/proc/PID/stat) and resident memory (/proc/PID/status).
func PidUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, err
	}
	cpu, err := parseStatCPU(string(stat))
	if err != nil {
		return Usage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, err
	}
	return Usage{CPU: cpu, RSS: parseStatusRSS(string(status))}, nil
}

// parseStatCPU returns utime+stime from the content of /proc/PID/stat.
func parseStatCPU(stat string) (time.Duration, error) {
	st, err := parseStat(stat)
	return st.cpu, err
}

// procStat is what the CPU accounting needs from /proc/PID/stat.
type procStat struct {
	state byte
	ppid  int
	// cpu is utime+stime: the process's own threads.
	cpu time.Duration
	// childCPU is cutime+cstime: the children (and their descendants) that have exited and
	// been waited for; the kernel moves their CPU time here when they are reaped.
	childCPU time.Duration
}

// parseStat reads the content of /proc/PID/stat. The command name (field 2) may contain spaces
// and parentheses, so fields are counted from the last ')'.
func parseStat(stat string) (procStat, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return procStat{}, errors.New("no command name")
	}
	// After ")": state is field 3, ppid field 4; utime, stime, cutime and cstime are fields
	// 14 to 17.
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 15 {
		return procStat{}, fmt.Errorf("only %d fields", len(fields)+2)
	}
	var n [5]int64
	var errs []error
	for i, f := range []int{1, 11, 12, 13, 14} {
		var err error
		n[i], err = strconv.ParseInt(fields[f], 10, 64)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return procStat{}, err
	}
	ticks := func(t int64) time.Duration { return time.Duration(t) * time.Second / clockTicks }
	return procStat{state: fields[0][0], ppid: int(n[0]), cpu: ticks(n[1] + n[2]), childCPU: ticks(n[3] + n[4])}, nil
}

// TreeUsage is PidUsage of pid and every process descended from it, summed, for a program
// that does its work in child processes (a Python server's workers). Its CPU also counts
// descendants that have exited and been reaped, so it never goes down when a worker is
// replaced. RSS is summed too, which counts shared pages once per process.
func TreeUsage(pid int) (Usage, error) {
	stats := readStats()
	if _, ok := stats[pid]; !ok {
		return Usage{}, fmt.Errorf("no process %d in /proc", pid)
	}
	var u Usage
	for _, p := range tree(pid, stats) {
		u.CPU += stats[p].cpu + stats[p].childCPU
		if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p)); err == nil {
			u.RSS += parseStatusRSS(string(status))
		}
	}
	return u, nil
}

// ChildNamed finds the child process of pid whose command name (/proc/PID/comm) is name.
func ChildNamed(pid int, name string) (int, error) {
	for child, st := range readStats() {
		if st.ppid != pid {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child)); err == nil && strings.TrimSpace(string(comm)) == name {
			return child, nil
		}
	}
	return 0, fmt.Errorf("process %d has no child named %q", pid, name)
}

// readStats reads /proc/PID/stat of every process; ones that end meanwhile are left out.
func readStats() map[int]procStat {
	out := map[int]procStat{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if st, err := parseStat(string(b)); err == nil {
			out[pid] = st
		}
	}
	return out
}

// tree lists root and every process below it, parents before children.
func tree(root int, stats map[int]procStat) []int {
	children := map[int][]int{}
	for pid, st := range stats {
		children[st.ppid] = append(children[st.ppid], pid)
	}
	out := []int{root}
	seen := map[int]bool{root: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i]] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// parseStatusRSS returns VmRSS in bytes from the content of /proc/PID/status (0 if absent).
func parseStatusRSS(status string) int64 {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}

// WaitFor polls cond every 20 ms until it returns nil, the timeout passes or ctx ends; the
// error then carries cond's last error.
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() error) error {
	return Poll(ctx, timeout, 20*time.Millisecond, what, cond)
}

// Poll is WaitFor with a chosen interval.
func Poll(ctx context.Context, timeout, interval time.Duration, what string, cond func() error) error {
	return bounded(ctx, timeout, what, func(ctx context.Context) error {
		return launch.Poll(ctx, interval, func(context.Context) error { return cond() })
	})
}

// Await is Poll that gives up as soon as the process exits, with the end of its log.
func (p *Process) Await(ctx context.Context, timeout, interval time.Duration, what string, cond func() error) error {
	return bounded(ctx, timeout, what, func(ctx context.Context) error {
		err := p.child.Await(ctx, interval, func(context.Context) error { return cond() })
		if errors.Is(err, launch.ErrExited) {
			_, exit := p.Exited()
			return &exitError{name: p.Name, err: exit, log: p.LogTail(4 << 10)}
		}
		return err
	})
}

// exitError ends a wait for good: the process is gone.
type exitError struct {
	name string
	err  error
	log  string
}

func (e *exitError) Error() string {
	return fmt.Sprintf("%s exited (%v); last log lines:\n%s", e.name, e.err, e.log)
}

// bounded runs wait with ctx bounded by timeout, and says in wait's error what was waited for
// and why the wait ended.
func bounded(ctx context.Context, timeout time.Duration, what string, wait func(context.Context) error) error {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := wait(waitCtx)
	var exit *exitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit):
		return fmt.Errorf("%s: %w", what, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err) //nolint:errorlint // the last error is detail: wrapping it too would make a cancelled wait match its deadline
	default:
		return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
	}
}

// Addr is the loopback address with port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
