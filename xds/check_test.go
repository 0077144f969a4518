package xds

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
)

func TestCheckAcceptsValidConfig(t *testing.T) {
	if err := Check(testResources(t)); err != nil {
		t.Fatalf("valid configuration rejected:\n%v", err)
	}
	if err := Check(Resources{}); err != nil {
		t.Fatalf("an empty configuration is consistent, got:\n%v", err)
	}
}

func TestCheckFindsProblems(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, r *Resources)
		want   []string
	}{{
		name: "route to a missing cluster",
		mutate: func(t *testing.T, r *Resources) {
			r.Routes[0] = testRoutes(envoy.RouteConfigName, "backend_sim", "backend_typo")
		},
		want: []string{`route config "tollgate_routes": virtual host "llm" route "to_backend_typo": route action names cluster "backend_typo", which does not exist`},
	}, {
		name: "weighted cluster missing",
		mutate: func(t *testing.T, r *Resources) {
			rc := testRoutes(envoy.RouteConfigName, "backend_sim")
			rc.VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{
				WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: "backend_sim", Weight: wrapperspb.UInt32(1)},
					{Name: "backend_gone", Weight: wrapperspb.UInt32(1)},
				}},
			}
			r.Routes[0] = rc
		},
		want: []string{`weighted cluster names cluster "backend_gone", which does not exist`},
	}, {
		name: "listener names a missing route config",
		mutate: func(t *testing.T, r *Resources) {
			r.Listeners[0] = testListener(t, envoy.ListenerName, testHCM(t, "routes_typo", envoy.ClusterExtProc))
		},
		want: []string{
			`listener "tollgate_http": http connection manager "ingress_http": rds.route_config_name "routes_typo" does not exist`,
			`route config "tollgate_routes": no listener uses it`,
		},
	}, {
		name: "filters name missing clusters",
		mutate: func(t *testing.T, r *Resources) {
			r.Listeners[0] = testListener(t, envoy.ListenerName, testHCM(t, envoy.RouteConfigName, "no_extproc"))
		},
		want: []string{
			`listener "tollgate_http": ext_proc grpc_service names cluster "no_extproc", which does not exist`,
		},
	}, {
		name: "cluster with empty name fails validation too",
		mutate: func(t *testing.T, r *Resources) {
			r.Clusters = append(r.Clusters, testCluster(""))
		},
		want: []string{`Clusters[2] (cluster): name is empty`, `Clusters[2] (cluster): invalid Cluster.Name`},
	}, {
		name: "invalid cluster",
		mutate: func(t *testing.T, r *Resources) {
			c := testCluster("backend_sim")
			c.ConnectTimeout.Seconds = -1
			r.Clusters[1] = c
		},
		want: []string{`cluster "backend_sim": invalid Cluster.ConnectTimeout`},
	}, {
		name: "packed HTTP connection manager is validated",
		mutate: func(t *testing.T, r *Resources) {
			hcm := testHCM(t, envoy.RouteConfigName, envoy.ClusterExtProc)
			hcm.StatPrefix = ""
			r.Listeners[0] = testListener(t, envoy.ListenerName, hcm)
		},
		want: []string{`listener "tollgate_http": envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager: invalid HttpConnectionManager.StatPrefix`},
	}, {
		name: "duplicate names",
		mutate: func(t *testing.T, r *Resources) {
			r.Clusters = append(r.Clusters, testCluster("backend_sim"))
		},
		want: []string{`cluster "backend_sim": defined more than once`},
	}, {
		name: "wrong type and nil",
		mutate: func(t *testing.T, r *Resources) {
			r.Listeners = append(r.Listeners, testCluster("not_a_listener"), nil, (*listenerv3.Listener)(nil))
		},
		want: []string{
			`Listeners[1]: is a envoy.config.cluster.v3.Cluster, want envoy.config.listener.v3.Listener`,
			`Listeners[2]: is nil`,
			`Listeners[3]: is nil`,
		},
	}, {
		name: "ratelimit config rules",
		mutate: func(t *testing.T, r *Resources) {
			bad := testRateLimitConfig("broken", "qwen3", 50)
			bad.Domain = ""
			user := bad.Descriptors[0]
			user.Descriptors = append(user.Descriptors,
				&rlsconfv3.RateLimitDescriptor{Key: "model", Value: "qwen3"},
				&rlsconfv3.RateLimitDescriptor{Key: "model", Value: "gpt-4", RateLimit: &rlsconfv3.RateLimitPolicy{RequestsPerUnit: 5}},
				&rlsconfv3.RateLimitDescriptor{Key: "", Value: "x"},
				&rlsconfv3.RateLimitDescriptor{Key: "free", RateLimit: &rlsconfv3.RateLimitPolicy{Unlimited: true, Unit: rlsconfv3.RateLimitUnit_HOUR}},
			)
			r.RateLimitConfigs = append(r.RateLimitConfigs, bad, testRateLimitConfig("twin", "qwen3", 1))
		},
		want: []string{
			`ratelimit config "broken": domain is empty`,
			`ratelimit config "broken": descriptors[0].descriptors[1]: key "model" value "qwen3" repeats an earlier descriptor at this level`,
			`ratelimit config "broken": descriptors[0].descriptors[2]: rate limit unit is not set`,
			`ratelimit config "broken": descriptors[0].descriptors[3]: key is empty`,
			`ratelimit config "broken": descriptors[0].descriptors[4]: an unlimited rate limit must not set a unit`,
			`ratelimit config "twin": domain "tollgate" is also used by ratelimit config "tollgate"`,
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := testResources(t)
			tc.mutate(t, &r)
			err := Check(r)
			if err == nil {
				t.Fatal("Check accepted the configuration")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			// One problem per line, each listed once.
			var joined interface{ Unwrap() []error }
			if !errors.As(err, &joined) || len(joined.Unwrap()) != strings.Count(err.Error(), "\n")+1 {
				t.Errorf("error should join one error per line:\n%v", err)
			}
		})
	}
}

// Every problem is reported at once, in a stable order that does not depend on input order.
func TestCheckListsAllProblemsSorted(t *testing.T) {
	build := func(clusters ...types.Resource) Resources {
		r := testResources(t)
		r.Clusters = append(r.Clusters, clusters...)
		r.Routes[0] = testRoutes(envoy.RouteConfigName, "backend_sim", "missing_a", "missing_b")
		return r
	}
	bad := &clusterv3.Cluster{Name: "bad"}
	err1 := Check(build(testCluster(""), bad))
	err2 := Check(build(bad, testCluster("")))
	if err1 == nil || err2 == nil {
		t.Fatal("Check accepted a broken configuration")
	}
	if got := strings.Count(err1.Error(), "\n") + 1; got < 4 {
		t.Errorf("want at least 4 problems (2 missing clusters, empty name, invalid cluster), got %d:\n%v", got, err1)
	}
	if !strings.Contains(err1.Error(), "missing_a") || !strings.Contains(err1.Error(), "missing_b") {
		t.Errorf("both missing clusters should be listed:\n%v", err1)
	}
	lines := strings.Split(err1.Error(), "\n")
	for i := 1; i < len(lines); i++ {
		if lines[i-1] > lines[i] {
			t.Errorf("problems not sorted: %q before %q", lines[i-1], lines[i])
		}
	}
	// Indexes differ with order, names do not: compare the named problems only.
	named := func(err error) []string {
		var out []string
		for _, l := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(l, "Clusters[") {
				out = append(out, l)
			}
		}
		return out
	}
	if a, b := named(err1), named(err2); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("problems depend on input order:\n%v\n---\n%v", a, b)
	}
}
