package proc

import "syscall"

// childAttributes puts a child in its own process group, so a Ctrl-C on the benchmark reaches
// the children only through Stop, in order, instead of all at once; and has the kernel kill it
// when the benchmark is killed outright, so nothing is left running.
func childAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
