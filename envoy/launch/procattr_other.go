//go:build !unix

package launch

import "syscall"

// childAttributes has nothing to add where there are no process groups.
func childAttributes(ChildOptions) *syscall.SysProcAttr { return nil }

// send stops the process: without POSIX signals, every signal becomes a kill.
func (c *Child) send(syscall.Signal, bool) error { return c.cmd.Process.Kill() }

// sweep has no process group to empty.
func (c *Child) sweep() {}
