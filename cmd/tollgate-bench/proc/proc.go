// Package proc runs the benchmark's child processes (llmsim, Envoy, tollgate, the ratelimit
// service, Redis, LiteLLM): output to a log file per process, a polite stop, and the CPU time
// and resident memory each one (or each process tree) used, read from /proc so the benchmark
// can say which process a request's CPU went to.
package proc

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
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGINT before it kills the process.
const stopGrace = 5 * time.Second

// Process is a running child process.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}

	mu  sync.Mutex
	err error // why the process ended, once done is closed
}

// Start runs bin with args and this process's environment plus env; its stdout and stderr go
// to logDir/name.log.
func Start(name, logDir string, env []string, bin string, args ...string) (*Process, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = childAttributes()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGINT, then SIGKILL after a grace period, and waits for the exit. Then it kills
// whatever is left of the process's group: children the process started and did not stop
// itself, such as the workers of a Python server whose supervisor went first.
func (p *Process) Stop() {
	defer p.killGroup()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// killGroup sends SIGKILL to the process group Start made the process lead (its id is the
// process's); an empty or gone group is not an error.
func (p *Process) killGroup() { _ = syscall.Kill(-p.Pid(), syscall.SIGKILL) }

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
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// FreePorts asks the kernel for n distinct free loopback ports. Every listener stays open
// until all n are chosen: a port closed early could be offered again.
func FreePorts(n int) ([]int, error) {
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// Addr is the loopback address with port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
