package extproc

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNewMetricsSharesARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	first := NewMetrics(reg)
	second := NewMetrics(reg) // a second server on the same registry must not panic or split series
	first.requests.WithLabelValues(outcomeOK).Inc()
	second.requests.WithLabelValues(outcomeOK).Inc()
	if got := testutil.ToFloat64(first.requests.WithLabelValues(outcomeOK)); got != 2 {
		t.Fatalf("shared counter = %v, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "tollgate_extproc_requests_total"); err != nil || n != 1 {
		t.Fatalf("registered series = %d (%v), want 1", n, err)
	}
}

func TestTokenUsageBuckets(t *testing.T) {
	m := NewMetrics(nil)
	m.tokenUsage.WithLabelValues("chat", "qwen3", "input", "").Observe(67108864)
	h := m.tokenUsage.WithLabelValues("chat", "qwen3", "input", "").(prometheus.Metric)
	out := dtoMetric(t, h)
	buckets := out.GetHistogram().GetBucket()
	if len(buckets) != 14 || buckets[0].GetUpperBound() != 1 || buckets[13].GetUpperBound() != 67108864 {
		t.Fatalf("buckets = %v, want 1, 4, ... 67108864", buckets)
	}
	if buckets[13].GetCumulativeCount() != 1 || buckets[12].GetCumulativeCount() != 0 {
		t.Fatalf("an observation of 67108864 is not in the last bucket: %v", buckets)
	}
}
