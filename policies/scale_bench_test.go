package policies

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkParseScaled parses policies of growing size (models = quotas = user overrides = n).
func BenchmarkParseScaled(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		var sb strings.Builder
		sb.WriteString("backends:\n  - {name: sim, url: \"http://127.0.0.1:8000\"}\nmodels:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&sb, "  - {name: model-%d, backend: sim}\n", i)
		}
		sb.WriteString("costs:\n  - {name: tokens, type: TotalToken}\nquotas:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&sb, "  - {model: model-%d, cost: tokens, limit: 1000, per: hour, overrides: [{user: user-%d, limit: 5000}]}\n", i, i)
		}
		data := []byte(sb.String())
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := Parse("scaled.yaml", data, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
