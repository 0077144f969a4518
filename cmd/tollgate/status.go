package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/xds"
)

func statusCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", stderr)
	addr := fs.String("addr", fmt.Sprintf("127.0.0.1:%d", envoy.DefaultMetricsPort), "tollgate serve's metrics/status address")
	asJSON := fs.Bool("json", false, "print the raw JSON status")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/status", nil)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate status: %v\n", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate status: is `tollgate serve` running? %v\n", err)
		return 1
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		_, _ = fmt.Fprintf(stderr, "tollgate status: %s answered %d: %v\n", *addr, resp.StatusCode, err)
		return 1
	}
	if *asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var st serveStatus
	if err := json.Unmarshal(body, &st); err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate status: unreadable status: %v\n", err)
		return 1
	}
	printStatus(stdout, st)
	return 0
}

func printStatus(w io.Writer, st serveStatus) {
	r := st.Reload
	_, _ = fmt.Fprintf(w, "tollgate %s serving %s\n", st.Version, r.PolicyFile)
	_, _ = fmt.Fprintf(w, "  listener:          %s\n", r.ListenerURL)
	_, _ = fmt.Fprintf(w, "  envoy version:     %s\n", r.EnvoyVersion)
	_, _ = fmt.Fprintf(w, "  ratelimit version: %s\n", r.RateLimitVer)
	if st.Redis != nil {
		_, _ = fmt.Fprintf(w, "  counters:          %s\n", st.Redis)
	}
	_, _ = fmt.Fprintf(w, "  last reload:       %s at %s\n", r.LastResult, r.LastAttempt.Format(time.RFC3339))
	for _, e := range r.LastErrors {
		_, _ = fmt.Fprintf(w, "    %s\n", e)
	}
	_, _ = fmt.Fprintf(w, "  last good:         %s\n", r.LastGoodAt.Format(time.RFC3339))
	_, _ = fmt.Fprintf(w, "  models (%d):        %s\n", len(r.Models), strings.Join(r.Models, ", "))
	_, _ = fmt.Fprintf(w, "  stream usage:      %s\n", streamUsageSummary(r.StreamUsage))
	_, _ = fmt.Fprintf(w, "  quotas (%d), ratelimit failure mode %s:\n", len(r.Quotas), r.FailureMode)
	for _, q := range r.Quotas {
		_, _ = fmt.Fprintf(w, "    %s\n", q)
	}
	clients := st.XDS.Clients
	printLimits(w, r.Limits, clients)
	states := make([]string, len(clients))
	count := map[string]int{}
	for i, c := range clients {
		served := st.XDS.EnvoyVersion // what the xDS server serves now
		if c.Group == xds.GroupRateLimit {
			served = st.XDS.RateLimitVersion
		}
		states[i] = clientState(c, served)
		count[strings.Fields(states[i])[0]]++
	}
	var summary []string
	for _, state := range []string{"current", "behind", "REJECTING"} {
		if count[state] > 0 {
			summary = append(summary, fmt.Sprintf("%d %s", count[state], strings.ToLower(state)))
		}
	}
	_, _ = fmt.Fprintf(w, "  xDS clients (%d", len(clients))
	if len(summary) > 0 {
		_, _ = fmt.Fprintf(w, ": %s", strings.Join(summary, ", "))
	}
	_, _ = fmt.Fprintf(w, "):\n")
	for i, c := range clients {
		types := make([]string, 0, len(c.Acked))
		for t := range c.Acked {
			types = append(types, t)
		}
		sort.Strings(types)
		var acked []string
		for _, t := range types {
			acked = append(acked, shortType(t)+"="+c.Acked[t])
		}
		build := ""
		if c.Build != "" {
			build = " " + c.Build
		}
		_, _ = fmt.Fprintf(w, "    %-20s %-9s%s %s, connected %s  acked: %s\n", c.NodeID, c.Group, build, states[i],
			c.ConnectedAt.Format(time.RFC3339), strings.Join(acked, " "))
		if c.LastNack != nil {
			_, _ = fmt.Fprintf(w, "      NACK %s version %s: %s\n", shortType(c.LastNack.TypeURL), c.LastNack.Version, c.LastNack.Message)
		}
	}
}

// clientState says whether a client runs the version served: "current" when it accepted it for
// every type, "REJECTING <type>" while its last answer to one was a NACK, else "behind" (it has
// not answered yet, or holds an older version).
func clientState(c xds.ClientStatus, served string) string {
	if c.LastNack != nil {
		return "REJECTING " + shortType(c.LastNack.TypeURL)
	}
	if len(c.Acked) == 0 {
		return "behind"
	}
	for _, v := range c.Acked {
		if v != served {
			return "behind"
		}
	}
	return "current"
}

// shortType turns "type.googleapis.com/envoy.config.cluster.v3.Cluster" into "Cluster".
func shortType(typeURL string) string {
	if i := strings.LastIndex(typeURL, "."); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// streamUsageSummary says who reads streams' usage (extProc.streamUsage) and what it costs.
func streamUsageSummary(reader string) string {
	switch reader {
	case policies.StreamUsageEnvoy:
		return "read by Envoy, four ext_proc messages per stream; a stream left early is charged its reservation"
	case policies.StreamUsageTollgate:
		return "read by tollgate, chunk by chunk"
	}
	return reader
}
