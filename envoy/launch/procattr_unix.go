//go:build unix && !linux

package launch

import "syscall"

// childAttributes puts Envoy in a process group of its own, so a Ctrl-C in the terminal reaches
// only tollgate, which then stops Envoy in order. (Only Linux can also tie Envoy's life to
// tollgate's.)
func childAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signal sends sig to Envoy's process group, unless the process has already been reaped.
func (p *Process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}
