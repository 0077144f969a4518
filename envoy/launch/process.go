package launch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// File names inside Options.ConfigDir and Options.LogDir.
const (
	// BootstrapFile is the bootstrap Envoy is started with (-c).
	BootstrapFile = "envoy-bootstrap.yaml"
	// AccessLogFile receives Envoy's stdout, where tollgate's listener writes its JSON access log.
	AccessLogFile = "envoy-access.log"
	// EnvoyLogFile receives Envoy's stderr: its own log.
	EnvoyLogFile = "envoy.log"
)

const (
	// DefaultStopGrace is how long Stop lets Envoy shut down after SIGTERM before SIGKILL.
	DefaultStopGrace = 10 * time.Second
	// DefaultTailLines is how many lines of Envoy's log an ExitError carries.
	DefaultTailLines = 20
)

// Options say what to run and where its files go.
type Options struct {
	// Binary is the Envoy executable (see FindBinary).
	Binary string
	// Bootstrap is the bootstrap YAML, written to ConfigDir/BootstrapFile.
	Bootstrap []byte
	// ConfigDir holds the bootstrap. It must exist.
	ConfigDir string
	// LogDir receives AccessLogFile and EnvoyLogFile, truncated at each start so the last
	// lines of a crash belong to this run. It is created when missing.
	LogDir string
	// AdminAddress is the admin interface's host:port, as in the bootstrap; WaitReady polls it.
	AdminAddress string
	// Args are extra command-line arguments, such as --log-level or --concurrency.
	Args []string
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL. Zero means DefaultStopGrace.
	StopGrace time.Duration
	// TailLines is how many lines of Envoy's log an ExitError carries. Zero means DefaultTailLines.
	TailLines int
}

// Process is a running Envoy.
type Process struct {
	opts          Options
	child         *Child
	bootstrapPath string
	accessLogPath string
	logPath       string

	done    chan struct{} // closed when the process has exited and exitErr is set
	exitErr error         // nil, or *ExitError for an exit Stop did not ask for
	stopErr error         // what Stop reports: a failure to shut down cleanly
}

// Start writes the bootstrap and starts Envoy with --disable-hot-restart, so several Envoys
// (and tests) can run side by side without a shared-memory region. It returns as soon as the
// process runs; WaitReady waits for it to serve.
func Start(o Options) (*Process, error) {
	if o.Binary == "" {
		return nil, errors.New("launch: no Envoy binary given")
	}
	if o.ConfigDir == "" || o.LogDir == "" {
		return nil, errors.New("launch: ConfigDir and LogDir are required")
	}
	if o.StopGrace <= 0 {
		o.StopGrace = DefaultStopGrace
	}
	if o.TailLines <= 0 {
		o.TailLines = DefaultTailLines
	}
	p := &Process{
		opts:          o,
		bootstrapPath: filepath.Join(o.ConfigDir, BootstrapFile),
		accessLogPath: filepath.Join(o.LogDir, AccessLogFile),
		logPath:       filepath.Join(o.LogDir, EnvoyLogFile),
		done:          make(chan struct{}),
	}
	if err := os.WriteFile(p.bootstrapPath, o.Bootstrap, 0o600); err != nil {
		return nil, fmt.Errorf("write Envoy bootstrap: %w", err)
	}
	if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("create Envoy log directory: %w", err)
	}
	stdout, err := os.Create(p.accessLogPath)
	if err != nil {
		return nil, fmt.Errorf("open Envoy access log: %w", err)
	}
	// Envoy writes these through its own copies once started; ours are only closed.
	defer func() { _ = stdout.Close() }()
	stderr, err := os.Create(p.logPath)
	if err != nil {
		return nil, fmt.Errorf("open Envoy log: %w", err)
	}
	defer func() { _ = stderr.Close() }()

	args := append([]string{"-c", p.bootstrapPath, "--disable-hot-restart"}, o.Args...)
	p.child, err = StartChild(ChildOptions{
		Path: o.Binary,
		Args: args,
		// The child writes to the files itself: no copying goroutine, nothing lost if we crash.
		Stdout: stdout, Stderr: stderr,
		StopSignal: syscall.SIGTERM,
		StopGrace:  o.StopGrace,
		// A group of its own, so a Ctrl-C in the terminal reaches only tollgate, which then
		// stops Envoy in order; and SIGTERM from the kernel if tollgate dies without stopping
		// it, so no Envoy is left holding the ports.
		Group:       OwnGroup,
		DeathSignal: syscall.SIGTERM,
	})
	if err != nil {
		return nil, fmt.Errorf("start Envoy (%s): %w", o.Binary, err)
	}
	go p.wait()
	return p, nil
}

func (p *Process) wait() {
	err := p.child.Wait()
	if p.child.Asked() {
		p.stopErr = p.stopResult(err)
	} else {
		p.exitErr = p.exitError(err)
	}
	close(p.done)
}

// stopResult accepts the ways Envoy ends when told to stop: a clean exit, or the signal we sent.
func (p *Process) stopResult(err error) error {
	var exit *exec.ExitError
	if err == nil {
		return nil
	}
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL) {
			return nil
		}
	}
	e := p.exitError(err)
	e.DuringStop = true
	return e
}

// exitError describes how the process ended, with the end of its log.
func (p *Process) exitError(err error) *ExitError {
	e := &ExitError{Pid: p.child.Pid(), Code: -1, LogPath: p.logPath}
	var exit *exec.ExitError
	switch {
	case err == nil:
		e.Code = 0
	case errors.As(err, &exit):
		e.Code = exit.ExitCode()
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
		}
	default:
		e.WaitErr = err
	}
	e.LastLines, e.LogErr = lastLines(p.logPath, p.opts.TailLines)
	return e
}

// Pid is Envoy's process id.
func (p *Process) Pid() int { return p.child.Pid() }

// BootstrapPath is the bootstrap file Envoy was started with.
func (p *Process) BootstrapPath() string { return p.bootstrapPath }

// AccessLogPath is the file receiving Envoy's stdout (the access log).
func (p *Process) AccessLogPath() string { return p.accessLogPath }

// LogPath is the file receiving Envoy's stderr (its own log).
func (p *Process) LogPath() string { return p.logPath }

// Done is closed when Envoy has exited, for whatever reason.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err reports, once Done is closed, why Envoy exited without being asked to: an *ExitError,
// or nil when Stop asked for the exit (or Envoy still runs).
func (p *Process) Err() error {
	select {
	case <-p.done:
		if p.exitErr != nil {
			return p.exitErr
		}
	default:
	}
	return nil
}

// Stop asks Envoy to exit with SIGTERM, sends SIGKILL if it is still running after the grace
// period, and waits for the exit. It returns nil when Envoy exited as asked, the *ExitError of
// an earlier unexpected exit, or an *ExitError with DuringStop set when Envoy failed on its
// way out. Stop is safe to call more than once and from several goroutines.
func (p *Process) Stop() error {
	_ = p.child.Stop()
	<-p.done
	if p.exitErr != nil {
		return p.exitErr
	}
	return p.stopErr
}

// ExitError describes how Envoy ended.
type ExitError struct {
	Pid int
	// Code is the exit code, or -1 when a signal ended the process.
	Code int
	// Signal names the signal that ended the process, if one did.
	Signal string
	// DuringStop is set when the failure happened while Stop was shutting Envoy down.
	DuringStop bool
	// WaitErr is set when waiting for the process failed rather than the process.
	WaitErr error
	// LogPath is Envoy's log file; LastLines are its last lines (LogErr if it could not be read).
	LogPath   string
	LastLines []string
	LogErr    error
}

func (e *ExitError) Error() string {
	var b strings.Builder
	b.WriteString("envoy (pid ")
	fmt.Fprint(&b, e.Pid)
	b.WriteString(")")
	switch {
	case e.WaitErr != nil:
		fmt.Fprintf(&b, " could not be waited for: %v", e.WaitErr)
	case e.Signal != "":
		fmt.Fprintf(&b, " was killed by signal %s", e.Signal)
	default:
		fmt.Fprintf(&b, " exited with code %d", e.Code)
	}
	if e.DuringStop {
		b.WriteString(" while stopping")
	} else {
		b.WriteString(" unexpectedly")
	}
	switch {
	case e.LogErr != nil:
		fmt.Fprintf(&b, "; its log %s could not be read: %v", e.LogPath, e.LogErr)
	case len(e.LastLines) == 0:
		fmt.Fprintf(&b, "; its log %s is empty", e.LogPath)
	default:
		fmt.Fprintf(&b, "; last lines of %s:", e.LogPath)
		for _, l := range e.LastLines {
			b.WriteString("\n    ")
			b.WriteString(l)
		}
	}
	return b.String()
}
