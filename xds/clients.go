package xds

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"

	"github.com/tollgate-dev/tollgate/envoy"
)

// clientTracker follows every ADS stream through go-control-plane's callbacks: who connected,
// which versions they accepted and what they rejected.
type clientTracker struct {
	logger  *slog.Logger
	groups  nodeGroups
	metrics *metrics

	mu      sync.Mutex
	streams map[int64]*streamState
}

// streamState is one ADS stream. nodeID and group stay empty until the first request, which
// is the only one guaranteed to carry the node.
type streamState struct {
	id          int64
	identified  bool
	nodeID      string
	group       string
	connectedAt time.Time
	build       string
	bounds      map[string]float64
	acked       map[string]string
	lastNack    *Nack
	// lastSent remembers, per type URL, the latest response on this stream, so a NACK (which
	// carries the nonce of the rejected response but the version the client still runs) can
	// be matched to the version it rejects.
	lastSent map[string]sentResponse
}

type sentResponse struct {
	nonce, version string
}

func newClientTracker(logger *slog.Logger, groups nodeGroups, m *metrics) *clientTracker {
	return &clientTracker{
		logger:  logger,
		groups:  groups,
		metrics: m,
		streams: make(map[int64]*streamState),
	}
}

// callbacks returns the SOTW stream callbacks; fetch and delta callbacks stay unset because
// Register serves neither.
func (t *clientTracker) callbacks() serverv3.CallbackFuncs {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:     t.onStreamOpen,
		StreamClosedFunc:   t.onStreamClosed,
		StreamRequestFunc:  t.onStreamRequest,
		StreamResponseFunc: t.onStreamResponse,
	}
}

func (t *clientTracker) onStreamOpen(_ context.Context, id int64, _ string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &streamState{
		id:          id,
		connectedAt: time.Now(),
		acked:       make(map[string]string),
		lastSent:    make(map[string]sentResponse),
	}
	return nil
}

func (t *clientTracker) onStreamClosed(id int64, _ *corev3.Node) {
	t.mu.Lock()
	st, ok := t.streams[id]
	delete(t.streams, id)
	t.mu.Unlock()
	if ok && st.identified {
		t.metrics.connected.WithLabelValues(st.group).Dec()
		t.logger.Info("xDS client disconnected", "node", st.nodeID, "group", st.group, "stream", id)
	}
}

// onStreamRequest classifies every request as a NACK, an ACK or a (re)subscription.
//
// A NACK carries the version the client still runs, not the one it rejected. go-control-plane
// answers any request whose version differs from the snapshot's at once, so left alone it
// would resend the rejected snapshot immediately and the client would reject it again, in a
// loop. Rewriting the request's version to the rejected one (before the cache sees it) makes
// the cache wait for the next snapshot instead — the same as after an ACK.
func (t *clientTracker) onStreamRequest(id int64, req *discoverygrpc.DiscoveryRequest) error {
	typeURL := req.GetTypeUrl()

	t.mu.Lock()
	st, ok := t.streams[id]
	if !ok {
		t.mu.Unlock()
		return nil
	}
	newlyIdentified := false
	if !st.identified {
		st.identified = true
		st.nodeID = req.GetNode().GetId()
		st.group = t.groups.of(st.nodeID)
		st.build = nodeBuild(req.GetNode())
		st.bounds = nodeBounds(req.GetNode())
		newlyIdentified = true
	}
	nodeID, group := st.nodeID, st.group

	var nack *Nack
	switch {
	case req.GetErrorDetail() != nil:
		rejected := ""
		if sent, ok := st.lastSent[typeURL]; ok && sent.nonce == req.GetResponseNonce() {
			rejected = sent.version
		}
		nack = &Nack{
			TypeURL: typeURL,
			Version: rejected,
			Message: strings.TrimSpace(req.GetErrorDetail().GetMessage()), // Envoy ends it with a newline
			At:      time.Now(),
		}
		st.lastNack = nack
	case req.GetResponseNonce() != "":
		st.acked[typeURL] = req.GetVersionInfo()
		if st.lastNack != nil && st.lastNack.TypeURL == typeURL {
			st.lastNack = nil
		}
	case req.GetVersionInfo() != "":
		// A first request with a version comes from a client that reconnected and already
		// runs that version; if it is current, no response follows, so record it here.
		st.acked[typeURL] = req.GetVersionInfo()
	}
	t.mu.Unlock()

	if newlyIdentified {
		t.metrics.connected.WithLabelValues(group).Inc()
		t.logger.Info("xDS client connected", "node", nodeID, "group", group, "stream", id)
	}
	if nack != nil {
		t.metrics.nacks.WithLabelValues(group, typeName(typeURL)).Inc()
		t.logger.Warn("xDS client rejected configuration",
			"node", nodeID, "group", group, "type", typeURL,
			"rejected_version", nack.Version, "running_version", req.GetVersionInfo(),
			"error", nack.Message)
		if nack.Version != "" {
			req.VersionInfo = nack.Version
		}
	}
	return nil
}

func (t *clientTracker) onStreamResponse(_ context.Context, id int64, req *discoverygrpc.DiscoveryRequest, resp *discoverygrpc.DiscoveryResponse) {
	t.mu.Lock()
	group := t.groups.of(req.GetNode().GetId())
	if st, ok := t.streams[id]; ok {
		st.lastSent[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
		group = st.group
	}
	t.mu.Unlock()
	t.metrics.pushes.WithLabelValues(group).Inc()
}

// snapshot returns every identified stream, sorted by node id then stream id, as copies the
// caller may keep.
func (t *clientTracker) snapshot() []ClientStatus {
	t.mu.Lock()
	states := make([]*streamState, 0, len(t.streams))
	for _, st := range t.streams {
		if st.identified {
			states = append(states, st)
		}
	}
	slices.SortFunc(states, func(a, b *streamState) int {
		if c := strings.Compare(a.nodeID, b.nodeID); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	clients := make([]ClientStatus, 0, len(states))
	for _, st := range states {
		c := ClientStatus{
			NodeID:      st.nodeID,
			Group:       st.group,
			Acked:       maps.Clone(st.acked),
			ConnectedAt: st.connectedAt,
			Build:       st.build,
			Bounds:      st.bounds,
		}
		if st.lastNack != nil {
			nack := *st.lastNack
			c.LastNack = &nack
		}
		clients = append(clients, c)
	}
	t.mu.Unlock()
	return clients
}

// nodeBuild is the version a node reports: its semantic version when it gives one (Envoy
// does), else its build string.
func nodeBuild(n *corev3.Node) string {
	if v := n.GetUserAgentBuildVersion().GetVersion(); v != nil {
		return fmt.Sprintf("%d.%d.%d", v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
	}
	return n.GetUserAgentVersion()
}

// nodeBounds reads the bounds a tollgate bootstrap states in the node's metadata.
func nodeBounds(n *corev3.Node) map[string]float64 {
	fields := n.GetMetadata().GetFields()[envoy.NodeMetadataBounds].GetStructValue().GetFields()
	if len(fields) == 0 {
		return nil
	}
	out := make(map[string]float64, len(fields))
	for k, v := range fields {
		n, err := strconv.ParseFloat(v.GetStringValue(), 64)
		if err != nil {
			n = v.GetNumberValue()
		}
		out[k] = n
	}
	return out
}
