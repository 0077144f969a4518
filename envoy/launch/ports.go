package launch

import (
	"errors"
	"net"
	"sync"
)

// handedOut remembers every port FreePorts returned in this process. A port is closed before
// the child that needs it binds it, and the kernel may offer a just-closed port again, so
// without this two parts of one stack could be given the same port.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePorts asks the kernel for n free loopback TCP ports that no earlier call in this process
// returned, for children that take a port to listen on rather than a listener. The ports are
// free when FreePorts returns; nothing stops another process from taking one before the child
// binds it.
func FreePorts(n int) ([]int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	out := make([]int, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries == 100*n {
			return nil, errors.New("the kernel kept offering ports already handed out")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		// Held open until all n are chosen, so the kernel offers each only once in this call.
		defer func() { _ = l.Close() }()
		port := l.Addr().(*net.TCPAddr).Port
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			out = append(out, port)
		}
	}
	return out, nil
}
