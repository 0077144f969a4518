package rls

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// BenchmarkCheck measures a check-only round trip through the real service and Redis, with
// tollgate's client, for one user (tollgate quota --user) and for many users in one call.
func BenchmarkCheck(b *testing.B) {
	st := startStack(b, false)
	ctx := context.Background()
	client, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = client.Close(ctx) }()
	for _, n := range []int{1, 20} {
		ds := make([]rlsclient.Descriptor, n)
		for i := range ds {
			ds[i] = qwen3("user-" + strconv.Itoa(i))
		}
		b.Run(fmt.Sprintf("descriptors=%d", n), func(b *testing.B) {
			for b.Loop() {
				got, err := client.Check(ctx, st.opts.GRPCAddr, testDomain, ds, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				if got[0].Limit.PerWindow != 50 {
					b.Fatalf("limit %d, want 50", got[0].Limit.PerWindow)
				}
			}
		})
	}
}
