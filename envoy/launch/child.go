package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Group says whether a child gets a process group of its own, and which processes its signals
// reach.
type Group int

const (
	// SameGroup leaves the child in this process's group, so a Ctrl-C in the terminal reaches
	// it as well; signals go to the child alone.
	SameGroup Group = iota
	// OwnGroup makes the child lead a process group of its own, so a Ctrl-C in the terminal
	// reaches it only through Stop; every signal goes to the whole group (the child and
	// anything it started).
	OwnGroup
	// OwnGroupSweep is OwnGroup, except that signals go to the child alone, so a supervisor
	// stops its workers itself; once the child has exited, Stop sends SIGKILL to whatever is
	// left of its group (workers whose supervisor went first).
	OwnGroupSweep
)

// ChildOptions say what to run and how to stop it.
type ChildOptions struct {
	// Path is the executable; Args are its arguments, without the program name.
	Path string
	Args []string
	// Env is added to this process's environment; empty keeps the environment as it is.
	Env []string
	// Stdout and Stderr receive the child's output. An *os.File is written by the child
	// itself: no copying goroutine, nothing lost if this process crashes.
	Stdout, Stderr io.Writer
	// StopSignal is what Stop sends first. Zero means SIGTERM.
	StopSignal syscall.Signal
	// StopGrace is how long Stop waits after StopSignal before SIGKILL. Zero means
	// DefaultStopGrace.
	StopGrace time.Duration
	// Group says whether the child gets a process group of its own, and which processes
	// signals reach.
	Group Group
	// DeathSignal, on Linux, is what the kernel sends the child when this process dies without
	// stopping it, so no child is left holding ports. Zero means none.
	DeathSignal syscall.Signal
}

// Child is a running child process: started by StartChild, stopped by Stop (StopSignal, then
// SIGKILL after the grace period), waited for by one goroutine.
type Child struct {
	opts ChildOptions
	cmd  *exec.Cmd

	stopOnce sync.Once
	stopping chan struct{} // closed when Stop begins
	done     chan struct{} // closed when the child has exited; waitErr and asked are set then
	waitErr  error         // what cmd.Wait returned
	asked    bool          // Stop had begun when the child exited
}

// StartChild starts the child. It returns as soon as the process runs; Await waits until it
// serves.
func StartChild(o ChildOptions) (*Child, error) {
	if o.Path == "" {
		return nil, errors.New("launch: no program given")
	}
	if o.StopSignal == 0 {
		o.StopSignal = syscall.SIGTERM
	}
	if o.StopGrace <= 0 {
		o.StopGrace = DefaultStopGrace
	}
	cmd := exec.Command(o.Path, o.Args...)
	if len(o.Env) > 0 {
		cmd.Env = append(os.Environ(), o.Env...)
	}
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	cmd.SysProcAttr = childAttributes(o)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Child{opts: o, cmd: cmd, stopping: make(chan struct{}), done: make(chan struct{})}
	go c.wait()
	return c, nil
}

func (c *Child) wait() {
	err := c.cmd.Wait()
	c.waitErr = err
	c.asked = Closed(c.stopping)
	close(c.done)
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Done is closed when the child has exited, for whatever reason.
func (c *Child) Done() <-chan struct{} { return c.done }

// Exited reports whether the child has exited and, if so, what waiting for it returned (nil
// for exit code 0, an *exec.ExitError otherwise).
func (c *Child) Exited() (bool, error) {
	if !Closed(c.done) {
		return false, nil
	}
	return true, c.waitErr
}

// Wait waits for the child to exit and returns what Exited would then.
func (c *Child) Wait() error {
	<-c.done
	return c.waitErr
}

// Asked reports, once Done is closed, whether Stop had begun when the child exited: an exit
// that was asked for.
func (c *Child) Asked() bool {
	<-c.done
	return c.asked
}

// Stop sends StopSignal, then SIGKILL if the child still runs after the grace period, and
// waits for the exit; with OwnGroupSweep it then kills what is left of the child's group. It
// returns what Wait returns. Stop is safe to call more than once and from several goroutines;
// a child that has already exited is not signalled.
func (c *Child) Stop() error {
	c.stopOnce.Do(func() {
		if c.opts.Group == OwnGroupSweep {
			defer c.sweep()
		}
		if Closed(c.done) {
			return // exited on its own: nothing to signal
		}
		close(c.stopping)
		_ = c.Signal(c.opts.StopSignal)
		select {
		case <-c.done:
		case <-time.After(c.opts.StopGrace):
			_ = c.Signal(syscall.SIGKILL)
			<-c.done
		}
	})
	return c.Wait()
}

// Kill ends the child with SIGKILL at once, as a crash or the OOM killer would, and waits for
// the exit. It is not a stop: Asked reports false.
func (c *Child) Kill() error {
	_ = c.Signal(syscall.SIGKILL)
	return c.Wait()
}

// Signal sends sig to the child (to its whole group with OwnGroup). A child that has already
// exited, whose process id may belong to someone else by now, is not signalled:
// os.ErrProcessDone.
func (c *Child) Signal(sig syscall.Signal) error {
	if Closed(c.done) {
		return os.ErrProcessDone
	}
	return c.send(sig, c.opts.Group == OwnGroup)
}

// ErrExited says the child exited before it was ready.
var ErrExited = errors.New("the process exited")

// Await calls ready every interval until it returns nil, ctx ends or the child exits. It
// returns nil, an error wrapping ErrExited, or (when ctx ended) ready's last error, as Poll
// does.
func (c *Child) Await(ctx context.Context, interval time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := Poll(ctx, interval, ready)
	if err != nil && Closed(c.done) {
		return fmt.Errorf("%w (last: %v)", ErrExited, err) //nolint:errorlint // the child exited; the last probe error is detail, not a second cause
	}
	return err
}

// Poll calls probe every interval until it returns nil or ctx ends. It returns nil, or the
// probe's last error from before ctx ended (an answer cut short by ctx's end says nothing
// about what was probed), or, when every answer was cut short, the last one.
func Poll(ctx context.Context, interval time.Duration, probe func(context.Context) error) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		err := probe(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}

// Closed reports whether ch is closed, without waiting: whether what it signals has happened.
func Closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
