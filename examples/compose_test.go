package examples

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/policies"
)

const demoDir = "usage-based-rate-limiting"

// loadCompose parses the demo's compose file the way `docker compose` does.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	return loadComposeIn(t, demoDir)
}

// loadComposeIn parses the compose.yaml in exampleDir the way `docker compose` does, with no
// variable set in the environment: every ${VAR:-default} takes its default.
func loadComposeIn(t *testing.T, exampleDir string) *types.Project {
	t.Helper()
	dir, err := filepath.Abs(exampleDir)
	if err != nil {
		t.Fatal(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: types.Mapping{},
	}
	project, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SkipConsistencyCheck = false
	})
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return project
}

// TestComposeDemo keeps the Docker Compose demo honest without a Docker engine: every image is
// pinned, every referenced file exists, and the ports, node id and Redis address agree with the
// native configuration (the same policy and the same bootstrap).
func TestComposeDemo(t *testing.T) {
	project := loadCompose(t)
	policy, _, err := policies.Load(filepath.Join(demoDir, "policy.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"redis", "llmsim", "tollgate", "ratelimit", "envoy"} {
		if _, err := project.GetService(name); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
	for _, svc := range project.Services {
		// Host networking is what makes policy.yaml's 127.0.0.1 addresses the same in both runs.
		if svc.NetworkMode != "host" {
			t.Errorf("service %s: network_mode %q, want host", svc.Name, svc.NetworkMode)
		}
		checkImageAndMounts(t, svc)
	}

	tollgate, _ := project.GetService("tollgate")
	args := flagValues(tollgate.Command)
	if got, want := args["--extproc"], fmt.Sprintf("%s:%d", policy.ExtProc.Address, policy.ExtProc.Port); got != want {
		t.Errorf("tollgate --extproc %q, the policy sends Envoy to %q", got, want)
	}
	if got := args["--xds"]; got != envoy.DefaultXDSAddress {
		t.Errorf("tollgate --xds %q, the bootstrap dials %q", got, envoy.DefaultXDSAddress)
	}
	if !strings.HasPrefix(args["-f"], "/etc/tollgate/") || !mounts(tollgate, "/etc/tollgate", demoDir) {
		t.Errorf("tollgate does not serve the demo's policy.yaml: -f %q, volumes %v", args["-f"], tollgate.Volumes)
	}

	llmsim, _ := project.GetService("llmsim")
	backend, err := url.Parse(policy.Backends[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := flagValues(llmsim.Command)["--listen"]; got != backend.Host {
		t.Errorf("llmsim listens on %q, the policy's backend is %q", got, backend.Host)
	}

	ratelimit, _ := project.GetService("ratelimit")
	env := func(k string) string {
		if v := ratelimit.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	checks := map[string]string{
		"CONFIG_TYPE":                             "GRPC_XDS_SOTW",
		"CONFIG_GRPC_XDS_SERVER_URL":              envoy.DefaultXDSAddress,
		"CONFIG_GRPC_XDS_NODE_ID":                 envoy.DefaultRateLimitNode,
		"FORCE_START_WITHOUT_INITIAL_CONFIG":      "true",
		"REDIS_URL":                               rls.DefaultRedisURL,
		"GRPC_HOST":                               policy.RateLimit.Address,
		"GRPC_PORT":                               fmt.Sprint(policy.RateLimit.Port),
		"LOCAL_CACHE_SIZE_IN_BYTES":               "0",
		"STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT": "false",
	}
	// Reservations are taken back in the Redis the ratelimit service counts in.
	if got := args["--redis"]; got != env("REDIS_URL") {
		t.Errorf("tollgate --redis %q, the ratelimit service counts in %q", got, env("REDIS_URL"))
	}
	for k, want := range checks {
		if got := env(k); got != want {
			t.Errorf("ratelimit %s=%q, want %q", k, got, want)
		}
	}
	redis, _ := project.GetService("redis")
	if got := flagValues(redis.Command)["--port"]; "127.0.0.1:"+got != rls.DefaultRedisURL {
		t.Errorf("redis --port %q does not match the ratelimit service's %s", got, rls.DefaultRedisURL)
	}

	// Envoy runs the bootstrap `tollgate bootstrap --envoy-max-heap 512MiB` prints, within a
	// container limit the heap bound fits in.
	envoySvc, _ := project.GetService("envoy")
	if !mounts(envoySvc, "/etc/envoy/envoy.yaml", filepath.Join(demoDir, "envoy.yaml")) {
		t.Errorf("envoy does not mount the demo's envoy.yaml: %v", envoySvc.Volumes)
	}
	want, err := bootstrap.YAML(bootstrap.Options{Overload: bootstrap.Overload{MaxHeapBytes: demoEnvoyHeap}})
	if err != nil {
		t.Fatal(err)
	}
	assertSameYAML(t, filepath.Join(demoDir, "envoy.yaml"), want)
	if limit := int64(envoySvc.MemLimit); limit < 2*demoEnvoyHeap {
		t.Errorf("envoy's container limit %d leaves no room above its heap bound %d", limit, demoEnvoyHeap)
	}
}

// demoEnvoyHeap is the compose demo's Envoy heap bound.
const demoEnvoyHeap = 512 << 20

// TestDockerfileBuildsLikeTheTaskfile: the image is built with the same command the tests use.
func TestDockerfileBuildsLikeTheTaskfile(t *testing.T) {
	var taskfile struct {
		Tasks map[string]struct {
			Cmds []any `yaml:"cmds"`
		} `yaml:"tasks"`
	}
	b, err := os.ReadFile("../Taskfile.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &taskfile); err != nil {
		t.Fatal(err)
	}
	var taskBuild string
	for _, c := range taskfile.Tasks["build"].Cmds {
		if s, ok := c.(string); ok && strings.HasPrefix(s, "go build") {
			taskBuild = s
		}
	}
	f, err := os.Open("../cmd/tollgate/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var dockerBuild string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "RUN go build") {
			dockerBuild = strings.TrimPrefix(line, "RUN ")
		}
	}
	if taskBuild == "" || taskBuild != dockerBuild {
		t.Errorf("build commands differ:\n  Taskfile:   %q\n  Dockerfile: %q", taskBuild, dockerBuild)
	}
}

func imageTag(image string) string {
	name := image[strings.LastIndex(image, "/")+1:]
	if _, tag, ok := strings.Cut(name, ":"); ok {
		return tag
	}
	return ""
}

// flagValues maps "--flag value" pairs of a command line.
func flagValues(cmd types.ShellCommand) map[string]string {
	out := map[string]string{}
	for i := 0; i+1 < len(cmd); i++ {
		if strings.HasPrefix(cmd[i], "-") {
			out[cmd[i]] = cmd[i+1]
		}
	}
	return out
}

func mounts(svc types.ServiceConfig, target, source string) bool {
	abs, err := filepath.Abs(source)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Target == target && filepath.Clean(v.Source) == abs
	})
}

func assertSameYAML(t *testing.T, path string, want []byte) {
	t.Helper()
	if !sameYAMLFile(t, path, want) {
		t.Errorf("%s differs from `tollgate bootstrap` (regenerate it with: go run ./cmd/tollgate bootstrap --envoy-max-heap 512MiB)", path)
	}
}

// TestComposeDashboard: the demo's Prometheus scrapes the address tollgate serves metrics on,
// Grafana's data source is that Prometheus under the uid the dashboard names, and the
// dashboard is mounted where the provisioning looks for it.
func TestComposeDashboard(t *testing.T) {
	project := loadCompose(t)
	tollgate, _ := project.GetService("tollgate")
	metrics := flagValues(tollgate.Command)["--metrics"]

	var prom struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, filepath.Join(demoDir, "prometheus.yml"), &prom)
	if len(prom.ScrapeConfigs) != 1 || len(prom.ScrapeConfigs[0].StaticConfigs) != 1 ||
		!slices.Equal(prom.ScrapeConfigs[0].StaticConfigs[0].Targets, []string{metrics}) {
		t.Errorf("Prometheus scrapes %+v, tollgate serves metrics on %s", prom.ScrapeConfigs, metrics)
	}
	prometheus, _ := project.GetService("prometheus")
	listen := ""
	for _, arg := range prometheus.Command {
		if v, ok := strings.CutPrefix(arg, "--web.listen-address="); ok {
			listen = v
		}
	}

	var ds struct {
		Datasources []struct {
			UID string `yaml:"uid"`
			URL string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join(demoDir, "grafana", "datasource.yaml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://"+listen || ds.Datasources[0].UID != "prometheus" {
		t.Errorf("Grafana's data source %+v, Prometheus listens on %s and the dashboard names uid prometheus", ds.Datasources, listen)
	}
	var providers struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join(demoDir, "grafana", "dashboards.yaml"), &providers)
	grafana, _ := project.GetService("grafana")
	if len(providers.Providers) != 1 || !mounts(grafana, providers.Providers[0].Options.Path+"/tollgate.json", filepath.Join("grafana", "tollgate.json")) {
		t.Errorf("Grafana does not mount examples/grafana/tollgate.json under %+v: %v", providers.Providers, grafana.Volumes)
	}
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

const (
	scaleOutDir = "scale-out"
	// scaleOutNetwork is the bridge network every service of the scale-out example is on,
	// except the extprocs, which share their gateway's network namespace.
	scaleOutNetwork = "tollgate"
	// scaleOutEnvoyHeap is the heap bound of the scale-out example's gateways.
	scaleOutEnvoyHeap = 512 << 20
)

// TestComposeScaleOut keeps the scale-out example honest without a Docker engine: every image
// is pinned and every mounted file exists; the bootstraps are what `tollgate bootstrap` prints
// for each gateway, pointed at the control plane's service; each gateway's extproc listens where
// the policy sends its Envoy; both ratelimit replicas get the limits serve publishes and are
// reachable at the policy's rateLimit address; and every Redis client names the sentinels and
// the primary that the Redis services are configured with, with their password.
func TestComposeScaleOut(t *testing.T) {
	project := loadComposeIn(t, scaleOutDir)
	policy, _, err := policies.Load(filepath.Join(scaleOutDir, "policy.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := project.GetService(name)
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		return s
	}
	gateways := []string{"gateway-1", "gateway-2"}
	// Only the load balancer and the gateways are reachable from the host.
	published := map[string]bool{"lb": true, "gateway-1": true, "gateway-2": true}
	for _, s := range project.Services {
		switch {
		case strings.HasPrefix(s.NetworkMode, "service:"):
		case s.NetworkMode != "":
			t.Errorf("service %s: network_mode %q; two Envoys on one network namespace would both bind the listener", s.Name, s.NetworkMode)
		case !onNetwork(s, scaleOutNetwork):
			t.Errorf("service %s is not on the %s network: %v", s.Name, scaleOutNetwork, s.Networks)
		}
		if len(s.Ports) > 0 && !published[s.Name] {
			t.Errorf("service %s publishes %v: only the load balancer and the gateways face clients", s.Name, s.Ports)
		}
		checkImageAndMounts(t, s)
	}
	if n, ok := project.Networks[scaleOutNetwork]; !ok || n.Driver != "bridge" {
		t.Errorf("network %s: %+v, want a bridge network", scaleOutNetwork, n)
	}

	// The control plane serves ADS beyond its own container, without an ext_proc server: each
	// gateway has its own.
	cp := svc("control-plane")
	cpArgs := flagValues(cp.Command)
	if first(cp.Command) != "serve" {
		t.Errorf("control-plane runs %v, want tollgate serve", cp.Command)
	}
	if v, ok := cpArgs["--extproc"]; !ok || v != "" {
		t.Errorf(`control-plane --extproc %q, want "" (the gateways run their own extproc)`, v)
	}
	xdsHost, xdsPort, err := net.SplitHostPort(cpArgs["--xds"])
	if err != nil || isLoopbackHost(xdsHost) {
		t.Errorf("control-plane --xds %q: the other containers cannot reach it (%v)", cpArgs["--xds"], err)
	}
	xdsAddr := net.JoinHostPort(cp.Name, xdsPort)
	checkPolicyMount(t, cp, cpArgs["-f"])
	rateLimitNode := cpArgs["--ratelimit-node-id"]
	if rateLimitNode == "" {
		rateLimitNode = envoy.DefaultRateLimitNode
	}

	if policy.Listener.Address != "0.0.0.0" {
		t.Errorf("policy listener.address %q: a published port reaches the gateway's container from outside, so Envoy must listen on 0.0.0.0", policy.Listener.Address)
	}
	extProcAddr := net.JoinHostPort(policy.ExtProc.Address, fmt.Sprint(policy.ExtProc.Port))
	redisURLs := map[string]string{}
	hostPorts := map[string]string{}
	for _, name := range gateways {
		g := svc(name)
		file := filepath.Join(scaleOutDir, "envoy-"+name+".yaml")
		if !mounts(g, "/etc/envoy/envoy.yaml", file) || flagValues(g.Command)["-c"] != "/etc/envoy/envoy.yaml" {
			t.Errorf("%s does not run %s: command %v, volumes %v", name, file, g.Command, g.Volumes)
		}
		want, err := bootstrap.YAML(bootstrap.Options{NodeID: name, XDSAddress: xdsAddr, Overload: bootstrap.Overload{MaxHeapBytes: scaleOutEnvoyHeap}})
		if err != nil {
			t.Fatal(err)
		}
		if !sameYAMLFile(t, file, want) {
			t.Errorf("%s differs from `tollgate bootstrap` (regenerate it with: go run ./cmd/tollgate bootstrap --node-id %s --xds %s --envoy-max-heap 512MiB)", file, name, xdsAddr)
		}
		if limit := int64(g.MemLimit); limit < 2*scaleOutEnvoyHeap {
			t.Errorf("%s's container limit %d leaves no room above its heap bound %d", name, limit, scaleOutEnvoyHeap)
		}
		checkPublished(t, g, uint32(policy.Listener.Port), hostPorts)

		// The gateway's own extproc, where its Envoy finds it: the policy's extProc address
		// in the gateway's network namespace.
		ep := svc(name + "-extproc")
		args := flagValues(ep.Command)
		if ep.NetworkMode != "service:"+name {
			t.Errorf("%s: network_mode %q, want service:%s (the policy's extProc %s is the gateway's loopback)", ep.Name, ep.NetworkMode, name, extProcAddr)
		}
		if first(ep.Command) != "extproc" || policy.ExtProc.Socket != "" || args["--listen"] != extProcAddr {
			t.Errorf("%s: command %v; the policy sends Envoy to extProc %s", ep.Name, ep.Command, extProcAddr)
		}
		checkPolicyMount(t, ep, args["-f"])
		redisURLs[ep.Name] = args["--redis"]
	}

	// Both replicas get the limits under serve's ratelimit node id, and answer at the policy's
	// rateLimit address, a name both of them carry.
	for _, name := range []string{"ratelimit-1", "ratelimit-2"} {
		r := svc(name)
		args := flagValues(r.Command)
		node := args["--node-id"]
		if node == "" {
			node = envoy.DefaultRateLimitNode
		}
		if first(r.Command) != "ratelimit" || node != rateLimitNode || args["--xds"] != xdsAddr {
			t.Errorf("%s: command %v; serve publishes the limits at %s for node id %q", name, r.Command, xdsAddr, rateLimitNode)
		}
		grpcAddr := args["--grpc"]
		if grpcAddr == "" {
			grpcAddr = rls.DefaultGRPCAddr
		}
		host, port, err := net.SplitHostPort(grpcAddr)
		if err != nil || isLoopbackHost(host) || port != fmt.Sprint(policy.RateLimit.Port) {
			t.Errorf("%s listens on %q; the extprocs call rateLimit port %d from other containers", name, grpcAddr, policy.RateLimit.Port)
		}
		if n := r.Networks[scaleOutNetwork]; name != policy.RateLimit.Address && (n == nil || !slices.Contains(n.Aliases, policy.RateLimit.Address)) {
			t.Errorf("%s is not reachable as the policy's rateLimit.address %q: networks %v", name, policy.RateLimit.Address, r.Networks)
		}
		redisURLs[name] = args["--redis"]
	}

	// One Redis for every counter: the same URL everywhere, and the control plane's status
	// reports on that one.
	redisURLs[cp.Name] = cpArgs["--redis"]
	redisURL := redisURLs["ratelimit-1"]
	for name, u := range redisURLs {
		if u != redisURL {
			t.Errorf("%s --redis %q, ratelimit-1 --redis %q: the quotas would be counted apart", name, u, redisURL)
		}
	}
	checkSentinels(t, project, redisURL)

	llmsim := svc("llmsim")
	backend, err := url.Parse(policy.Backends[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(flagValues(llmsim.Command)["--listen"])
	if err != nil || isLoopbackHost(host) || backend.Hostname() != llmsim.Name || backend.Port() != port {
		t.Errorf("llmsim listens on %q, the policy's backend is %s", flagValues(llmsim.Command)["--listen"], backend)
	}

	checkLoadBalancer(t, svc("lb"), gateways, policy.Listener.Port, hostPorts)
}

// checkImageAndMounts: the image is built from a Dockerfile that exists or pinned to a
// version, and every bind-mounted file or directory exists.
func checkImageAndMounts(t *testing.T, svc types.ServiceConfig) {
	t.Helper()
	if svc.Build != nil {
		if _, err := os.Stat(filepath.Join(svc.Build.Context, svc.Build.Dockerfile)); err != nil {
			t.Errorf("service %s: Dockerfile: %v", svc.Name, err)
		}
	} else if tag := imageTag(svc.Image); tag == "" || tag == "latest" {
		t.Errorf("service %s: image %q is not pinned to a version", svc.Name, svc.Image)
	}
	for _, v := range svc.Volumes {
		if v.Type != "bind" {
			continue // a named volume Docker creates
		}
		if _, err := os.Stat(v.Source); err != nil {
			t.Errorf("service %s: volume source: %v", svc.Name, err)
		}
	}
}

// checkPolicyMount: the service follows the example's policy.yaml, through its directory (so
// that edits, renames included, reach the watcher).
func checkPolicyMount(t *testing.T, svc types.ServiceConfig, file string) {
	t.Helper()
	if file != "/etc/tollgate/policy.yaml" || !mounts(svc, "/etc/tollgate", scaleOutDir) {
		t.Errorf("%s does not follow the example's policy.yaml: -f %q, volumes %v", svc.Name, file, svc.Volumes)
	}
}

// checkPublished: the service publishes target, and only target, on the host's loopback, at a
// host port no other service took (hostPorts maps the ports taken to their service).
func checkPublished(t *testing.T, svc types.ServiceConfig, target uint32, hostPorts map[string]string) {
	t.Helper()
	if len(svc.Ports) != 1 || svc.Ports[0].Target != target || svc.Ports[0].HostIP != "127.0.0.1" || svc.Ports[0].Published == "" {
		t.Errorf("%s publishes %+v, want port %d on 127.0.0.1", svc.Name, svc.Ports, target)
		return
	}
	p := svc.Ports[0].Published
	if other, taken := hostPorts[p]; taken {
		t.Errorf("%s and %s both publish host port %s", svc.Name, other, p)
	}
	hostPorts[p] = svc.Name
}

// checkSentinels: redisURL names the sentinel services and the primary they monitor, with the
// password the Redis services require, and the Sentinel deployment can fail over.
func checkSentinels(t *testing.T, project *types.Project, redisURL string) {
	t.Helper()
	u, err := url.Parse(redisURL)
	if err != nil || u.Scheme != "redis+sentinel" {
		t.Fatalf("--redis %q is not a redis+sentinel:// URL (%v)", redisURL, err)
	}
	password, _ := u.User.Password()
	master := strings.TrimPrefix(u.Path, "/")

	template := filepath.Join(scaleOutDir, "sentinel.conf")
	conf, err := os.ReadFile(template)
	if err != nil {
		t.Fatal(err)
	}
	var sentinelPort, monitor []string
	for _, line := range strings.Split(string(conf), "\n") {
		switch f := strings.Fields(line); {
		case len(f) == 2 && f[0] == "port":
			sentinelPort = f[1:]
		case len(f) == 6 && f[0] == "sentinel" && f[1] == "monitor":
			monitor = f[2:] // name, host, port, quorum
		}
	}
	if len(sentinelPort) != 1 || len(monitor) != 4 {
		t.Fatalf("%s: no port or sentinel monitor line", template)
	}
	if monitor[0] != master || password == "" {
		t.Errorf("--redis %q: want the password and the master name %q of %s", redisURL, monitor[0], template)
	}

	// The sentinels are the services that run the template, and the URL names each of them.
	var sentinels []string
	for _, s := range project.Services {
		target := ""
		for _, v := range s.Volumes {
			if abs, _ := filepath.Abs(template); v.Type == "bind" && v.Source == abs {
				target = v.Target
			}
		}
		if target == "" {
			continue
		}
		sentinels = append(sentinels, net.JoinHostPort(s.Name, sentinelPort[0]))
		script := strings.Join(s.Command, " ")
		if !strings.Contains(script, target) || !strings.Contains(script, "--sentinel") {
			t.Errorf("%s mounts %s at %s but does not run a sentinel from it: %v", s.Name, template, target, s.Command)
		}
		// The sentinel learns the password from REDIS_PASSWORD, and announces its hostname.
		if env := s.Environment["REDIS_PASSWORD"]; env == nil || *env != password || !strings.Contains(script, "sentinel auth-pass "+master) {
			t.Errorf("%s does not give sentinel auth-pass %s the password of --redis", s.Name, master)
		}
		if s.Hostname != s.Name || !strings.Contains(script, "sentinel announce-ip") {
			t.Errorf("%s announces hostname %q, which the other sentinels cannot resolve", s.Name, s.Hostname)
		}
	}
	slices.Sort(sentinels)
	named := strings.Split(u.Host, ",")
	slices.Sort(named)
	if len(sentinels) < 3 || !slices.Equal(named, sentinels) {
		t.Errorf("--redis names the sentinels %v, the sentinel services are %v (three at least, for a quorum that survives one)", named, sentinels)
	}
	if quorum, err := strconv.Atoi(monitor[3]); err != nil || quorum < 1 || quorum > len(sentinels) {
		t.Errorf("%s: quorum %q of %d sentinels can never be reached", template, monitor[3], len(sentinels))
	}

	// The primary the sentinels monitor, its replica, and the password both require.
	monitored := net.JoinHostPort(monitor[1], monitor[2])
	for _, name := range []string{"redis-primary", "redis-replica"} {
		s, err := project.GetService(name)
		if err != nil {
			t.Errorf("service %s: %v", name, err)
			continue
		}
		args := flagValues(s.Command)
		if args["--requirepass"] != password || args["--masterauth"] != password {
			t.Errorf("%s: --requirepass %q and --masterauth %q, want the password of --redis", name, args["--requirepass"], args["--masterauth"])
		}
		// Sentinel knows each node by the name it announces, across container restarts.
		if args["--replica-announce-ip"] != name {
			t.Errorf("%s announces itself as %q, want its service name", name, args["--replica-announce-ip"])
		}
		port := args["--port"]
		if port == "" {
			port = "6379"
		}
		replicaOf := argsAfter(s.Command, "--replicaof", 2)
		if name == "redis-primary" && (net.JoinHostPort(name, port) != monitored || replicaOf != nil) {
			t.Errorf("the sentinels monitor %s, redis-primary is %s (replica of %v)", monitored, net.JoinHostPort(name, port), replicaOf)
		}
		if name == "redis-replica" && (len(replicaOf) != 2 || net.JoinHostPort(replicaOf[0], replicaOf[1]) != monitored) {
			t.Errorf("redis-replica replicates %v, the sentinels monitor %s", replicaOf, monitored)
		}
	}
}

// checkLoadBalancer: the load balancer's static Envoy sends its listener's connections to every
// gateway, at the policy's listener port.
func checkLoadBalancer(t *testing.T, lb types.ServiceConfig, gateways []string, listenerPort int, hostPorts map[string]string) {
	t.Helper()
	file := filepath.Join(scaleOutDir, "lb.yaml")
	if !mounts(lb, "/etc/envoy/envoy.yaml", file) || flagValues(lb.Command)["-c"] != "/etc/envoy/envoy.yaml" {
		t.Errorf("lb does not run %s: command %v, volumes %v", file, lb.Command, lb.Volumes)
	}
	type socketAddress struct {
		SocketAddress struct {
			Address   string `yaml:"address"`
			PortValue int    `yaml:"port_value"`
		} `yaml:"socket_address"`
	}
	var cfg struct {
		StaticResources struct {
			Listeners []struct {
				Address socketAddress `yaml:"address"`
			} `yaml:"listeners"`
			Clusters []struct {
				LoadAssignment struct {
					Endpoints []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address socketAddress `yaml:"address"`
							} `yaml:"endpoint"`
						} `yaml:"lb_endpoints"`
					} `yaml:"endpoints"`
				} `yaml:"load_assignment"`
			} `yaml:"clusters"`
		} `yaml:"static_resources"`
	}
	readYAML(t, file, &cfg)
	res := cfg.StaticResources
	if len(res.Listeners) != 1 || len(res.Clusters) != 1 {
		t.Fatalf("%s: want one listener and one cluster, got %d and %d", file, len(res.Listeners), len(res.Clusters))
	}
	checkPublished(t, lb, uint32(res.Listeners[0].Address.SocketAddress.PortValue), hostPorts)
	var got, want []string
	for _, e := range res.Clusters[0].LoadAssignment.Endpoints {
		for _, lbe := range e.LbEndpoints {
			a := lbe.Endpoint.Address.SocketAddress
			got = append(got, net.JoinHostPort(a.Address, fmt.Sprint(a.PortValue)))
		}
	}
	for _, g := range gateways {
		want = append(want, net.JoinHostPort(g, fmt.Sprint(listenerPort)))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("%s balances over %v, want the gateways %v", file, got, want)
	}
}

// sameYAMLFile reports whether the YAML file at path holds the same document as want, comments
// and formatting aside.
func sameYAMLFile(t *testing.T, path string, want []byte) bool {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var g, w any
	if err := yaml.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := yaml.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	gb, _ := yaml.Marshal(g)
	wb, _ := yaml.Marshal(w)
	return string(gb) == string(wb)
}

// argsAfter returns the n arguments that follow flag in cmd, or nil without the flag.
func argsAfter(cmd types.ShellCommand, flag string, n int) []string {
	i := slices.Index(cmd, flag)
	if i < 0 || i+n >= len(cmd) {
		return nil
	}
	return cmd[i+1 : i+1+n]
}

// onNetwork reports whether svc joins network (the short syntax leaves its settings nil).
func onNetwork(svc types.ServiceConfig, network string) bool {
	_, ok := svc.Networks[network]
	return ok
}

func first(cmd types.ShellCommand) string {
	if len(cmd) == 0 {
		return ""
	}
	return cmd[0]
}

// isLoopbackHost reports whether a listen host accepts connections from its own container only.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
