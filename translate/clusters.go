package translate

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/policies"
)

// grpcConnectTimeout bounds connecting to tollgate's own gRPC services; they run next to Envoy.
const grpcConnectTimeout = time.Second

// backendCluster builds the cluster of one upstream LLM backend.
func backendCluster(b policies.Backend) (*clusterv3.Cluster, error) {
	u, err := url.Parse(b.URL)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	c, err := urlCluster(envoy.BackendCluster(b.Name), u, b.ConnectTimeout.Duration)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	// Past these bounds Envoy answers 503 at once (upstream_overflow) instead of queueing;
	// without them its defaults, 1,024 each, would apply unseen. Connections follow the
	// requests: over HTTP/1 each request in flight holds one.
	c.CircuitBreakers = circuitBreakers(b.MaxConcurrentRequests, b.MaxPendingRequests, b.MaxConcurrentRequests)
	return c, nil
}

// circuitBreakers bounds a cluster's requests in flight, requests waiting for a connection,
// and connections.
func circuitBreakers(requests, pending, connections int) *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxRequests:        wrapperspb.UInt32(uint32(requests)),
		MaxPendingRequests: wrapperspb.UInt32(uint32(pending)),
		MaxConnections:     wrapperspb.UInt32(uint32(connections)),
	}}}
}

// urlCluster builds a cluster reaching the host of an http or https URL; https gets TLS with
// SNI and the system's root certificates.
func urlCluster(name string, u *url.URL, connectTimeout time.Duration) (*clusterv3.Cluster, error) {
	host := u.Hostname()
	port := 80
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		var err error
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("bad port %q", p)
		}
	}
	c := endpointCluster(name, host, port, connectTimeout)
	if u.Scheme == "https" {
		tlsCtx, err := envoy.Any(&tlsv3.UpstreamTlsContext{
			Sni: host,
			CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
					ValidationContext: &tlsv3.CertificateValidationContext{
						SystemRootCerts: &tlsv3.CertificateValidationContext_SystemRootCerts{},
					},
				},
			},
		})
		if err != nil {
			return nil, err
		}
		c.TransportSocket = &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx},
		}
	}
	return c, nil
}

// extProcCluster is the ext_proc server's cluster: its TCP endpoint, or its Unix socket.
// Every request holds a stream to it from its headers to its end, streamed responses
// included, so its bound on requests in flight is the gateway's: maxInFlight.
func extProcCluster(ep policies.ExtProcEndpoint, maxInFlight int) (*clusterv3.Cluster, error) {
	if ep.Socket == "" {
		return asGRPC(endpointCluster(envoy.ClusterExtProc, ep.Address, ep.Port, grpcConnectTimeout), maxInFlight)
	}
	return asGRPC(&clusterv3.Cluster{
		Name:                 envoy.ClusterExtProc,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       envoy.Duration(grpcConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: envoy.ClusterExtProc,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: envoy.PipeAddress(ep.Socket),
					}},
				}},
			}},
		},
	}, maxInFlight)
}

// asGRPC makes c a cluster of a gRPC service with a stream per request: HTTP/2, at most
// maxStreams streams in flight. One more fails the request at once, before any work is done
// for it: the ext_proc filter fails closed, and the gateway answers a JSON 503 with
// Retry-After (see localReplyConfig). Pending requests are bounded alike; over HTTP/2 they
// only wait for the first connection.
func asGRPC(c *clusterv3.Cluster, maxStreams int) (*clusterv3.Cluster, error) {
	opts, err := envoy.HTTP2ProtocolOptions()
	if err != nil {
		return nil, err
	}
	c.TypedExtensionProtocolOptions = opts
	c.CircuitBreakers = circuitBreakers(maxStreams, maxStreams, maxStreams)
	return c, nil
}

// endpointCluster is a single-endpoint cluster: STATIC for an IP literal, STRICT_DNS for a name
// (re-resolved, so a backend moving to new addresses is followed without a reload).
func endpointCluster(name, host string, port int, connectTimeout time.Duration) *clusterv3.Cluster {
	discovery := clusterv3.Cluster_STRICT_DNS
	if envoy.IsIP(host) {
		discovery = clusterv3.Cluster_STATIC
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       envoy.Duration(connectTimeout),
		DnsLookupFamily:      clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: envoy.SocketAddress(host, port),
					}},
				}},
			}},
		},
	}
}
