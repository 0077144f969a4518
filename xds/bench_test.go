package xds

import (
	"context"
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// benchResources is a configuration with n backend clusters, each with its own route.
func benchResources(b *testing.B, n int) Resources {
	backends := make([]string, n)
	for i := range backends {
		backends[i] = fmt.Sprintf("backend_%05d", i)
	}
	return testResources(b, backends...)
}

// BenchmarkPublish measures a publish of 10,000 routes and clusters: "changed" alternates
// between two configurations so every iteration installs a snapshot; "unchanged" publishes
// the same content, which is checked and hashed but not installed.
func BenchmarkPublish(b *testing.B) {
	const n = 10_000
	ctx := context.Background()

	b.Run("changed", func(b *testing.B) {
		s := NewServer(nil, nil, Options{})
		configs := [2]Resources{benchResources(b, n), benchResources(b, n)}
		configs[1].Clusters[0].(*clusterv3.Cluster).ConnectTimeout.Seconds = 9
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			res, err := s.Publish(ctx, configs[i%2])
			if err != nil || !res.EnvoyChanged {
				b.Fatalf("publish %d: changed=%v err=%v", i, res.EnvoyChanged, err)
			}
			i++
		}
	})

	b.Run("unchanged", func(b *testing.B) {
		s := NewServer(nil, nil, Options{})
		r := benchResources(b, n)
		if _, err := s.Publish(ctx, r); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			res, err := s.Publish(ctx, r)
			if err != nil || res.EnvoyChanged {
				b.Fatalf("changed=%v err=%v", res.EnvoyChanged, err)
			}
		}
	})
}
