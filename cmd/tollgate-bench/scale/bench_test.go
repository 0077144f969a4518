package scale

import (
	"context"
	"fmt"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// BenchmarkPublishTranslated publishes translated policies of growing size: "reload" into one
// server, alternating two versions (every limit changed) so each publish installs a snapshot,
// as a reload does; "fresh" into a new server each time, as at start-up.
func BenchmarkPublishTranslated(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("reload/n=%d", n), func(b *testing.B) {
			res := [2]xds.Resources{translated(b, n, 1000), translated(b, n, 1001)}
			server := xds.NewServer(nil, nil, xds.Options{})
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := server.Publish(ctx, res[i%2]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("fresh/n=%d", n), func(b *testing.B) {
			res := translated(b, n, 1000)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := xds.NewServer(nil, nil, xds.Options{}).Publish(ctx, res); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func translated(b *testing.B, n int, limit uint64) xds.Resources {
	p, err := policies.Parse("scale.yaml", PolicyYAML(n, limit), nil)
	if err != nil {
		b.Fatal(err)
	}
	out, err := translate.Translate(p)
	if err != nil {
		b.Fatal(err)
	}
	return xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)
}
