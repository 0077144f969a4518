//go:build !unix

package launch

import (
	"os"
	"syscall"
)

// childAttributes has nothing to add where there are no process groups.
func childAttributes() *syscall.SysProcAttr { return nil }

// signal stops the process: without POSIX signals, both SIGTERM and SIGKILL become a kill.
func (p *Process) signal(syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Kill)
}
