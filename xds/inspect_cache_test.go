package xds

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// A cached inspection must report exactly what a fresh one does, problems included.
func TestCachedPublishReportsTheSameProblems(t *testing.T) {
	bad := func() Resources {
		r := testResources(t)
		hcm := testHCM(t, envoy.RouteConfigName, envoy.ClusterExtProc)
		hcm.StatPrefix = ""
		r.Listeners[0] = testListener(t, envoy.ListenerName, hcm)
		return r
	}
	cache := newInspectionCache()
	var errs []string
	for i := 0; i < 3; i++ {
		_, err := prepareCached(bad(), cache)
		if err == nil {
			t.Fatalf("round %d: invalid packed config accepted", i)
		}
		errs = append(errs, err.Error())
	}
	_, fresh := prepare(bad())
	if errs[1] != errs[0] || errs[2] != errs[0] || fresh.Error() != errs[0] {
		t.Fatalf("problems differ between fresh and cached inspections:\n%q", append(errs, fresh.Error()))
	}
	if !strings.Contains(errs[0], "invalid HttpConnectionManager.StatPrefix") {
		t.Fatalf("error does not name the packed problem: %s", errs[0])
	}
}

func TestCacheReusesUnchangedResourcesAndPackedConfigs(t *testing.T) {
	cache := newInspectionCache()
	var probs problems
	reach := make(anyReach)
	first := collect[*listenerv3.Listener](&probs, reach, cache, "listener", "Listeners", testResources(t).Listeners)
	cache.rotate()

	// The same content in new messages: the whole resource is a hit.
	again := collect[*listenerv3.Listener](&probs, reach, cache, "listener", "Listeners", testResources(t).Listeners)
	cache.rotate()
	if len(first[0].packed) == 0 || again[0].packed[0] != first[0].packed[0] {
		t.Fatal("an unchanged listener was inspected again")
	}

	// A changed listener with the same HTTP connection manager: the packed config is a hit.
	changed := testResources(t).Listeners[0].(*listenerv3.Listener)
	changed.StatPrefix = "changed"
	third := collect[*listenerv3.Listener](&probs, reach, cache, "listener", "Listeners", []types.Resource{changed})
	if third[0].packed[0] != first[0].packed[0] {
		t.Fatal("an unchanged packed config inside a changed listener was decoded again")
	}
	if slices.Equal(third[0].encoded, first[0].encoded) {
		t.Fatal("a changed listener kept the old encoding")
	}
	if len(probs) != 0 {
		t.Fatalf("valid listeners reported problems: %v", probs)
	}
}

// Entries a publish does not use are gone after the next one: the cache never grows past two
// configurations.
func TestCacheKeepsOnlyRecentEntries(t *testing.T) {
	cache := newInspectionCache()
	for _, backends := range [][]string{{"backend_a"}, {"backend_b"}, {"backend_c"}} {
		if _, err := prepareCached(testResources(t, backends...), cache); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := prepareCached(testResources(t, "backend_c"), cache); err != nil {
		t.Fatal(err)
	}
	// After four publishes, only the last configuration (the same as the third) is held.
	last := testResources(t, "backend_c")
	want := len(last.Listeners) + len(last.Routes) + len(last.Clusters) + len(last.RateLimitConfigs)
	if got := len(cache.prevResource); got != want {
		t.Fatalf("cache holds %d resources, want the %d of the last publish", got, want)
	}
	if len(cache.nextResource) != 0 || len(cache.nextAny) != 0 {
		t.Fatal("entries recorded outside a publish")
	}
}

// The canonical encoding of a resource with non-canonical packed bytes is cached too: the
// version stays the same with and without the cache, and the caller's bytes stay untouched.
func TestCachedVersionsIgnorePackedMapOrder(t *testing.T) {
	entry := func(key string) []byte {
		b, err := proto.Marshal(&structpb.Struct{Fields: map[string]*structpb.Value{key: structpb.NewStringValue(key)}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	withMetadata := func(value []byte) Resources {
		r := testResources(t)
		r.Clusters[0].(*clusterv3.Cluster).Metadata = &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{
			"io.tollgate": {TypeUrl: "type.googleapis.com/google.protobuf.Struct", Value: value},
		}}
		return r
	}
	ba := slices.Concat(entry("b"), entry("a"))
	want, _ := versions(t, withMetadata(slices.Concat(entry("a"), entry("b"))))
	cache := newInspectionCache()
	for i := 0; i < 2; i++ {
		r := withMetadata(ba)
		p, err := prepareCached(r, cache)
		if err != nil {
			t.Fatal(err)
		}
		if p.envoyVersion != want {
			t.Fatalf("round %d: version %s, want %s", i, p.envoyVersion, want)
		}
		got := r.Clusters[0].(*clusterv3.Cluster).GetMetadata().GetTypedFilterMetadata()["io.tollgate"].GetValue()
		if !slices.Equal(got, ba) {
			t.Fatalf("round %d: the caller's packed bytes were rewritten", i)
		}
	}
}

// Packed configs are kept decoded only for listeners. A config first met elsewhere (and cached
// without its decoded form) must still reach the listener checks when a listener packs it.
func TestCachedPackedConfigStillReachesListenerChecks(t *testing.T) {
	cache := newInspectionCache()
	var probs problems
	reach := make(anyReach)
	r := testResources(t)
	listener := r.Listeners[0].(*listenerv3.Listener)
	hcmAny := listener.GetFilterChains()[0].GetFilters()[0].GetTypedConfig()
	cluster := testCluster("carrier")
	cluster.Metadata = &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"x": hcmAny}}
	clusters := collect[*clusterv3.Cluster](&probs, reach, cache, "cluster", "Clusters", []types.Resource{cluster})
	if len(clusters[0].packed) != 0 {
		t.Fatal("a cluster kept decoded packed configs")
	}
	listeners := collect[*listenerv3.Listener](&probs, reach, cache, "listener", "Listeners", []types.Resource{listener})
	found := false
	for _, p := range listeners[0].packed {
		if _, ok := p.(*hcmv3.HttpConnectionManager); ok {
			found = true
		}
	}
	if !found {
		t.Fatal("the listener's HTTP connection manager is missing from its packed configs after a cache hit")
	}
	if len(probs) != 0 {
		t.Fatalf("problems: %v", probs)
	}
}
