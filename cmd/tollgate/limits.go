package main

import (
	"fmt"
	"io"
	"sort"

	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// limitsStatus is every bound on the request path, as the served policy and this build set
// them: what refuses load, and how, before anything queues without end.
type limitsStatus struct {
	// MaxConcurrentRequests is listener.maxConcurrentRequests: the gateway's requests in
	// flight; one more gets a JSON 503 with Retry-After at once.
	MaxConcurrentRequests int `json:"max_concurrent_requests"`
	// InFlight is how many requests this ext_proc server holds now (-1: it serves none).
	InFlight int64 `json:"in_flight"`
	// Backends are each backend's bounds.
	Backends []backendLimits `json:"backends"`
	// ExtProcMessageTimeout bounds one ext_proc round trip; past it the request fails closed.
	ExtProcMessageTimeout string `json:"ext_proc_message_timeout"`
	// ExtProcStreamsPerConnection is the ext_proc gRPC server's bound per Envoy connection.
	ExtProcStreamsPerConnection int `json:"ext_proc_streams_per_connection"`
	// QuotaCalls are the quota checker's and charger's queue bounds.
	QuotaCalls rlsclient.Bounds `json:"quota_calls"`
}

type backendLimits struct {
	Name                  string `json:"name"`
	MaxConcurrentRequests int    `json:"max_concurrent_requests"`
	MaxPendingRequests    int    `json:"max_pending_requests"`
}

// policyLimits reads the bounds of policy p.
func policyLimits(p *policies.Policy) limitsStatus {
	l := limitsStatus{
		MaxConcurrentRequests:       p.Listener.MaxConcurrentRequests,
		InFlight:                    -1,
		ExtProcMessageTimeout:       translate.ExtProcMessageTimeout.String(),
		ExtProcStreamsPerConnection: extproc.MaxStreamsPerConnection,
		QuotaCalls:                  rlsclient.ClientBounds(),
	}
	for _, b := range p.Backends {
		l.Backends = append(l.Backends, backendLimits{Name: b.Name, MaxConcurrentRequests: b.MaxConcurrentRequests, MaxPendingRequests: b.MaxPendingRequests})
	}
	sort.Slice(l.Backends, func(i, j int) bool { return l.Backends[i].Name < l.Backends[j].Name })
	return l
}

// printLimits writes the bounds for `tollgate status`.
func printLimits(w io.Writer, l limitsStatus, clients []xds.ClientStatus) {
	inFlight := ""
	if l.InFlight >= 0 {
		inFlight = fmt.Sprintf(", %d in flight now", l.InFlight)
	}
	_, _ = fmt.Fprintf(w, "  limits (in flight and pending: one more gets a JSON 503 with Retry-After at once):\n")
	_, _ = fmt.Fprintf(w, "    requests in flight:  %d (listener.maxConcurrentRequests)%s\n", l.MaxConcurrentRequests, inFlight)
	for _, b := range l.Backends {
		_, _ = fmt.Fprintf(w, "    backend %-12s %d in flight, %d pending\n", b.Name+":", b.MaxConcurrentRequests, b.MaxPendingRequests)
	}
	_, _ = fmt.Fprintf(w, "    ext_proc:            %s per message (then the request fails closed), %d streams per connection\n",
		l.ExtProcMessageTimeout, l.ExtProcStreamsPerConnection)
	q := l.QuotaCalls
	_, _ = fmt.Fprintf(w, "    quota calls:         queues of %d checks, charges and refunds each (full: callers wait), %d calls in flight each, %d undelivered charges kept for retry\n",
		q.Queue, q.CallsInFlight, q.Backlog)
	for _, c := range clients {
		if c.Group != xds.GroupEnvoy {
			continue
		}
		heap, conns := "not stated (a bootstrap tollgate did not render)", ""
		if h, ok := c.Bounds[bootstrap.BoundMaxHeapBytes]; ok {
			heap = formatBytes(uint64(h))
			conns = fmt.Sprintf(", %.0f client connections", c.Bounds[bootstrap.BoundMaxConnections])
		}
		_, _ = fmt.Fprintf(w, "    envoy %-13s heap %s (near it: JSON 503s)%s\n", c.NodeID+":", heap, conns)
	}
}
