package xds

import (
	"regexp"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

func versions(t *testing.T, r Resources) (envoyVersion, rateLimitVersion string) {
	t.Helper()
	p, err := prepare(r)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	return p.envoyVersion, p.rateLimitVersion
}

func twoDomains(t *testing.T) Resources {
	r := testResources(t, "backend_b", "backend_c")
	second := testRateLimitConfig("second", "gpt-4", 10)
	second.Domain = "other"
	r.RateLimitConfigs = append(r.RateLimitConfigs, second)
	return r
}

func TestVersionIgnoresOrder(t *testing.T) {
	envoyV, rlV := versions(t, twoDomains(t))
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(envoyV) || !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(rlV) {
		t.Fatalf("versions %q, %q are not 16 hex chars", envoyV, rlV)
	}
	r := twoDomains(t)
	slices.Reverse(r.Clusters)
	slices.Reverse(r.RateLimitConfigs)
	gotEnvoy, gotRL := versions(t, r)
	if gotEnvoy != envoyV || gotRL != rlV {
		t.Errorf("reordering changed versions: %s/%s -> %s/%s", envoyV, rlV, gotEnvoy, gotRL)
	}
}

func TestVersionTracksContentPerGroup(t *testing.T) {
	envoyV, rlV := versions(t, testResources(t))

	r := testResources(t)
	r.Clusters[0].(*clusterv3.Cluster).ConnectTimeout.Seconds = 7
	if e, rl := versions(t, r); e == envoyV || rl != rlV {
		t.Errorf("a cluster change should change only the envoy version: %s/%s -> %s/%s", envoyV, rlV, e, rl)
	}

	r = testResources(t)
	r.RateLimitConfigs[0] = testRateLimitConfig("tollgate", "qwen3", 51)
	if e, rl := versions(t, r); e != envoyV || rl == rlV {
		t.Errorf("a limit change should change only the ratelimit version: %s/%s -> %s/%s", envoyV, rlV, e, rl)
	}

	// A resource moving between names is a change even when the bytes are the same.
	a := Resources{RateLimitConfigs: []types.Resource{withDomain(testRateLimitConfig("a", "m", 1), "d1"), withDomain(testRateLimitConfig("b", "m", 1), "d2")}}
	b := Resources{RateLimitConfigs: []types.Resource{withDomain(testRateLimitConfig("a", "m", 1), "d2"), withDomain(testRateLimitConfig("b", "m", 1), "d1")}}
	_, va := versions(t, a)
	_, vb := versions(t, b)
	if va == vb {
		t.Error("swapping content between two names kept the version")
	}
}

func withDomain(c *rlsconfv3.RateLimitConfig, domain string) *rlsconfv3.RateLimitConfig {
	c.Domain = domain
	return c
}

// anypb.New does not sort map entries, so the same packed config can arrive as different
// bytes. The version must not notice.
func TestVersionIgnoresPackedMapOrder(t *testing.T) {
	entry := func(key string) []byte {
		b, err := proto.Marshal(&structpb.Struct{Fields: map[string]*structpb.Value{key: structpb.NewStringValue(key)}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Concatenated encodings merge: both are {a, b}, with entries in opposite orders.
	ab := slices.Concat(entry("a"), entry("b"))
	ba := slices.Concat(entry("b"), entry("a"))
	withMetadata := func(value []byte) Resources {
		r := testResources(t)
		r.Clusters[0].(*clusterv3.Cluster).Metadata = &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{
			"io.tollgate": {TypeUrl: "type.googleapis.com/google.protobuf.Struct", Value: value},
		}}
		return r
	}
	rab, rba := withMetadata(ab), withMetadata(ba)
	v1, _ := versions(t, rab)
	v2, _ := versions(t, rba)
	if v1 != v2 {
		t.Errorf("same packed content in two byte orders got versions %s and %s", v1, v2)
	}
	// Hashing a canonical copy must leave the caller's resources alone.
	got := rba.Clusters[0].(*clusterv3.Cluster).GetMetadata().GetTypedFilterMetadata()["io.tollgate"].GetValue()
	if !slices.Equal(got, ba) {
		t.Error("computing the version rewrote the caller's packed bytes")
	}
}
