package main

import (
	"math"
	"testing"
	"time"
)

// A page as tollgate's /metrics serves it: two message kinds, the quota checks and a family
// that is not asked for.
const metricsPage = `# HELP tollgate_extproc_message_duration_seconds ...
# TYPE tollgate_extproc_message_duration_seconds histogram
tollgate_extproc_message_duration_seconds_bucket{message="request_body",le="0.0001"} 10
tollgate_extproc_message_duration_seconds_bucket{message="request_body",le="0.001"} 90
tollgate_extproc_message_duration_seconds_bucket{message="request_body",le="+Inf"} 100
tollgate_extproc_message_duration_seconds_sum{message="request_body"} 0.05
tollgate_extproc_message_duration_seconds_count{message="request_body"} 100
tollgate_extproc_message_duration_seconds_bucket{message="request_headers",le="0.0001"} 100
tollgate_extproc_message_duration_seconds_bucket{message="request_headers",le="0.001"} 100
tollgate_extproc_message_duration_seconds_bucket{message="request_headers",le="+Inf"} 100
# TYPE tollgate_quota_check_duration_seconds histogram
tollgate_quota_check_duration_seconds_bucket{le="0.001"} 40
tollgate_quota_check_duration_seconds_bucket{le="0.0001"} 0
tollgate_quota_check_duration_seconds_bucket{le="+Inf"} 50
tollgate_quota_check_duration_seconds_sum 0.1
# TYPE gen_ai_server_request_duration_seconds histogram
gen_ai_server_request_duration_seconds_bucket{le="0.01"} 7
`

func TestParseHistograms(t *testing.T) {
	got := parseHistograms(metricsPage, messageDurationMetric, checkDurationMetric)
	if len(got) != 3 {
		t.Fatalf("%d series, want 3 (two message kinds, the checks): %v", len(got), got)
	}
	body := got[messageDurationMetric+`{message="request_body"}`]
	if body == nil || len(body.buckets) != 3 || body.buckets[1].le != 0.001 || !math.IsInf(body.buckets[2].le, 1) || body.total() != 100 {
		t.Fatalf("request_body series: %+v", body)
	}
	checks := got[checkDurationMetric+"{}"]
	if checks == nil || checks.buckets[0].le != 0.0001 || checks.buckets[0].count != 0 || checks.buckets[1].count != 40 {
		t.Fatalf("the checks' buckets, sorted by bound: %+v", checks)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	s := parseHistograms(metricsPage, messageDurationMetric)[messageDurationMetric+`{message="request_body"}`]
	for _, c := range []struct{ q, want float64 }{
		{0.05, 0.00005},      // halfway into the first bucket, from 0
		{0.5, 0.00055},       // 40 of the 80 in (0.0001, 0.001]
		{0.99, 0.001},        // in +Inf: the highest finite bound
		{0.1, 0.0001},        // exactly the first bucket's count
		{0.9, 0.001},         // exactly the second's
		{0.0001, 1e-7},       // a rank of 0.01 of the first bucket's 10
		{0.95, 0.001},        // +Inf again
		{0.125, 0.000128125}, // 2.5 of the 80 in the second bucket
	} {
		if got := s.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := (&histogramSeries{}).quantile(0.5); !math.IsNaN(got) {
		t.Errorf("quantile of an empty series = %v, want NaN", got)
	}
}

// The report counts only what happened between the scrapes.
func TestTimingsAreTheGrowthBetweenScrapes(t *testing.T) {
	before := parseHistograms(metricsPage, messageDurationMetric, checkDurationMetric)
	after := parseHistograms(metricsPage, messageDurationMetric, checkDurationMetric)
	grown := after[messageDurationMetric+`{message="request_body"}`]
	for i := range grown.buckets {
		grown.buckets[i].count += 20 // 20 more request bodies, all over 1 ms
	}
	grown.buckets[0].count -= 20
	grown.buckets[1].count -= 20
	rows := timings(before, after)
	if len(rows) != 1 {
		t.Fatalf("rows %+v, want one: only request bodies were answered between the scrapes", rows)
	}
	if r := rows[0]; r.What != "request_body message, arrival to answer" || r.Count != 20 || r.P50 != time.Millisecond || r.P99 != time.Millisecond {
		t.Errorf("row %+v, want 20 request bodies, all at the highest finite bound (1 ms)", r)
	}
	if rows := timings(nil, after); len(rows) != 3 || rows[2].What != "quota check and reservation" || rows[2].Count != 50 {
		t.Errorf("from the start: %+v, want request headers, request bodies and the checks", rows)
	}
}
