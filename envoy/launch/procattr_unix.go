//go:build unix && !linux

package launch

import "syscall"

// childAttributes gives the child a process group of its own when asked. (Only Linux can also
// tie the child's life to this process's: DeathSignal is ignored here.)
func childAttributes(o ChildOptions) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: o.Group != SameGroup}
}
