//go:build e2e

package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// BenchmarkReloadLatency measures, through a real Envoy, the time from saving an edited policy
// (a new model added) to Envoy routing a request for that model. Each iteration is one edit;
// p50 and p99 over the iterations are reported alongside ns/op (the mean).
//
//	go test -run '^$' -bench ReloadLatency -benchtime 50x ./examples/e2e
func BenchmarkReloadLatency(b *testing.B) {
	testutil.Envoy(b)
	s := newStack(b, map[string]int{"sim": startSim(b, "sim")})
	s.writePolicy(b, routingPolicyOne)
	s.startTollgate(b)
	s.startEnvoy(b)
	models := []string{}
	var latencies []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		model := fmt.Sprintf("added-%d", i)
		models = append(models, model)
		policy := routingPolicyOne
		for _, m := range models {
			policy += fmt.Sprintf("  - {name: %s, backend: alpha}\n", m)
		}
		saved := time.Now()
		s.writePolicy(b, policy)
		for {
			r, err := do("POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "bench"}, chatBody(model))
			if err == nil && r.status == 200 {
				break
			}
			if time.Since(saved) > 10*time.Second {
				b.Fatalf("edit %d not served after 10s", i)
			}
			time.Sleep(2 * time.Millisecond)
		}
		latencies = append(latencies, time.Since(saved))
	}
	b.StopTimer()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(latencies[(len(latencies)*99)/100].Microseconds())/1000, "p99-ms")
}

const routingPolicyOne = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}}
backends:
  - {name: alpha, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: alpha}
`
