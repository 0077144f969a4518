package launch

import "syscall"

// childAttributes puts Envoy in a process group of its own, so a Ctrl-C in the terminal reaches
// only tollgate, which then stops Envoy in order; and asks the kernel to send Envoy SIGTERM if
// tollgate dies without stopping it, so no Envoy is left holding the ports.
func childAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signal sends sig to Envoy's process group (Envoy and anything it started), unless the
// process has already been reaped and its id may belong to someone else.
func (p *Process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}
