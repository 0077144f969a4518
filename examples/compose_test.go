package examples

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
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
	dir, err := filepath.Abs(demoDir)
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
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var g, w any
	if err := yaml.Unmarshal(got, &g); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	gb, _ := yaml.Marshal(g)
	wb, _ := yaml.Marshal(w)
	if string(gb) != string(wb) {
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
