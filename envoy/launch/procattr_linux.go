package launch

import "syscall"

// childAttributes gives the child a process group of its own when asked, and asks the kernel to
// send it DeathSignal if this process dies without stopping it.
func childAttributes(o ChildOptions) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: o.Group != SameGroup, Pdeathsig: o.DeathSignal}
}
