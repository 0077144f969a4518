//go:build unix

package launch

import "syscall"

// send sends sig to the child, or to its whole process group (the child leads it).
func (c *Child) send(sig syscall.Signal, group bool) error {
	if group {
		return syscall.Kill(-c.cmd.Process.Pid, sig)
	}
	return c.cmd.Process.Signal(sig)
}

// sweep sends SIGKILL to what is left of the child's process group: processes it started and
// did not stop itself. An empty or gone group is not an error.
func (c *Child) sweep() { _ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) }
