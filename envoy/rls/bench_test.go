package rls

import (
	"context"
	"fmt"
	"strconv"
	"testing"
)

// BenchmarkCheck measures a check-only round trip through the real service and Redis, for
// one user (tollgate quota --user) and for many users in one call.
func BenchmarkCheck(b *testing.B) {
	st := startStack(b, false)
	ctx := context.Background()
	for _, n := range []int{1, 20} {
		ds := make([]Descriptor, n)
		for i := range ds {
			ds[i] = qwen3("user-" + strconv.Itoa(i))
		}
		b.Run(fmt.Sprintf("descriptors=%d", n), func(b *testing.B) {
			for b.Loop() {
				got, err := Check(ctx, st.conn, testDomain, ds)
				if err != nil {
					b.Fatal(err)
				}
				if got[0].Limit != 50 {
					b.Fatalf("limit %d, want 50", got[0].Limit)
				}
			}
		})
	}
}
