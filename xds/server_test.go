package xds

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestNodesGetTheirGroupsSnapshot(t *testing.T) {
	s := startServer(t)

	// This Envoy connects before anything is published and must simply wait.
	early := connect(t, s.addr, "envoy-a")
	early.subscribe(resource.ClusterType, "")
	tgtest.Eventually(t, 10*time.Second, "the early CDS request to be held", func() bool { return s.openWatches(GroupEnvoy) == 1 })

	res := publish(t, s.Server, testResources(t))
	if !res.EnvoyChanged || !res.RateLimitChanged {
		t.Fatalf("first publish should change both groups: %+v", res)
	}
	if len(res.EnvoyVersion) != versionLength || len(res.RateLimitVersion) != versionLength {
		t.Fatalf("versions should be %d hex chars: %+v", versionLength, res)
	}

	cds := early.next()
	if cds.GetTypeUrl() != resource.ClusterType || cds.GetVersionInfo() != res.EnvoyVersion {
		t.Fatalf("envoy-a got %s version %q, want CDS version %q", cds.GetTypeUrl(), cds.GetVersionInfo(), res.EnvoyVersion)
	}
	wantClusters := []string{envoy.BackendCluster("sim"), envoy.ClusterExtProc}
	if got := resourceNames(t, cds); !sameSet(got, wantClusters) {
		t.Errorf("clusters = %v, want %v", got, wantClusters)
	}
	early.ack(cds)
	early.subscribe(resource.ListenerType, "")
	lds := early.next()
	if lds.GetTypeUrl() != resource.ListenerType || lds.GetVersionInfo() != res.EnvoyVersion {
		t.Fatalf("envoy-a got %s version %q, want LDS version %q", lds.GetTypeUrl(), lds.GetVersionInfo(), res.EnvoyVersion)
	}
	if got := resourceNames(t, lds); !slices.Equal(got, []string{envoy.ListenerName}) {
		t.Errorf("listeners = %v", got)
	}

	// A second Envoy, with another node id, shares the same snapshot.
	late := connect(t, s.addr, "envoy-b")
	late.subscribe(resource.ClusterType, "")
	if got := late.next(); got.GetVersionInfo() != res.EnvoyVersion || len(got.GetResources()) != len(wantClusters) {
		t.Fatalf("envoy-b got version %q with %d clusters, want %q with %d", got.GetVersionInfo(), len(got.GetResources()), res.EnvoyVersion, len(wantClusters))
	}

	// The ratelimit service gets its own group: RateLimitConfig only.
	rl := connect(t, s.addr, envoy.DefaultRateLimitNode)
	rl.subscribe(resource.RateLimitConfigType, "")
	rls := rl.next()
	if rls.GetTypeUrl() != resource.RateLimitConfigType || rls.GetVersionInfo() != res.RateLimitVersion {
		t.Fatalf("ratelimit got %s version %q, want RateLimitConfig version %q", rls.GetTypeUrl(), rls.GetVersionInfo(), res.RateLimitVersion)
	}
	if got := resourceNames(t, rls); !slices.Equal(got, []string{"tollgate"}) {
		t.Errorf("ratelimit configs = %v", got)
	}
	// Asking for clusters as the ratelimit node gets nothing: its snapshot has none, so the
	// request is held rather than answered with Envoy's clusters.
	rl.ack(rls)
	rl.subscribe(resource.ClusterType, "")
	tgtest.Eventually(t, 10*time.Second, "the ratelimit node's CDS request to be held", func() bool { return s.openWatches(GroupRateLimit) == 2 })
	select {
	case resp := <-rl.responses:
		t.Fatalf("ratelimit node got an unexpected %s response", resp.GetTypeUrl())
	default:
	}
}

func TestPublishUnchangedContentDoesNotPush(t *testing.T) {
	s := startServer(t)
	first := publish(t, s.Server, testResources(t))

	c := connect(t, s.addr, "envoy-a")
	c.subscribe(resource.ClusterType, "")
	resp := c.next()
	c.ack(resp)
	tgtest.Eventually(t, 10*time.Second, "the ACK to be recorded", func() bool {
		st, ok := s.client("envoy-a")
		return ok && st.Acked[resource.ClusterType] == first.EnvoyVersion
	})
	pushes := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy))

	// Same content, freshly built.
	again := publish(t, s.Server, testResources(t))
	if again.EnvoyChanged || again.RateLimitChanged {
		t.Errorf("identical content changed something: %+v", again)
	}
	if again.EnvoyVersion != first.EnvoyVersion || again.RateLimitVersion != first.RateLimitVersion {
		t.Errorf("identical content got new versions: %+v then %+v", first, again)
	}

	// Same content in another order.
	r := testResources(t)
	slices.Reverse(r.Clusters)
	reordered := publish(t, s.Server, r)
	if reordered.EnvoyChanged || reordered.EnvoyVersion != first.EnvoyVersion {
		t.Errorf("reordered clusters changed the version: %+v then %+v", first, reordered)
	}
	if got := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy)); got != pushes {
		t.Errorf("pushes went from %v to %v without a content change", pushes, got)
	}

	// The next response on the stream is the next real change, not a repeat of the old one.
	changed := publish(t, s.Server, testResources(t, envoy.BackendCluster("other")))
	if !changed.EnvoyChanged || changed.RateLimitChanged {
		t.Fatalf("adding a cluster should change only the envoy group: %+v", changed)
	}
	if resp := c.next(); resp.GetVersionInfo() != changed.EnvoyVersion {
		t.Fatalf("next response has version %q, want %q", resp.GetVersionInfo(), changed.EnvoyVersion)
	}
	if got := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy)); got != pushes+1 {
		t.Errorf("pushes = %v, want %v", got, pushes+1)
	}
}

// A restarted control plane computes the same version, so an Envoy that reconnects with the
// version it runs gets nothing until the content really changes.
func TestRestartWithSameContentDoesNotPush(t *testing.T) {
	before := NewServer(nil, nil, Options{})
	old, err := before.Publish(context.Background(), testResources(t))
	if err != nil {
		t.Fatal(err)
	}

	s := startServer(t)
	res := publish(t, s.Server, testResources(t))
	if res.EnvoyVersion != old.EnvoyVersion || res.RateLimitVersion != old.RateLimitVersion {
		t.Fatalf("a new server computed %+v for the content another computed as %+v", res, old)
	}

	c := connect(t, s.addr, "envoy-a")
	c.subscribe(resource.ClusterType, old.EnvoyVersion)
	tgtest.Eventually(t, 10*time.Second, "the reconnect request to be held", func() bool { return s.openWatches(GroupEnvoy) == 1 })
	if st, _ := s.client("envoy-a"); st.Acked[resource.ClusterType] != old.EnvoyVersion {
		t.Errorf("status should report the version the client runs: %+v", st)
	}
	if got := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy)); got != 0 {
		t.Errorf("pushes = %v after a reconnect with the current version", got)
	}
	changed := publish(t, s.Server, testResources(t, envoy.BackendCluster("other")))
	if resp := c.next(); resp.GetVersionInfo() != changed.EnvoyVersion {
		t.Fatalf("first response has version %q, want %q", resp.GetVersionInfo(), changed.EnvoyVersion)
	}
}

func TestPublishRejectsBadConfigAndKeepsServing(t *testing.T) {
	s := startServer(t)
	good := publish(t, s.Server, testResources(t))

	c := connect(t, s.addr, "envoy-a")
	c.subscribe(resource.ClusterType, "")
	c.ack(c.next())
	tgtest.Eventually(t, 10*time.Second, "the ACK", func() bool { return s.openWatches(GroupEnvoy) == 1 })

	bad := testResources(t)
	bad.Routes = append(bad.Routes, testRoutes("unused", "backend_missing"))
	bad.Clusters = append(bad.Clusters, testCluster(""))
	_, err := s.Publish(context.Background(), bad)
	if err == nil {
		t.Fatal("Publish accepted a bad configuration")
	}
	for _, want := range []string{
		`route config "unused": virtual host "llm" route "to_backend_missing": route action names cluster "backend_missing", which does not exist`,
		`route config "unused": no listener uses it`,
		`Clusters[2] (cluster): name is empty`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if checkErr := Check(bad); checkErr == nil || checkErr.Error() != err.Error() {
		t.Errorf("Check and Publish disagree:\nCheck:   %v\nPublish: %v", checkErr, err)
	}
	if st := s.Status(); st.EnvoyVersion != good.EnvoyVersion || st.RateLimitVersion != good.RateLimitVersion {
		t.Errorf("served versions changed after a rejected publish: %+v, want %+v", st, good)
	}

	// Nothing reached the client: its next response is the next good publish.
	next := publish(t, s.Server, testResources(t, envoy.BackendCluster("other")))
	if resp := c.next(); resp.GetVersionInfo() != next.EnvoyVersion {
		t.Fatalf("client got version %q, want %q", resp.GetVersionInfo(), next.EnvoyVersion)
	}
}

// A client that rejects a configuration must not get it again: the server waits for the
// next version. go-control-plane on its own would answer a NACK at once, because the NACK
// carries the client's old version.
func TestNackIsRecordedAndNotResent(t *testing.T) {
	s := startServer(t)
	v1 := publish(t, s.Server, testResources(t))

	c := connect(t, s.addr, "envoy-a")
	c.subscribe(resource.ClusterType, "")
	resp := c.next()
	c.nack(resp, "", "cluster backend_sim: bad thing")
	tgtest.Eventually(t, 10*time.Second, "the NACK to be held as a watch", func() bool { return s.openWatches(GroupEnvoy) == 1 })

	if got := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy)); got != 1 {
		t.Errorf("pushes = %v after one response and a NACK, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.nacks.WithLabelValues(GroupEnvoy, "envoy.config.cluster.v3.Cluster")); got != 1 {
		t.Errorf("nacks = %v, want 1", got)
	}
	st, _ := s.client("envoy-a")
	if st.LastNack == nil || st.LastNack.Version != v1.EnvoyVersion || st.LastNack.TypeURL != resource.ClusterType ||
		st.LastNack.Message != "cluster backend_sim: bad thing" || st.LastNack.At.IsZero() {
		t.Fatalf("status LastNack = %+v, want the rejection of %s", st.LastNack, v1.EnvoyVersion)
	}
	if len(st.Acked) != 0 {
		t.Errorf("nothing was accepted, yet Acked = %v", st.Acked)
	}

	// The next version goes out; accepting it clears the NACK.
	v2 := publish(t, s.Server, testResources(t, envoy.BackendCluster("other")))
	resp = c.next()
	if resp.GetVersionInfo() != v2.EnvoyVersion {
		t.Fatalf("after the NACK the client got %q, want the new version %q", resp.GetVersionInfo(), v2.EnvoyVersion)
	}
	c.ack(resp)
	tgtest.Eventually(t, 10*time.Second, "the ACK to clear the NACK", func() bool {
		st, _ := s.client("envoy-a")
		return st.LastNack == nil && st.Acked[resource.ClusterType] == v2.EnvoyVersion
	})

	// Rejecting an update while running an older version: still no resend.
	v3 := publish(t, s.Server, testResources(t, envoy.BackendCluster("third")))
	resp = c.next()
	c.nack(resp, v2.EnvoyVersion, "rejected again")
	tgtest.Eventually(t, 10*time.Second, "the second NACK to be held as a watch", func() bool { return s.openWatches(GroupEnvoy) == 1 })
	if got := testutil.ToFloat64(s.metrics.pushes.WithLabelValues(GroupEnvoy)); got != 3 {
		t.Errorf("pushes = %v after three versions, want 3", got)
	}
	st, _ = s.client("envoy-a")
	if st.LastNack == nil || st.LastNack.Version != v3.EnvoyVersion || st.Acked[resource.ClusterType] != v2.EnvoyVersion {
		t.Errorf("status = %+v, want v3 rejected and v2 accepted", st)
	}
}

func TestStatusListsClients(t *testing.T) {
	s := startServer(t)
	res := publish(t, s.Server, testResources(t))

	connectAndAck := func(nodeID, typeURL string) *adsClient {
		c := connect(t, s.addr, nodeID)
		c.subscribe(typeURL, "")
		c.ack(c.next())
		return c
	}
	b := connectAndAck("envoy-b", resource.ListenerType)
	connectAndAck(envoy.DefaultRateLimitNode, resource.RateLimitConfigType)
	connectAndAck("envoy-a", resource.ClusterType)
	tgtest.Eventually(t, 10*time.Second, "three clients with ACKs", func() bool {
		st := s.Status()
		if len(st.Clients) != 3 {
			return false
		}
		for _, c := range st.Clients {
			if len(c.Acked) == 0 {
				return false
			}
		}
		return true
	})

	st := s.Status()
	if st.EnvoyVersion != res.EnvoyVersion || st.RateLimitVersion != res.RateLimitVersion {
		t.Errorf("status versions %q/%q, want %q/%q", st.EnvoyVersion, st.RateLimitVersion, res.EnvoyVersion, res.RateLimitVersion)
	}
	want := []struct{ node, group, typeURL, version string }{
		{"envoy-a", GroupEnvoy, resource.ClusterType, res.EnvoyVersion},
		{"envoy-b", GroupEnvoy, resource.ListenerType, res.EnvoyVersion},
		{envoy.DefaultRateLimitNode, GroupRateLimit, resource.RateLimitConfigType, res.RateLimitVersion},
	}
	for i, w := range want {
		c := st.Clients[i]
		if c.NodeID != w.node || c.Group != w.group || c.Acked[w.typeURL] != w.version || c.LastNack != nil || c.ConnectedAt.IsZero() {
			t.Errorf("client %d = %+v, want node %s group %s acked %s=%s", i, c, w.node, w.group, w.typeURL, w.version)
		}
	}
	if got := testutil.ToFloat64(s.metrics.connected.WithLabelValues(GroupEnvoy)); got != 2 {
		t.Errorf("connected envoys = %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.metrics.connected.WithLabelValues(GroupRateLimit)); got != 1 {
		t.Errorf("connected ratelimit = %v, want 1", got)
	}

	// A disconnect removes the client.
	b.cancel()
	tgtest.Eventually(t, 10*time.Second, "envoy-b to disappear", func() bool {
		_, ok := s.client("envoy-b")
		return !ok
	})
	if got := testutil.ToFloat64(s.metrics.connected.WithLabelValues(GroupEnvoy)); got != 1 {
		t.Errorf("connected envoys = %v after a disconnect, want 1", got)
	}

	// The registry exposes the snapshot info series for the served versions.
	if got := testutil.ToFloat64(s.metrics.snapshotInfo.WithLabelValues(GroupEnvoy, res.EnvoyVersion)); got != 1 {
		t.Errorf("snapshot info for %s = %v, want 1", res.EnvoyVersion, got)
	}
	if n, err := testutil.GatherAndCount(s.reg, "tollgate_xds_snapshot_info"); err != nil || n != 2 {
		t.Errorf("snapshot info series = %d (%v), want one per group", n, err)
	}
}

func TestSnapshotInfoFollowsVersion(t *testing.T) {
	s := NewServer(nil, nil, Options{})
	first, _ := s.Publish(context.Background(), testResources(t))
	second, err := s.Publish(context.Background(), testResources(t, envoy.BackendCluster("other")))
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(s.metrics.snapshotInfo); n != 2 {
		t.Errorf("snapshot info has %d series, want one per group", n)
	}
	if got := testutil.ToFloat64(s.metrics.snapshotInfo.WithLabelValues(GroupEnvoy, second.EnvoyVersion)); got != 1 {
		t.Errorf("current envoy version series = %v, want 1", got)
	}
	if first.EnvoyVersion == second.EnvoyVersion {
		t.Fatal("different content got the same version")
	}
}

func TestDeltaADSIsNotServed(t *testing.T) {
	s := startServer(t)
	client := discoverygrpc.NewAggregatedDiscoveryServiceClient(dial(t, s.addr))
	stream, err := client.DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("delta ADS returned %v, want Unimplemented", err)
	}
}

func TestCustomRateLimitNodeID(t *testing.T) {
	s := NewServer(nil, nil, Options{RateLimitNodeID: "rls-1"})
	if got := s.groups.of("rls-1"); got != GroupRateLimit {
		t.Errorf("custom ratelimit node is in group %q", got)
	}
	if got := s.groups.of(envoy.DefaultRateLimitNode); got != GroupEnvoy {
		t.Errorf("the default ratelimit node id is in group %q once another id is configured", got)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// An Envoy started from tollgate's bootstrap states its bounds and version in its node; the
// status shows them, so an operator sees every connected Envoy's heap and connection bounds.
func TestStatusShowsEachEnvoysBoundsAndBuild(t *testing.T) {
	s := startServer(t)
	publish(t, s.Server, testResources(t))
	b, err := bootstrap.Build(bootstrap.Options{NodeID: "envoy-bounded", Overload: bootstrap.Overload{MaxHeapBytes: 3 << 30, MaxConnections: 777}})
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, s.addr, "envoy-bounded")
	c.node = b.GetNode()
	c.node.UserAgentVersionType = &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 40, Patch: 2},
	}}
	c.subscribe(resource.ListenerType, "")
	c.ack(c.next())
	var got ClientStatus
	tgtest.Eventually(t, 10*time.Second, "the client identified", func() bool {
		var ok bool
		got, ok = s.client("envoy-bounded")
		return ok
	})
	if got.Build != "1.40.2" {
		t.Errorf("build %q, want 1.40.2", got.Build)
	}
	if got.Bounds[bootstrap.BoundMaxHeapBytes] != 3<<30 || got.Bounds[bootstrap.BoundMaxConnections] != 777 {
		t.Errorf("bounds %v, want heap %d and 777 connections", got.Bounds, 3<<30)
	}
}
