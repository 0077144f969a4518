//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// stack is one running gateway: llmsim backends, tollgate serve and a real Envoy.
type stack struct {
	dir          string
	policyPath   string
	listenerPort int
	adminPort    int
	xdsPort      int
	extProcPort  int
	metricsPort  int
	// extProcMetricsPort serves the metrics of a separate `tollgate extproc`; 0 when the
	// ext_proc server runs in `tollgate serve`.
	extProcMetricsPort int
	rateLimit          int // port the policy points Envoy's ratelimit cluster at
	// redisPort is where the stack's Redis runs (startRedis): the ratelimit service keeps its
	// counters there, and tollgate takes reserved hits back from them.
	redisPort int
	backends  map[string]int
	// charges says quotas are charged to a ratelimit service, so tests wait for charges.
	charges bool
	// rateLimitProc is the stack's `tollgate ratelimit`, once started.
	rateLimitProc *process
	tollgate      *process
	envoy         *process
}

// startSim runs one llmsim named name and returns its port.
func startSim(t testing.TB, name string, extra ...string) int {
	t.Helper()
	port := testutil.FreePort(t)
	args := append([]string{"--listen", addr(port), "--name", name}, extra...)
	start(t, "llmsim-"+name, bins.llmsim, args...)
	testutil.Eventually(t, 10*time.Second, "llmsim "+name+" healthy", func() error {
		r, err := do("GET", fmt.Sprintf("http://%s/healthz", addr(port)), nil, "")
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("status %d", r.status)
		}
		return nil
	})
	return port
}

// newStack prepares ports and a policy directory; render writes the policy from a template in
// which {{listener}} (or {{listener_port}}), {{extproc}} (or {{extproc_port}}), {{ratelimit_port}} and
// {{backend:NAME}} are replaced.
func newStack(t testing.TB, backends map[string]int) *stack {
	t.Helper()
	// Most tests count on hourly quotas and read the current hour's counter, which a test
	// that straddles the hour would see split over two windows; none takes two minutes.
	clearOfWindowEnd(t, time.Hour, 2*time.Minute)
	dir := t.TempDir()
	return &stack{
		dir:          dir,
		policyPath:   filepath.Join(dir, "policy.yaml"),
		listenerPort: testutil.FreePort(t),
		adminPort:    testutil.FreePort(t),
		xdsPort:      testutil.FreePort(t),
		extProcPort:  testutil.FreePort(t),
		metricsPort:  testutil.FreePort(t),
		rateLimit:    testutil.FreePort(t),
		redisPort:    testutil.FreePort(t),
		backends:     backends,
	}
}

// clearOfWindowEnd waits, when the current fixed window (aligned to the Unix epoch, as the
// ratelimit service's are) ends within need, until the next one has begun.
func clearOfWindowEnd(t testing.TB, window, need time.Duration) {
	t.Helper()
	now := time.Now()
	end := now.Truncate(window).Add(window)
	if left := end.Sub(now); left < need {
		t.Logf("waiting %s for the next %s window, so the test does not straddle two", left.Round(time.Second), window)
		time.Sleep(left + time.Second)
	}
}

func (s *stack) render(tmpl string) string {
	r := strings.NewReplacer(
		"{{listener}}", fmt.Sprintf("{address: 127.0.0.1, port: %d}", s.listenerPort),
		"{{listener_port}}", fmt.Sprint(s.listenerPort),
		"{{extproc}}", fmt.Sprintf("{address: 127.0.0.1, port: %d}", s.extProcPort),
		"{{extproc_port}}", fmt.Sprint(s.extProcPort),
		"{{ratelimit_port}}", fmt.Sprint(s.rateLimit),
	)
	out := r.Replace(tmpl)
	for name, port := range s.backends {
		out = strings.ReplaceAll(out, "{{backend:"+name+"}}", fmt.Sprintf("http://127.0.0.1:%d", port))
	}
	return out
}

func (s *stack) writePolicy(t testing.TB, tmpl string) {
	t.Helper()
	writeFile(t, s.policyPath, s.render(tmpl))
}

// startTollgate runs `tollgate serve` on the stack's policy.
func (s *stack) startTollgate(t testing.TB) {
	t.Helper()
	s.startTollgateWith(t)
}

// startEnvoy runs a real Envoy with tollgate's bootstrap and waits until it serves the policy.
func (s *stack) startEnvoy(t testing.TB) {
	t.Helper()
	s.startEnvoyWith(t)
}

func (s *stack) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.listenerPort, path)
}
func (s *stack) adminURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.adminPort, path)
}
func (s *stack) metricsURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.metricsPort, path)
}

// runTollgate runs a short tollgate command and returns its stdout.
func runTollgate(t testing.TB, args ...string) string {
	t.Helper()
	out, err := execOutput(bins.tollgate, args...)
	if err != nil {
		t.Fatalf("tollgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// startRedis runs the stack's throwaway redis-server and returns its address.
func (s *stack) startRedis(t testing.TB) string {
	t.Helper()
	a, _ := startRedisOn(t, s.redisPort)
	return a
}

// startRedisOn runs a throwaway redis-server (no persistence) on port.
func startRedisOn(t testing.TB, port int) (string, *process) {
	t.Helper()
	bin := testutil.RedisServer(t)
	p := start(t, "redis", bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	a := addr(port)
	testutil.Eventually(t, 10*time.Second, "redis up", func() error {
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return a, p
}

// startRateLimit runs `tollgate ratelimit` against the stack's control plane and Redis; Envoy
// reaches it on the port the policy names ({{ratelimit_port}}).
func (s *stack) startRateLimit(t testing.TB, redisAddr string) *process {
	t.Helper()
	return s.startRateLimitWith(t, redisAddr)
}

// startTollgateWith runs `tollgate serve` like startTollgate, with extra flags after the usual
// ones (the last occurrence of a flag wins, so extra can override them).
func (s *stack) startTollgateWith(t testing.TB, extra ...string) {
	t.Helper()
	args := append([]string{"serve",
		"-f", s.policyPath,
		"--xds", addr(s.xdsPort),
		"--extproc", addr(s.extProcPort),
		"--metrics", addr(s.metricsPort),
		"--debounce", "50ms",
		"--redis", addr(s.redisPort),
		"--charge-spool", filepath.Join(s.dir, "charges.spool"),
		"--log-level", "debug"}, extra...)
	s.tollgate = start(t, "tollgate", bins.tollgate, args...)
	testutil.Eventually(t, 15*time.Second, "tollgate serving", func() error {
		_, err := do("GET", s.metricsURL("/healthz"), nil, "")
		return err
	})
}

// startExtProc runs `tollgate extproc` on the stack's ext_proc port, following the stack's
// policy file; pair it with startTollgateWith(t, "--extproc", "").
func (s *stack) startExtProc(t testing.TB) *process {
	t.Helper()
	metrics := testutil.FreePort(t)
	p := start(t, "extproc", bins.tollgate, "extproc",
		"-f", s.policyPath,
		"--listen", addr(s.extProcPort),
		"--metrics", addr(metrics),
		"--debounce", "50ms",
		"--redis", addr(s.redisPort),
		"--charge-spool", filepath.Join(s.dir, "extproc-charges.spool"),
		"--log-level", "debug")
	p.port = s.extProcPort
	s.extProcMetricsPort = metrics
	testutil.Eventually(t, 15*time.Second, "tollgate extproc serving", func() error {
		_, err := do("GET", fmt.Sprintf("http://%s/healthz", addr(metrics)), nil, "")
		return err
	})
	return p
}

// startEnvoyWith is startEnvoy with extra `tollgate bootstrap` flags.
func (s *stack) startEnvoyWith(t testing.TB, bootstrapFlags ...string) {
	t.Helper()
	envoyBin := testutil.Envoy(t)
	bootstrapPath := filepath.Join(s.dir, "envoy.yaml")
	args := append([]string{"bootstrap", "--xds", addr(s.xdsPort), "--admin", addr(s.adminPort)}, bootstrapFlags...)
	out := runTollgate(t, args...)
	if err := os.WriteFile(bootstrapPath, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	s.envoy = start(t, "envoy", envoyBin, "-c", bootstrapPath,
		"--disable-hot-restart", "--log-level", "warn", "--concurrency", "1",
		// The access log (stdout) is flushed every 10 s by default; tests read it sooner.
		"--file-flush-interval-msec", "100")
	testutil.Eventually(t, 30*time.Second, "envoy ready", func() error {
		r, err := do("GET", s.adminURL("/ready"), nil, "")
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("/ready: %d %s", r.status, strings.TrimSpace(string(r.body)))
		}
		return nil
	})
}

// startRateLimitWith is startRateLimit with extra `tollgate ratelimit` flags.
func (s *stack) startRateLimitWith(t testing.TB, redisAddr string, extra ...string) *process {
	t.Helper()
	s.charges = true
	args := append([]string{"ratelimit",
		"--grpc", addr(s.rateLimit),
		"--http", addr(testutil.FreePort(t)),
		"--debug", addr(testutil.FreePort(t)),
		"--xds", addr(s.xdsPort),
		"--redis", redisAddr,
		"--log-level", "debug"}, extra...)
	p := start(t, "ratelimit", bins.tollgate, args...)
	p.port = s.rateLimit
	s.rateLimitProc = p
	testutil.Eventually(t, 20*time.Second, "ratelimit service has the policy", func() error {
		if !strings.Contains(p.logText(), "Successfully loaded new configuration") {
			return fmt.Errorf("no config loaded yet")
		}
		return nil
	})
	return p
}

// kill ends the process with SIGKILL, as a crash or the OOM killer would: no shutdown code
// runs, connections are simply reset.
func (p *process) kill() { _ = p.child.Kill() }
