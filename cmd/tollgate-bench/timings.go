package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/stack"
)

// The histograms tollgate keeps of its own share of a request's latency.
const (
	messageDurationMetric = "tollgate_extproc_message_duration_seconds"
	checkDurationMetric   = "tollgate_quota_check_duration_seconds"
)

// histogramSeries is one Prometheus histogram series read from a /metrics page: its buckets,
// by ascending upper bound, +Inf last.
type histogramSeries struct {
	buckets []bucket
}

// bucket is a histogram bucket: its upper bound and the cumulative count up to it.
type bucket struct {
	le, count float64
}

// latencyHistograms reads tollgate's latency histograms from the gateway's /metrics.
func latencyHistograms(gw *stack.Gateway) (map[string]*histogramSeries, error) {
	page, err := gw.Metrics()
	if err != nil {
		return nil, fmt.Errorf("tollgate's latency histograms: %w", err)
	}
	return parseHistograms(page, messageDurationMetric, checkDurationMetric), nil
}

// parseHistograms reads the bucket lines of the families names from a page in the Prometheus
// text format, keyed by family and the labels other than le, as `name{a="1"}` (`name{}` for
// a series without labels).
func parseHistograms(page string, names ...string) map[string]*histogramSeries {
	out := map[string]*histogramSeries{}
	for line := range strings.SplitSeq(page, "\n") {
		for _, name := range names {
			rest, ok := strings.CutPrefix(line, name+"_bucket{")
			if !ok {
				continue
			}
			labels, value, ok := strings.Cut(rest, "} ")
			if !ok {
				continue
			}
			count, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
			if err != nil {
				continue
			}
			var others []string
			le := math.NaN()
			for label := range strings.SplitSeq(labels, ",") {
				if v, ok := strings.CutPrefix(label, `le="`); ok {
					if le, err = strconv.ParseFloat(strings.TrimSuffix(v, `"`), 64); err != nil {
						le = math.NaN()
					}
				} else if label != "" {
					others = append(others, label)
				}
			}
			if math.IsNaN(le) {
				continue
			}
			key := name + "{" + strings.Join(others, ",") + "}"
			s := out[key]
			if s == nil {
				s = &histogramSeries{}
				out[key] = s
			}
			s.buckets = append(s.buckets, bucket{le, count})
		}
	}
	for _, s := range out {
		slices.SortFunc(s.buckets, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	}
	return out
}

// since is what h counted after before (nil: from the start), bucket by bucket.
func (h *histogramSeries) since(before *histogramSeries) *histogramSeries {
	d := &histogramSeries{buckets: slices.Clone(h.buckets)}
	if before == nil || len(before.buckets) != len(h.buckets) {
		return d
	}
	for i := range d.buckets {
		d.buckets[i].count -= before.buckets[i].count
	}
	return d
}

// total is the number of observations.
func (h *histogramSeries) total() float64 {
	if len(h.buckets) == 0 {
		return 0
	}
	return h.buckets[len(h.buckets)-1].count
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile does: linearly within
// the bucket that holds it (from 0 for the first); in the +Inf bucket, the highest finite
// bound. NaN without observations.
func (h *histogramSeries) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	lower, below := 0.0, 0.0
	for _, b := range h.buckets {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return lower
			}
			inBucket := b.count - below
			if inBucket == 0 {
				return b.le
			}
			return lower + (b.le-lower)*(rank-below)/inBucket
		}
		lower, below = b.le, b.count
	}
	return lower
}

// timings turns the histograms' growth between two scrapes into the report's rows: each ext_proc
// message kind that was answered, then the quota checks.
func timings(before, after map[string]*histogramSeries) []report.Timing {
	seconds := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	row := func(what, key string) (report.Timing, bool) {
		s, ok := after[key]
		if !ok {
			return report.Timing{}, false
		}
		d := s.since(before[key])
		if d.total() == 0 {
			return report.Timing{}, false
		}
		return report.Timing{What: what, Count: int64(d.total()),
			P50: seconds(d.quantile(0.5)), P90: seconds(d.quantile(0.9)), P99: seconds(d.quantile(0.99))}, true
	}
	var rows []report.Timing
	for _, kind := range []string{"request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_trailers"} {
		if r, ok := row(kind+" message, arrival to answer", messageDurationMetric+`{message="`+kind+`"}`); ok {
			rows = append(rows, r)
		}
	}
	if r, ok := row("quota check and reservation", checkDurationMetric+"{}"); ok {
		rows = append(rows, r)
	}
	return rows
}
