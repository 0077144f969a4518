// Package xds serves tollgate's Envoy configuration and the ratelimit service's limits over one
// aggregated discovery (ADS) gRPC stream per client, using go-control-plane's snapshot cache.
//
// Clients are split into two groups by node id: the ratelimit service (its own node id) receives
// only RateLimitConfig resources, every other node is an Envoy and shares one snapshot of
// listeners, routes and clusters. Snapshot versions are content hashes, so publishing the same
// configuration again — also after a restart or from a second replica — never pushes anything.
// Nothing is published unless it passes Check, and NACKs are logged, counted and shown in Status
// without making the server resend the rejected configuration.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Node groups: the snapshot cache keys snapshots by these names instead of by node id.
const (
	GroupEnvoy     = "envoy"
	GroupRateLimit = "ratelimit"
)

// Resources is one complete configuration to serve.
type Resources struct {
	// Listeners, Routes and Clusters go to every Envoy.
	Listeners, Routes, Clusters []types.Resource
	// RateLimitConfigs (ratelimit.config.ratelimit.v3.RateLimitConfig) go to the ratelimit service.
	RateLimitConfigs []types.Resource
}

// Options tune a Server. The zero value is usable.
type Options struct {
	// RateLimitNodeID is the node id the ratelimit service connects with; default
	// envoy.DefaultRateLimitNode.
	RateLimitNodeID string
}

// PublishResult reports the versions served after a Publish and whether each group changed.
type PublishResult struct {
	EnvoyVersion, RateLimitVersion string
	EnvoyChanged, RateLimitChanged bool
}

// Status describes what is served and who is connected.
type Status struct {
	EnvoyVersion, RateLimitVersion string
	// Clients are sorted by node id, then by stream (connection order).
	Clients []ClientStatus
}

// ClientStatus is one connected ADS stream that has identified its node.
type ClientStatus struct {
	NodeID string
	// Group is GroupEnvoy or GroupRateLimit.
	Group string
	// Acked maps a type URL to the last version the client accepted.
	Acked map[string]string
	// LastNack is the most recent rejection; it is cleared when the client later accepts a
	// version of the same type.
	LastNack *Nack
	// ConnectedAt is when the stream opened.
	ConnectedAt time.Time
	// Build is the client's build version as its node reports it (Envoy's version).
	Build string
	// Bounds are the bounds the client's bootstrap states (envoy.NodeMetadataBounds), by
	// name; empty for a bootstrap tollgate did not render.
	Bounds map[string]float64
}

// Nack is a configuration a client rejected.
type Nack struct {
	TypeURL string
	// Version is the rejected version ("" if the rejection did not match the last response
	// sent on the stream).
	Version string
	// Message is the client's error_detail message.
	Message string
	At      time.Time
}

// Server is the ADS server. Create it with NewServer, attach it to a gRPC server with Register
// and feed it with Publish.
type Server struct {
	logger  *slog.Logger
	groups  nodeGroups
	cache   cachev3.SnapshotCache
	ads     serverv3.Server
	metrics *metrics
	clients *clientTracker

	// publishMu serialises Publish so the version comparison and the snapshot swap happen as one.
	publishMu sync.Mutex
	// inspections remembers what checking the previous publish found (under publishMu).
	inspections *inspectionCache

	versionsMu       sync.Mutex
	envoyVersion     string
	rateLimitVersion string
}

// NewServer creates an ADS server with an empty cache: clients that connect before the first
// Publish wait for it. logger may be nil (discard); reg may be nil (metrics are kept but not
// registered). Like prometheus.MustRegister, it panics if reg already holds tollgate_xds_*
// metrics, which is a wiring mistake, never a consequence of input.
func NewServer(logger *slog.Logger, reg prometheus.Registerer, opts Options) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.RateLimitNodeID == "" {
		opts.RateLimitNodeID = envoy.DefaultRateLimitNode
	}
	groups := nodeGroups{rateLimitNodeID: opts.RateLimitNodeID}
	m := newMetrics(reg)
	gcpLogger := slogAdapter{logger: logger.With("component", "go-control-plane")}
	snapshots := cachev3.NewSnapshotCache(true, groups, gcpLogger)
	clients := newClientTracker(logger, groups, m)

	// go-control-plane ends every stream when this context ends. Streams already end when the
	// gRPC server stops or the client leaves, so it never needs cancelling.
	ads := serverv3.NewServer(context.Background(), resumingCache{SnapshotCache: snapshots, groups: groups},
		clients.callbacks(), sotw.WithLogger(gcpLogger))

	return &Server{
		logger:      logger,
		groups:      groups,
		cache:       snapshots,
		ads:         ads,
		metrics:     m,
		clients:     clients,
		inspections: newInspectionCache(),
	}
}

// Register registers the ADS service on g. Only the state-of-the-world stream is served:
// delta ADS answers Unimplemented, because its requests would bypass the callbacks that track
// clients, ACKs and NACKs.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, sotwOnlyADS{sotw: s.ads})
}

// sotwOnlyADS exposes go-control-plane's SOTW ADS handler and nothing else.
type sotwOnlyADS struct {
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer
	sotw serverv3.Server
}

func (a sotwOnlyADS) StreamAggregatedResources(stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamAggregatedResources(stream)
}

// Publish checks r and, if its content differs from what is served, installs new snapshots.
// Each group (Envoys, ratelimit service) is versioned and swapped on its own, so a quota change
// does not push listeners and a route change does not reload the ratelimit service. On error
// nothing changes. The snapshot keeps r's messages rather than copies: do not modify them
// after Publish.
func (s *Server) Publish(ctx context.Context, r Resources) (PublishResult, error) {
	if err := ctx.Err(); err != nil {
		return PublishResult{}, err
	}
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	p, err := prepareCached(r, s.inspections)
	if err != nil {
		return PublishResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return PublishResult{}, err
	}

	s.versionsMu.Lock()
	result := PublishResult{
		EnvoyVersion:     p.envoyVersion,
		RateLimitVersion: p.rateLimitVersion,
		EnvoyChanged:     p.envoyVersion != s.envoyVersion,
		RateLimitChanged: p.rateLimitVersion != s.rateLimitVersion,
	}
	s.versionsMu.Unlock()

	// Once installing has begun it runs to the end: stopping between the two groups, or while
	// the cache answers waiting clients, would leave some clients on the old version.
	// With a context that cannot be cancelled SetSnapshot only fails on delta watches, which
	// Register never serves, so a half-installed publish is not expected in practice.
	install := context.WithoutCancel(ctx)
	if result.EnvoyChanged {
		if err := s.install(install, GroupEnvoy, p.envoy, p.envoyVersion); err != nil {
			return PublishResult{}, err
		}
	}
	if result.RateLimitChanged {
		if err := s.install(install, GroupRateLimit, p.rateLimit, p.rateLimitVersion); err != nil {
			return PublishResult{}, err
		}
	}
	if !result.EnvoyChanged && !result.RateLimitChanged {
		s.logger.Debug("xDS configuration unchanged", "envoy_version", result.EnvoyVersion, "ratelimit_version", result.RateLimitVersion)
	} else {
		s.logger.Info("published xDS snapshot",
			"envoy_version", result.EnvoyVersion, "envoy_changed", result.EnvoyChanged,
			"ratelimit_version", result.RateLimitVersion, "ratelimit_changed", result.RateLimitChanged,
			"listeners", len(r.Listeners), "routes", len(r.Routes), "clusters", len(r.Clusters),
			"ratelimit_configs", len(r.RateLimitConfigs))
	}
	return result, nil
}

// install swaps one group's snapshot and records its version.
func (s *Server) install(ctx context.Context, group string, snap *cachev3.Snapshot, version string) error {
	err := s.cache.SetSnapshot(ctx, group, snap)

	// SetSnapshot stores the snapshot before answering waiting clients, so even when it fails
	// the new version is what the cache serves from now on: record that, not the old one.
	s.versionsMu.Lock()
	var previous string
	if group == GroupEnvoy {
		previous, s.envoyVersion = s.envoyVersion, version
	} else {
		previous, s.rateLimitVersion = s.rateLimitVersion, version
	}
	s.versionsMu.Unlock()
	s.metrics.setSnapshotVersion(group, previous, version)

	if err != nil {
		return fmt.Errorf("installing %s snapshot %s: %w", group, version, err)
	}
	return nil
}

// Status describes what is served and who is connected.
func (s *Server) Status() Status {
	s.versionsMu.Lock()
	st := Status{EnvoyVersion: s.envoyVersion, RateLimitVersion: s.rateLimitVersion}
	s.versionsMu.Unlock()
	st.Clients = s.clients.snapshot()
	return st
}
