//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/xds"
)

// One control plane, many Envoys: every Envoy that connects to one `tollgate serve` shares one
// snapshot (xds/nodes.go), so the listener address is the policy's for all of them. On one host
// the Envoys therefore bind the same port side by side — Envoy sets SO_REUSEPORT on listeners
// by default on Linux — and the kernel hands each new connection to one of them. The tests tell
// the Envoys apart by their admin ports, their node ids and their own access logs.

// fleetPolicy serves models from the llmsim backend, with qwen3 under a 50-token hourly quota
// (12 tokens a request: five pass, the sixth gets 429).
func fleetPolicy(models ...string) string {
	var b strings.Builder
	b.WriteString("models:\n")
	for _, m := range models {
		fmt.Fprintf(&b, "  - {name: %s, backend: sim}\n", m)
	}
	b.WriteString(`costs:
  - {name: tokens, type: TotalToken}
quotas:
  - {model: qwen3, cost: tokens, limit: 50, per: hour}
`)
	return headerPolicy(b.String())
}

// fleetControlPlane starts everything but the Envoys: llmsim, Redis, tollgate serve and the
// ratelimit service, serving fleetPolicy("qwen3").
func fleetControlPlane(t *testing.T) *stack {
	t.Helper()
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, fleetPolicy("qwen3"))
	s.startTollgate(t)
	s.startRateLimit(t, s.startRedis(t))
	return s
}

// startFleetEnvoy starts one more Envoy on the control plane of s, from its own bootstrap with
// its own node id and admin port. The returned stack is a copy of s that differs only in those
// and in its Envoy process, so the harness's methods reach this Envoy.
func startFleetEnvoy(t *testing.T, s *stack, nodeID string) *stack {
	t.Helper()
	e := *s
	e.dir = t.TempDir()
	e.adminPort = testutil.FreePort(t)
	e.startEnvoyWith(t, "--node-id", nodeID)
	return &e
}

// envoyWithout returns an Envoy binary that lacks extension (category/name, as Envoy's
// --disable-extensions takes it): the real binary behind a script that disables it. To tollgate
// it is an Envoy of the same version built without that extension, as an older or slimmer
// build in a fleet would be.
func envoyWithout(t *testing.T, extension string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "envoy")
	script := fmt.Sprintf("#!/bin/sh\nexec '%s' --disable-extensions '%s' \"$@\"\n", testutil.Envoy(t), extension)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fleetStatus is the part of `tollgate status --json` these tests read.
type fleetStatus struct {
	Policy struct {
		LastResult string `json:"last_result"`
	} `json:"policy"`
	XDS xds.Status `json:"xds"`
}

func readFleetStatus(s *stack) (fleetStatus, error) {
	var st fleetStatus
	out, err := execOutput(bins.tollgate, "status", "--json", "--addr", addr(s.metricsPort))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status --json: %w\n%s", err, out)
	}
	return st, nil
}

// envoyTypes are the resource types tollgate serves every Envoy.
var envoyTypes = []string{resource.ClusterType, resource.ListenerType, resource.RouteType}

// awaitFleet waits until `tollgate status --json` serves a version other than notVersion and
// lists exactly the given Envoys, once each: the healthy ones with every type ACKed at that
// version and no NACK; the rejecting ones with their clusters ACKed at it and the listener
// NACKed at it. It returns the status.
func awaitFleet(t *testing.T, s *stack, notVersion string, healthy, rejecting []string) fleetStatus {
	t.Helper()
	var st fleetStatus
	testutil.Eventually(t, 20*time.Second, "the fleet settled on a new version", func() error {
		var err error
		if st, err = readFleetStatus(s); err != nil {
			return err
		}
		v := st.XDS.EnvoyVersion
		if v == "" || v == notVersion {
			return fmt.Errorf("serving version %q", v)
		}
		byNode := map[string][]xds.ClientStatus{}
		envoys := 0
		for _, c := range st.XDS.Clients {
			if c.Group == xds.GroupEnvoy {
				envoys++
				byNode[c.NodeID] = append(byNode[c.NodeID], c)
			}
		}
		if want := len(healthy) + len(rejecting); envoys != want {
			return fmt.Errorf("%d Envoys listed, want %d: %+v", envoys, want, st.XDS.Clients)
		}
		for _, node := range append(append([]string{}, healthy...), rejecting...) {
			if len(byNode[node]) != 1 {
				return fmt.Errorf("%s listed %d times", node, len(byNode[node]))
			}
			if byNode[node][0].Build == "" {
				return fmt.Errorf("%s lists no Envoy version", node)
			}
		}
		for _, node := range healthy {
			c := byNode[node][0]
			if c.LastNack != nil {
				return fmt.Errorf("%s has a NACK: %+v", node, *c.LastNack)
			}
			for _, typ := range envoyTypes {
				if c.Acked[typ] != v {
					return fmt.Errorf("%s ACKed %s at %q, want %s", node, typ, c.Acked[typ], v)
				}
			}
		}
		for _, node := range rejecting {
			c := byNode[node][0]
			if c.LastNack == nil || c.LastNack.TypeURL != resource.ListenerType || c.LastNack.Version != v {
				return fmt.Errorf("%s: NACK %+v, want one of the listener at %s", node, c.LastNack, v)
			}
			if c.Acked[resource.ClusterType] != v {
				return fmt.Errorf("%s ACKed clusters at %q, want %s", node, c.Acked[resource.ClusterType], v)
			}
			if a, ok := c.Acked[resource.ListenerType]; ok {
				return fmt.Errorf("%s ACKed a listener (%s) it cannot build", node, a)
			}
		}
		return nil
	})
	return st
}

// assertBuilds checks that the Envoy version status lists for each Envoy is the one its admin
// interface reports (such as "…/1.40.0/Clean/RELEASE/BoringSSL").
func assertBuilds(t *testing.T, st fleetStatus, fleet map[string]*stack) {
	t.Helper()
	for node, e := range fleet {
		var info struct {
			Version string `json:"version"`
		}
		if err := getJSON(e.adminURL("/server_info"), &info); err != nil {
			t.Fatal(err)
		}
		for _, c := range st.XDS.Clients {
			if c.NodeID == node && !strings.Contains(info.Version, "/"+c.Build+"/") {
				t.Errorf("status lists %s as Envoy %q; its admin interface says %q", node, c.Build, info.Version)
			}
		}
	}
}

// oneConnEach opens a new connection for every request: the Envoys share the listener's port
// and the kernel chooses one per connection, so a kept-alive connection would keep asking the
// same Envoy.
var oneConnEach = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func fleetChat(s *stack, user, model string) (int, error) {
	req, err := http.NewRequest("POST", s.url("/v1/chat/completions"), strings.NewReader(chatBody(model)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-user-id", user)
	resp, err := oneConnEach.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// accessLines returns the access log lines (JSON on Envoy's standard output) e's Envoy has
// written so far.
func accessLines(e *stack) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(e.envoy.logText(), "\n") {
		var m map[string]any
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// spreadUntilEach sends user(i)'s requests for model, each on a new connection, until every
// Envoy of fleet has logged answering one of them with want. Any other answer fails the test:
// whichever Envoy the kernel picks must serve the same. It returns how many were sent.
func spreadUntilEach(t *testing.T, s *stack, fleet map[string]*stack, model string, want int, user func(i int) string) int {
	t.Helper()
	sent := 0
	users := map[string]bool{}
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("every Envoy answered %s with %d", model, want), func() error {
		u := user(sent)
		users[u] = true
		got, err := fleetChat(s, u, model)
		sent++
		if err != nil {
			t.Fatalf("request %d (%s, %s): %v", sent, u, model, err)
		}
		if got != want {
			t.Fatalf("request %d (%s, %s): %d, want %d", sent, u, model, got, want)
		}
		var missing []string
		for node, e := range fleet {
			found := false
			for _, l := range accessLines(e) {
				if u, _ := l["user"].(string); users[u] && l["model"] == model && l["status"] == float64(want) {
					found = true
					break
				}
			}
			if !found {
				missing = append(missing, node)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("after %d requests, not yet logged by %v", sent, missing)
		}
		return nil
	})
	return sent
}

// listenerNames returns the names of the listeners an Envoy runs, from its admin interface.
func listenerNames(t *testing.T, e *stack) string {
	t.Helper()
	return strings.TrimSpace(string(mustDo(t, "GET", e.adminURL("/listeners"), nil, "").body))
}

// TestFleetEditReachesEveryEnvoy: one tollgate serve feeds three Envoys, each with its own
// bootstrap and node id. An edit that adds a model reaches all three: tollgate status lists
// each with its Envoy version and the new version ACKed for clusters, listeners and routes,
// and each of them, by its own access log, answers the new model with 200.
func TestFleetEditReachesEveryEnvoy(t *testing.T) {
	s := fleetControlPlane(t)
	nodes := []string{"edge-1", "edge-2", "edge-3"}
	fleet := map[string]*stack{}
	for _, node := range nodes {
		fleet[node] = startFleetEnvoy(t, s, node)
	}
	before := awaitFleet(t, s, "", nodes, nil)
	assertBuilds(t, before, fleet)
	if got, err := fleetChat(s, "probe", "llama"); err != nil || got != 404 {
		t.Fatalf("llama before the edit: %d %v, want 404 (not in the policy yet)", got, err)
	}

	s.writePolicy(t, fleetPolicy("qwen3", "llama"))
	after := awaitFleet(t, s, before.XDS.EnvoyVersion, nodes, nil)
	assertBuilds(t, after, fleet)
	sent := spreadUntilEach(t, s, fleet, "llama", 200, func(i int) string { return fmt.Sprintf("llama-%d", i) })
	t.Logf("version %s → %s ACKed by %v; %d llama requests reached all three", before.XDS.EnvoyVersion, after.XDS.EnvoyVersion, nodes, sent)
}

// TestFleetRejectingEnvoyLeavesTheRestServing: in a fleet of three, edge-3 runs an Envoy
// without the ext_proc filter, which tollgate's listener needs, so it rejects the listener.
// tollgate status shows its NACK with Envoy's reason, at the version served, and the other two
// ACK it and serve — 200s, and 429s once a quota is spent. The rejecting Envoy binds nothing and
// takes no traffic; an edit still reaches the healthy two (and is NACKed again by edge-3, once
// per version: tollgate does not resend a rejected configuration); the human status names every
// node with what it ACKed, and edge-3's NACK under it.
func TestFleetRejectingEnvoyLeavesTheRestServing(t *testing.T) {
	const extProc = "envoy.filters.http/envoy.filters.http.ext_proc"
	s := fleetControlPlane(t)
	healthy := []string{"edge-1", "edge-2"}
	serving := map[string]*stack{}
	for _, node := range healthy {
		serving[node] = startFleetEnvoy(t, s, node)
	}
	t.Setenv("ENVOY_BIN", envoyWithout(t, extProc))
	rejecting := startFleetEnvoy(t, s, "edge-3")

	st := awaitFleet(t, s, "", healthy, []string{"edge-3"})
	assertBuilds(t, st, map[string]*stack{"edge-1": serving["edge-1"], "edge-2": serving["edge-2"], "edge-3": rejecting})
	for _, c := range st.XDS.Clients {
		if c.NodeID == "edge-3" && !strings.Contains(c.LastNack.Message, "envoy.filters.http.ext_proc") {
			t.Errorf("edge-3's NACK does not name the missing filter: %q", c.LastNack.Message)
		}
	}
	nacks := func() string {
		return metricValue(string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body),
			"tollgate_xds_nacks_total", `group="envoy"`, `type="envoy.config.listener.v3.Listener"`)
	}
	if got := nacks(); got != "1" {
		t.Errorf("tollgate_xds_nacks_total for Envoy listeners %q, want 1", got)
	}
	if got := listenerNames(t, rejecting); strings.Contains(got, "tollgate_http") {
		t.Errorf("edge-3 runs the listener it rejected: %s", got)
	}
	for node, e := range serving {
		if got := listenerNames(t, e); !strings.Contains(got, "tollgate_http") {
			t.Errorf("%s does not run tollgate's listener: %q", node, got)
		}
	}

	// Admitted on both healthy Envoys, each user new so nothing is over quota.
	spreadUntilEach(t, s, serving, "qwen3", 200, func(i int) string { return fmt.Sprintf("user-%d", i) })
	// alice spends her quota (whichever Envoy takes it), then is refused by both.
	if got := fmt.Sprint(sendN(t, s, "alice", "qwen3", 5, false)); got != "[200 200 200 200 200]" {
		t.Fatalf("alice's first five qwen3 requests: %s", got)
	}
	spreadUntilEach(t, s, serving, "qwen3", 429, func(int) string { return "alice" })

	s.writePolicy(t, fleetPolicy("qwen3", "llama"))
	after := awaitFleet(t, s, st.XDS.EnvoyVersion, healthy, []string{"edge-3"})
	if after.Policy.LastResult != "ok" {
		t.Errorf("last reload %q, want ok", after.Policy.LastResult)
	}
	spreadUntilEach(t, s, serving, "llama", 200, func(i int) string { return fmt.Sprintf("llama-%d", i) })

	if n := len(accessLines(rejecting)); n != 0 {
		t.Errorf("edge-3, which has no listener, logged %d requests", n)
	}
	select {
	case <-rejecting.envoy.done:
		t.Errorf("edge-3's Envoy exited")
	default:
	}

	human := runTollgate(t, "status", "--addr", addr(s.metricsPort))
	t.Logf("tollgate status:\n%s", human)
	assertHumanStatus(t, human, after.XDS.EnvoyVersion, healthy, "edge-3")

	// Still one NACK per version after all the traffic above: edge-3 was not sent the
	// rejected listener again and again.
	if got := nacks(); got != "2" {
		t.Errorf("tollgate_xds_nacks_total for Envoy listeners %q after one edit, want 2", got)
	}
}

// assertHumanStatus checks tollgate status's client lines: each healthy node with every type
// ACKed at version and no NACK line, the rejecting node with only its clusters ACKed and a NACK
// line naming the listener, the version and the missing filter.
func assertHumanStatus(t *testing.T, out, version string, healthy []string, rejecting string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	clientLine := func(node string) (at int, state, acked string) {
		re := regexp.MustCompile(`^\s+` + regexp.QuoteMeta(node) + `\s+envoy\s+\d+\.\d+\.\d+ ([^,]+), connected \S+\s+acked: (.*)$`)
		at = -1
		for i, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				if at >= 0 {
					t.Errorf("status lists %s twice", node)
				}
				at, state, acked = i, m[1], m[2]
			}
		}
		if at < 0 {
			t.Errorf("status has no client line for %s", node)
		}
		return at, state, acked
	}
	if want := fmt.Sprintf("xDS clients (%d: %d current, 1 rejecting):", len(healthy)+2, len(healthy)+1); !strings.Contains(out, want) {
		t.Errorf("status lacks the summary %q (the ratelimit service is current too)", want)
	}
	nackAfter := func(at int) string {
		if at >= 0 && at+1 < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[at+1]), "NACK ") {
			return strings.TrimSpace(lines[at+1])
		}
		return ""
	}
	for _, node := range healthy {
		at, state, acked := clientLine(node)
		if state != "current" {
			t.Errorf("status: %s is %q, want current", node, state)
		}
		if want := fmt.Sprintf("Cluster=%[1]s Listener=%[1]s RouteConfiguration=%[1]s", version); at >= 0 && acked != want {
			t.Errorf("status: %s acked %q, want %q", node, acked, want)
		}
		if nack := nackAfter(at); nack != "" {
			t.Errorf("status shows a NACK under %s: %s", node, nack)
		}
	}
	at, state, acked := clientLine(rejecting)
	if state != "REJECTING Listener" {
		t.Errorf("status: %s is %q, want REJECTING Listener", rejecting, state)
	}
	if want := "Cluster=" + version; at >= 0 && acked != want {
		t.Errorf("status: %s acked %q, want %q", rejecting, acked, want)
	}
	nack := nackAfter(at)
	if !strings.HasPrefix(nack, "NACK Listener version "+version+": ") || !strings.Contains(nack, "envoy.filters.http.ext_proc") {
		t.Errorf("status: under %s %q, want its listener NACK at %s naming the ext_proc filter", rejecting, nack, version)
	}
}
