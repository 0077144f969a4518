package testutil

import (
	"net"
	"strconv"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// FreePort returns a free loopback port that no other caller in this test binary got
// (launch.FreePorts): a port is closed before the process that needs it binds it, and the
// kernel may offer a just-closed port again.
func FreePort(t testing.TB) int {
	t.Helper()
	ports, err := launch.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

// FreeAddr is FreePort as a 127.0.0.1:port address, for parts that take an address to
// listen on rather than a listener.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// FreeAddrs returns n such addresses, all different.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	ports, err := launch.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, n)
	for i, p := range ports {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return addrs
}
