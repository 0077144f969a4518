package translate_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// scaledPolicy has n models, n quotas (one per model) and n user overrides.
func scaledPolicy(tb testing.TB, n int) *policies.Policy {
	tb.Helper()
	var b strings.Builder
	b.WriteString("backends:\n  - {name: sim, url: \"http://127.0.0.1:8000\"}\nmodels:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - {name: model-%d, backend: sim}\n", i)
	}
	b.WriteString("costs:\n  - {name: tokens, type: TotalToken}\nquotas:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - {model: model-%d, cost: tokens, limit: 1000, per: hour, overrides: [{user: user-%d, limit: 5000}]}\n", i, i)
	}
	p, err := policies.Parse("scaled.yaml", []byte(b.String()), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkTranslate measures translating policies of growing size (models = quotas = user
// overrides = n); ns/op should grow linearly with n.
func BenchmarkTranslate(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			p := scaledPolicy(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := translate.Translate(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
