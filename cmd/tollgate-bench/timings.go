package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/report"
)

// The histograms tollgate keeps of its own share of a request's latency.
const (
	messageDurationMetric = "tollgate_extproc_message_duration_seconds"
	checkDurationMetric   = "tollgate_quota_check_duration_seconds"
)

// histogramSeries is one Prometheus histogram series read from a /metrics page: cumulative
// counts by upper bound, ascending, +Inf last.
type histogramSeries struct {
	bounds []float64
	counts []float64
}

// scrapeHistograms reads the histogram series of the families names from the /metrics page at
// url (see parseHistograms).
func scrapeHistograms(ctx context.Context, url string, names ...string) (map[string]*histogramSeries, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return parseHistograms(string(page), names...), nil
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
			bound := math.NaN()
			for label := range strings.SplitSeq(labels, ",") {
				if le, ok := strings.CutPrefix(label, `le="`); ok {
					bound, err = strconv.ParseFloat(strings.TrimSuffix(le, `"`), 64)
					if err != nil {
						bound = math.NaN()
					}
					continue
				}
				if label != "" {
					others = append(others, label)
				}
			}
			if math.IsNaN(bound) {
				continue
			}
			key := name + "{" + strings.Join(others, ",") + "}"
			s := out[key]
			if s == nil {
				s = &histogramSeries{}
				out[key] = s
			}
			s.bounds = append(s.bounds, bound)
			s.counts = append(s.counts, count)
		}
	}
	for _, s := range out {
		sort.Sort(byBound{s})
	}
	return out
}

type byBound struct{ s *histogramSeries }

func (b byBound) Len() int           { return len(b.s.bounds) }
func (b byBound) Less(i, j int) bool { return b.s.bounds[i] < b.s.bounds[j] }
func (b byBound) Swap(i, j int) {
	b.s.bounds[i], b.s.bounds[j] = b.s.bounds[j], b.s.bounds[i]
	b.s.counts[i], b.s.counts[j] = b.s.counts[j], b.s.counts[i]
}

// since is what h counted after before (nil: from the start), bucket by bucket.
func (h *histogramSeries) since(before *histogramSeries) *histogramSeries {
	d := &histogramSeries{bounds: h.bounds, counts: append([]float64(nil), h.counts...)}
	if before == nil || len(before.counts) != len(h.counts) {
		return d
	}
	for i := range d.counts {
		d.counts[i] -= before.counts[i]
	}
	return d
}

// total is the number of observations.
func (h *histogramSeries) total() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
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
	for i, upper := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(upper, 1) {
				return lower
			}
			inBucket := h.counts[i] - below
			if inBucket == 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/inBucket
		}
		lower, below = upper, h.counts[i]
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
