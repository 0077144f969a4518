//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

const usagePolicy = `
listener: {{listener}}
extProc: {{extproc}}
rateLimit: {port: {{ratelimit_port}}}
backends:
  - {name: sim, url: "{{backend:sim}}"}
models:
  - {name: qwen3, backend: sim}
costs:
  - {name: llm_input_token, type: InputToken}
  - {name: llm_output_token, type: OutputToken}
  - {name: llm_total_token, type: TotalToken}
  - {name: custom_cost, cel: "input_tokens * 2 + output_tokens"}
`

// TestUsageAccounting: every token llmsim reports shows up exactly once in Envoy's dynamic
// metadata (seen through the access log) and in the GenAI metrics, for JSON and SSE responses —
// the seed's table: 10 qwen3 requests → input 60, output 60, total 120, count 10.
func TestUsageAccounting(t *testing.T) {
	testutil.Envoy(t)
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, usagePolicy)
	s.startTollgate(t)
	s.startEnvoy(t)

	for i := 0; i < 5; i++ {
		sendN(t, s, "alice", "qwen3", 1, false)
		sendN(t, s, "alice", "qwen3", 1, true)
	}

	// The access log line of each request carries the metadata the ext_proc server wrote.
	var entries []map[string]any
	testutil.Eventually(t, 10*time.Second, "10 access log lines with usage", func() error {
		entries = entries[:0]
		for _, line := range strings.Split(s.envoy.logText(), "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var e map[string]any
			if err := json.Unmarshal([]byte(line), &e); err == nil && e["route"] == "model_qwen3" {
				entries = append(entries, e)
			}
		}
		if len(entries) != 10 {
			return fmt.Errorf("%d access log lines", len(entries))
		}
		return nil
	})
	for _, e := range entries {
		got := fmt.Sprint(e["input_tokens"], e["output_tokens"], e["total_tokens"], e["cost_llm_total_token"], e["cost_custom_cost"])
		if got != "6 6 12 12 18" {
			t.Errorf("access log metadata input/output/total/llm_total_token/custom_cost = %s, want 6 6 12 12 18: %v", got, e)
		}
	}

	metrics := string(mustDo(t, "GET", s.metricsURL("/metrics"), nil, "").body)
	for typ, want := range map[string]string{"input": "60", "output": "60", "total": "120"} {
		sum := metricValue(metrics, "gen_ai_client_token_usage_sum", `gen_ai_request_model="qwen3"`, `gen_ai_token_type="`+typ+`"`)
		count := metricValue(metrics, "gen_ai_client_token_usage_count", `gen_ai_request_model="qwen3"`, `gen_ai_token_type="`+typ+`"`)
		if sum != want || count != "10" {
			t.Errorf("gen_ai_client_token_usage %s: sum %q count %q, want %s and 10", typ, sum, count, want)
		}
	}
	if v := metricValue(metrics, "gen_ai_server_time_to_first_token_seconds_count", `gen_ai_request_model="qwen3"`); v != "5" {
		t.Errorf("time to first token observed %q times, want 5 (the streams)", v)
	}
}

// metricValue returns the value of the first sample of name whose labels contain every
// matcher, summed over series if several match.
func metricValue(text, name string, matchers ...string) string {
	var total float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range matchers {
			if !strings.Contains(line, m) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v); err == nil {
			total += v
			found = true
		}
	}
	if !found {
		return ""
	}
	return fmt.Sprint(total)
}
