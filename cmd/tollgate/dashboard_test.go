package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/xds"
)

// describingRegisterer registers collectors on a registry and remembers the names of every
// metric they describe, also those with no series yet (a registry only gathers those that
// have one).
type describingRegisterer struct {
	*prometheus.Registry
	names map[string]bool
}

func (d *describingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		// Desc.String: Desc{fqName: "name", help: ...}
		if m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return d.Registry.Register(c)
}

func (d *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// exportedMetrics are the names of every metric `tollgate serve` exports: the control plane's,
// the reloader's and the ext_proc server's.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := &describingRegisterer{Registry: prometheus.NewRegistry(), names: map[string]bool{}}
	logger := slog.New(slog.DiscardHandler)
	xds.NewServer(logger, reg, xds.Options{})
	newReloader("policy.yaml", nil, logger, reg, nil, nil)
	extproc.NewMetrics(reg)
	if len(reg.names) < 10 {
		t.Fatalf("only %d metrics described: %v", len(reg.names), reg.names)
	}
	return reg.names
}

// TestDashboardQueriesExportedMetrics: the Grafana dashboard is valid JSON for the provisioned
// Prometheus data source, and every query names metrics tollgate really exports (a histogram by
// its _bucket, _sum or _count series).
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("../../examples/grafana/tollgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr       string `json:"expr"`
				Datasource struct {
					UID string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	exported := exportedMetrics(t)
	name := regexp.MustCompile(`\b(tollgate|gen_ai)_[a-z0-9_]+`)
	// Label names (grouping clauses, matchers) look like metric names: they are left out.
	labels := regexp.MustCompile(`\b(by|without)\s*\([^)]*\)|\{[^}]*\}`)
	queries := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			queries++
			if target.Datasource.UID != "prometheus" {
				t.Errorf("panel %q: data source %q, want the provisioned prometheus", p.Title, target.Datasource.UID)
			}
			found := name.FindAllString(labels.ReplaceAllString(target.Expr, ""), -1)
			if len(found) == 0 {
				t.Errorf("panel %q: query %q names no tollgate metric", p.Title, target.Expr)
			}
			for _, m := range found {
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed := strings.TrimSuffix(m, suffix); trimmed != m && exported[trimmed] {
						base = trimmed
					}
				}
				if !exported[base] {
					t.Errorf("panel %q: %s is not a metric tollgate exports", p.Title, m)
				}
			}
		}
	}
	if queries < 10 {
		t.Errorf("%d queries, want the dashboard's panels", queries)
	}
}
