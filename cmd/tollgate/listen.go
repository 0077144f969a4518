package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/policies"
)

// unixPrefix marks a listen address that is a Unix socket: unix:/run/tollgate/extproc.sock.
const unixPrefix = "unix:"

// listen listens on addr: host:port over TCP, or unix:PATH on a Unix socket. A socket file left
// behind by a process that ended without removing it is replaced; one another process still
// listens on is an error.
func listen(addr string) (net.Listener, error) {
	path, isUnix := strings.CutPrefix(addr, unixPrefix)
	if !isUnix {
		return net.Listen("tcp", addr)
	}
	if info, err := os.Lstat(path); err == nil && info.Mode()&os.ModeSocket != 0 {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = conn.Close()
			return nil, fmt.Errorf("%s: another process listens on this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	}
	return net.Listen("unix", path)
}

// checkExtProc makes sure Envoy, configured by the policy's extProc, dials what the ext_proc
// server listens on (--extproc), who being the command that listens.
func checkExtProc(ep policies.ExtProcEndpoint, listenAddr, who string) error {
	path, isUnix := strings.CutPrefix(listenAddr, unixPrefix)
	switch {
	case ep.Socket == "" && !isUnix:
		return checkEndpoint("extProc", ep.Endpoint, "extproc", listenAddr, who)
	case ep.Socket == "":
		return fmt.Errorf("%s listens on the Unix socket %s (--extproc) but the policy's extProc is %s:%d, so Envoy would not reach it; set extProc.socket: %s in the policy",
			who, path, ep.Address, ep.Port, path)
	case !isUnix || path != ep.Socket:
		return fmt.Errorf("the policy's extProc is the Unix socket %s but %s listens on %s (--extproc), so Envoy would not reach it; pass --extproc %s%s",
			ep.Socket, who, listenAddr, unixPrefix, ep.Socket)
	}
	return nil
}
