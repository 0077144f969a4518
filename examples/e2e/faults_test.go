//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// faultPolicy routes one model and has no quotas, so traffic never runs into a limit: every
// answer but 200 is a failure the fault caused.
const faultPolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}}
backends:
  - {name: sim, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
`

// faultPolicyTwoModels is faultPolicy with a second model on a second backend cluster, so
// switching between the two changes routes and clusters but not the listener.
const faultPolicyTwoModels = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}}
backends:
  - {name: sim, url: "{{backend:sim}}"}
  - {name: sim-b, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
  - {name: gpt-4, backend: sim-b}
`

// hangBound only detects a hang; it is no latency target. Envoy's ext_proc message timeout
// is 5s, so an answer within it shows the failure was noticed, not waited out.
const hangBound = 3 * time.Second

// TestExtProcKilled: with the ext_proc server in its own process and that process killed,
// Envoy fails new requests closed, fast, with a JSON 503 — never a hang until the message
// timeout, never a request routed without identity and model checks — and serves again once
// the server is back on the same port.
func TestExtProcKilled(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, faultPolicy)
	s.startTollgateWith(t, "--extproc", "")
	extProc := s.startExtProc(t)
	s.startEnvoy(t)
	alice := map[string]string{"x-user-id": "alice"}
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody("qwen3")); r.status != 200 {
		t.Fatalf("before the fault: %d %s", r.status, r.body)
	}

	extProc.kill()
	for i := range 5 {
		begin := time.Now()
		r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody("qwen3"))
		took := time.Since(begin)
		t.Logf("request %d with ext_proc down: %d after %s: %s", i+1, r.status, took.Round(time.Microsecond), r.body)
		if r.status != 503 {
			t.Fatalf("request %d with ext_proc down: %d, want 503 (fail closed): %s", i+1, r.status, r.body)
		}
		if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "service_unavailable" {
			t.Errorf("503 body is not an OpenAI-style error: %s", r.body)
		}
		if took > hangBound {
			t.Errorf("request %d took %s to fail: a hang, not a fast failure", i+1, took)
		}
	}

	restarted := time.Now()
	s.startExtProc(t)
	testutil.Eventually(t, 30*time.Second, "requests pass once ext_proc is back", func() error {
		r, err := do("POST", s.url("/v1/chat/completions"), alice, chatBody("qwen3"))
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("status %d", r.status)
		}
		return nil
	})
	t.Logf("serving again %s after the ext_proc server was started again", time.Since(restarted).Round(time.Millisecond))
}

// TestRateLimitServiceKilled: with the ratelimit service gone, the policy's failure mode
// decides — open admits (and Envoy counts it), closed answers a JSON 503 — within the policy's
// rateLimit.timeout, and enforcement resumes when the service is back (the counters live in
// Redis, which stayed up, so the user who was over quota is rejected again).
func TestRateLimitServiceKilled(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			s := quotaStack(t, strings.Replace(seedPolicy, "timeout: 1s}", "timeout: 200ms, failureMode: "+mode+"}", 1))
			redisAddr, rateLimit := addr(s.redisPort), s.rateLimitProc
			if got := fmt.Sprint(sendN(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
				t.Fatalf("before the fault: %s", got)
			}

			alice := map[string]string{"x-user-id": "alice"}
			const n = 3
			// Each phase sends n requests and checks the failure mode decided them.
			phase := func(what string) {
				t.Helper()
				allowedBefore := failedOpenChecks(t, s)
				for i := range n {
					begin := time.Now()
					r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody("qwen3"))
					took := time.Since(begin)
					t.Logf("request %d with the ratelimit service %s: %d after %s", i+1, what, r.status, took.Round(time.Microsecond))
					want := map[string]int{"open": 200, "closed": 503}[mode]
					if r.status != want {
						t.Fatalf("request %d with the service %s: %d, want %d (fail %s): %s", i+1, what, r.status, want, mode, r.body)
					}
					if mode == "closed" {
						if e, ok := r.json(t)["error"].(map[string]any); !ok || e["type"] != "service_unavailable" {
							t.Errorf("503 body: %s", r.body)
						}
					}
					// The limit check is bounded by rateLimit.timeout (200ms); the bound here
					// only catches a request that waited for something else entirely.
					if took > hangBound {
						t.Errorf("request %d with the service %s took %s", i+1, what, took)
					}
				}
				if mode == "open" {
					if got := failedOpenChecks(t, s) - allowedBefore; got < n {
						t.Errorf("service %s: tollgate counted %d fail-open admissions, want >= %d", what, got, n)
					}
				}
			}

			// Hung: the connection stays open but nothing answers, so each request waits
			// for rateLimit.timeout.
			if err := rateLimit.child.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			phase("hung (SIGSTOP)")
			if err := rateLimit.child.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			// Gone: connections are refused at once.
			rateLimit.kill()
			phase("killed")

			s.startRateLimitWith(t, redisAddr)
			testutil.Eventually(t, 30*time.Second, "enforcement resumes with the ratelimit service back", func() error {
				if got := sendN(t, s, "alice", "qwen3", 1, false)[0]; got != 429 {
					return fmt.Errorf("status %d, want 429 for alice, still over her quota", got)
				}
				return nil
			})
			if got := sendN(t, s, "bob", "qwen3", 1, false)[0]; got != 200 {
				t.Errorf("bob after the restart: %d", got)
			}
		})
	}
}

// TestControlPlaneKilled: with ext_proc in its own process, killing the control plane
// (SIGKILL) under steady traffic fails no request. Started again with the same policy it
// pushes nothing — Envoy resumes the version it runs — and started with a changed policy,
// Envoy converges to it.
func TestControlPlaneKilled(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, faultPolicy)
	s.startTollgateWith(t, "--extproc", "")
	s.startExtProc(t)
	s.startEnvoy(t)
	before := s.envoyVersions(t)

	traffic := startLoad(s, 3, 10*time.Millisecond, 20000)
	traffic.await(t, 30)
	killedAt := time.Now()
	s.tollgate.kill()
	testutil.Eventually(t, 20*time.Second, "Envoy notices the control plane is gone", func() error {
		if v := s.faultStat(t, "control_plane.connected_state"); v != 0 {
			return fmt.Errorf("connected_state %d", v)
		}
		return nil
	})
	traffic.await(t, traffic.sent()+300) // requests served while no control plane runs

	restartedAt := time.Now()
	s.startTollgateWith(t, "--extproc", "")
	testutil.Eventually(t, 30*time.Second, "Envoy reconnects", func() error {
		if v := s.faultStat(t, "control_plane.connected_state"); v != 1 {
			return fmt.Errorf("connected_state %d", v)
		}
		if v, ok := promSample(s.scrapeTollgate(t), `tollgate_xds_connected_clients{group="envoy"}`); !ok || v != 1 {
			return fmt.Errorf("tollgate sees %v Envoys", v)
		}
		return nil
	})
	t.Logf("control plane down for %s; Envoy reconnected %s after the restart",
		restartedAt.Sub(killedAt).Round(time.Millisecond), time.Since(restartedAt).Round(time.Millisecond))
	traffic.await(t, traffic.sent()+50)
	res := traffic.stop()
	t.Logf("steady traffic across the outage and the reconnect: %s", res)
	if res.failed() > 0 {
		t.Errorf("%d of %d requests failed: %s", res.failed(), res.total, res)
	}

	if after := s.envoyVersions(t); after != before {
		t.Errorf("Envoy's config versions changed across a restart with the same policy:\n before %+v\n after  %+v", before, after)
	}
	metrics := s.scrapeTollgate(t)
	if v, ok := promSample(metrics, `tollgate_xds_pushes_total{group="envoy"}`); !ok || v != 0 {
		t.Errorf("the restarted control plane pushed %v responses to Envoy, want 0", v)
	}

	// Edited while the control plane is down: Envoy gets the new version on reconnect.
	s.tollgate.kill()
	s.writePolicy(t, faultPolicyTwoModels)
	alice := map[string]string{"x-user-id": "alice"}
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), alice, chatBody("gpt-4")); r.status != 404 {
		t.Fatalf("gpt-4 before the control plane returns: %d, want 404 (Envoy still runs the old routes)", r.status)
	}
	restartedAt = time.Now()
	s.startTollgateWith(t, "--extproc", "")
	testutil.Eventually(t, 30*time.Second, "Envoy converges to the edited policy", func() error {
		r, err := do("POST", s.url("/v1/chat/completions"), alice, chatBody("gpt-4"))
		if err != nil {
			return err
		}
		if r.status != 200 {
			return fmt.Errorf("gpt-4: %d", r.status)
		}
		return nil
	})
	t.Logf("Envoy serves the edited policy %s after the control plane started again", time.Since(restartedAt).Round(time.Millisecond))
	var st struct {
		XDS struct{ EnvoyVersion string } `json:"xds"`
	}
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	if got := s.envoyVersions(t); got.clusters != st.XDS.EnvoyVersion || got.routes != st.XDS.EnvoyVersion {
		t.Errorf("Envoy runs %+v, tollgate serves %s", got, st.XDS.EnvoyVersion)
	}
	t.Logf("versions: before %+v, after the edit %s", before, st.XDS.EnvoyVersion)
}

// TestRapidPolicyEdits: 200 policy edits under traffic — two valid policies in turn with a few
// broken ones among them — fail no request, and the control plane's memory settles within
// twice its size after warm-up.
func TestRapidPolicyEdits(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, faultPolicy)
	s.startTollgateWith(t, "--debounce", "10ms")
	s.startEnvoy(t)

	broken := strings.Replace(faultPolicy, "backend: sim}", "backend: nowhere}", 1)
	policies := []string{faultPolicyTwoModels, faultPolicy}
	edit := func(content string) {
		t.Helper()
		before := s.reloads(t)
		s.writePolicy(t, content)
		testutil.Eventually(t, 10*time.Second, "edit applied", func() error {
			if n := s.reloads(t); n <= before {
				return fmt.Errorf("%d reloads", n)
			}
			return nil
		})
	}

	traffic := startLoad(s, 3, 10*time.Millisecond, 50000)
	for i := range 20 {
		edit(policies[i%2])
	}
	warm := s.tollgateResident(t)
	failedBefore, _ := promSample(s.scrapeTollgate(t), `tollgate_policy_reloads_total{result="failed"}`)

	const edits, brokenEvery = 200, 40
	began := time.Now()
	wantBroken := 0
	for i := range edits {
		if i%brokenEvery == brokenEvery-1 {
			edit(broken)
			wantBroken++
			continue
		}
		edit(policies[i%2])
	}
	took := time.Since(began)
	// End on a known valid policy and check Envoy runs exactly what tollgate serves.
	edit(faultPolicyTwoModels)
	res := traffic.stop()
	t.Logf("%d edits (%d broken) in %s; traffic: %s", edits, wantBroken, took.Round(time.Millisecond), res)
	if res.failed() > 0 {
		t.Errorf("%d of %d requests failed during the edits: %s", res.failed(), res.total, res)
	}
	if res.total < 100 {
		t.Errorf("only %d requests ran during the edits: too little traffic to show anything", res.total)
	}

	metrics := s.scrapeTollgate(t)
	failedAfter, _ := promSample(metrics, `tollgate_policy_reloads_total{result="failed"}`)
	if got := int(failedAfter - failedBefore); got != wantBroken {
		t.Errorf("%d rejected reloads, want %d", got, wantBroken)
	}
	if v, ok := promSample(metrics, `tollgate_xds_nacks_total{group="envoy",type="type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}`); ok && v > 0 {
		t.Errorf("Envoy rejected %v route updates", v)
	}
	var st struct {
		XDS struct{ EnvoyVersion string } `json:"xds"`
	}
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "Envoy runs the last policy", func() error {
		if got := s.envoyVersions(t); got.routes != st.XDS.EnvoyVersion {
			return fmt.Errorf("Envoy routes at %s, tollgate serves %s", got.routes, st.XDS.EnvoyVersion)
		}
		return nil
	})

	// Memory: the Go runtime returns freed memory to the OS in the background, so wait (with a
	// bound) for the resident size to come within twice the warm-up figure rather than
	// sampling once.
	var last int64
	testutil.Eventually(t, 60*time.Second, "tollgate's resident memory settles", func() error {
		last = s.tollgateResident(t)
		if last >= 2*warm {
			return fmt.Errorf("RSS %.1f MiB, warm-up %.1f MiB", mib(last), mib(warm))
		}
		return nil
	})
	t.Logf("tollgate RSS: %.1f MiB after warm-up, %.1f MiB after %d more edits (%.2fx)", mib(warm), mib(last), edits, float64(last)/float64(warm))
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// loadResult tallies a load run: statuses and transport errors, with a few examples.
type loadResult struct {
	total    int
	statuses map[int]int
	errors   int
	examples []string
}

func (r loadResult) failed() int { return r.total - r.statuses[200] }

func (r loadResult) String() string {
	codes := make([]int, 0, len(r.statuses))
	for c := range r.statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d×%d", r.statuses[c], c))
	}
	if r.errors > 0 {
		parts = append(parts, fmt.Sprintf("%d transport errors", r.errors))
	}
	s := fmt.Sprintf("%d requests: %s", r.total, strings.Join(parts, ", "))
	if len(r.examples) > 0 {
		s += "; e.g. " + strings.Join(r.examples, " | ")
	}
	return s
}

// load sends chat requests from a few goroutines, each pausing between requests, until
// stopped or until max requests have been sent: a bounded stream of steady traffic.
type load struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu  sync.Mutex
	res loadResult
}

func startLoad(s *stack, workers int, pause time.Duration, max int) *load {
	l := &load{done: make(chan struct{}), res: loadResult{statuses: map[int]int{}}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			header := map[string]string{"x-user-id": fmt.Sprintf("load-%d", w)}
			for {
				select {
				case <-l.done:
					return
				default:
				}
				r, err := do("POST", s.url("/v1/chat/completions"), header, chatBody("qwen3"))
				l.mu.Lock()
				if l.res.total >= max {
					l.mu.Unlock()
					return
				}
				l.res.total++
				switch {
				case err != nil:
					l.res.errors++
					if len(l.res.examples) < 5 {
						l.res.examples = append(l.res.examples, err.Error())
					}
				default:
					l.res.statuses[r.status]++
					if r.status != 200 && len(l.res.examples) < 5 {
						l.res.examples = append(l.res.examples, fmt.Sprintf("%d %s", r.status, r.body))
					}
				}
				l.mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	return l
}

func (l *load) sent() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res.total
}

// await waits until n requests in all have been answered.
func (l *load) await(t testing.TB, n int) {
	t.Helper()
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d requests sent", n), func() error {
		if got := l.sent(); got < n {
			return fmt.Errorf("%d sent", got)
		}
		return nil
	})
}

func (l *load) stop() loadResult {
	close(l.done)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}

// faultStat reads an Envoy stat (counter or gauge) by the end of its name, summed over every
// stat with that ending: per-cluster stats carry a prefix such as cluster.<name>.
func (s *stack) faultStat(t testing.TB, suffix string) int {
	t.Helper()
	stats := string(mustDo(t, "GET", s.adminURL("/stats?filter="+url.QueryEscape(regexp.QuoteMeta(suffix)+"$")), nil, "").body)
	return statValue(stats, suffix)
}

// scrapeTollgate returns tollgate serve's /metrics text.
func (s *stack) scrapeTollgate(t testing.TB) string {
	t.Helper()
	return string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
}

// promSample finds one series (name with its labels as exposed) in Prometheus text.
func promSample(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// reloads is how many policy loads tollgate has finished, applied or rejected.
func (s *stack) reloads(t testing.TB) int {
	t.Helper()
	metrics := s.scrapeTollgate(t)
	ok, _ := promSample(metrics, `tollgate_policy_reloads_total{result="ok"}`)
	failed, _ := promSample(metrics, `tollgate_policy_reloads_total{result="failed"}`)
	return int(ok + failed)
}

// tollgateResident is tollgate serve's resident memory, from its own process metrics.
func (s *stack) tollgateResident(t testing.TB) int64 {
	t.Helper()
	v, ok := promSample(s.scrapeTollgate(t), "process_resident_memory_bytes")
	if !ok {
		t.Fatal("tollgate's metrics lack process_resident_memory_bytes")
	}
	return int64(v)
}

// configVersions are the versions of the xDS resources Envoy runs.
type configVersions struct {
	clusters, listeners, routes string
}

func (s *stack) envoyVersions(t testing.TB) configVersions {
	t.Helper()
	var dump struct {
		Configs []struct {
			Type        string `json:"@type"`
			VersionInfo string `json:"version_info"`
			Routes      []struct {
				VersionInfo string `json:"version_info"`
			} `json:"dynamic_route_configs"`
		} `json:"configs"`
	}
	body := mustDo(t, "GET", s.adminURL("/config_dump"), nil, "").body
	if err := json.Unmarshal(body, &dump); err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	var v configVersions
	for _, c := range dump.Configs {
		switch {
		case strings.HasSuffix(c.Type, "ClustersConfigDump"):
			v.clusters = c.VersionInfo
		case strings.HasSuffix(c.Type, "ListenersConfigDump"):
			v.listeners = c.VersionInfo
		case strings.HasSuffix(c.Type, "RoutesConfigDump"):
			for _, r := range c.Routes {
				v.routes = r.VersionInfo
			}
		}
	}
	if v.clusters == "" || v.listeners == "" || v.routes == "" {
		t.Fatalf("config_dump lacks a version: %+v", v)
	}
	return v
}
