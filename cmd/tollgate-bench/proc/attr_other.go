//go:build !linux

package proc

import "syscall"

// childAttributes puts a child in its own process group, so a Ctrl-C on the benchmark reaches
// the children only through Stop. (CPU and memory figures need Linux's /proc.)
func childAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
