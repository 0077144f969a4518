// Package bootstrap renders the Envoy bootstrap that points an Envoy at tollgate: everything
// but the admin interface and the xDS cluster arrives over ADS, so the bootstrap never changes
// when the policy does.
package bootstrap

import (
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Options say where tollgate and the admin interface are, and who this Envoy is.
type Options struct {
	// XDSAddress is tollgate's ADS server, host:port. Default envoy.DefaultXDSAddress.
	XDSAddress string
	// AdminAddress is Envoy's admin interface, host:port. Default envoy.DefaultAdminAddress.
	AdminAddress string
	// NodeID identifies this Envoy to tollgate. Default envoy.DefaultEnvoyNodeID.
	NodeID string
	// NodeCluster is the node's cluster name. Default envoy.NodeCluster.
	NodeCluster string
}

func (o Options) withDefaults() Options {
	if o.XDSAddress == "" {
		o.XDSAddress = envoy.DefaultXDSAddress
	}
	if o.AdminAddress == "" {
		o.AdminAddress = envoy.DefaultAdminAddress
	}
	if o.NodeID == "" {
		o.NodeID = envoy.DefaultEnvoyNodeID
	}
	if o.NodeCluster == "" {
		o.NodeCluster = envoy.NodeCluster
	}
	return o
}

// xdsConnectTimeout is short: tollgate runs beside Envoy, and Envoy retries with backoff.
const xdsConnectTimeout = time.Second

// Build returns the bootstrap message.
func Build(opts Options) (*bootstrapv3.Bootstrap, error) {
	opts = opts.withDefaults()
	xdsHost, xdsPort, err := envoy.SplitHostPort(opts.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("xds address: %w", err)
	}
	adminHost, adminPort, err := envoy.SplitHostPort(opts.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("admin address: %w", err)
	}
	http2, err := envoy.HTTP2ProtocolOptions()
	if err != nil {
		return nil, err
	}
	discovery := clusterv3.Cluster_STRICT_DNS
	if envoy.IsIP(xdsHost) {
		discovery = clusterv3.Cluster_STATIC
	}
	ads := &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		// 0s: wait for tollgate as long as it takes instead of starting with a partial config.
		InitialFetchTimeout: envoy.Duration(0),
	}
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: opts.NodeID, Cluster: opts.NodeCluster},
		Admin: &bootstrapv3.Admin{
			Address: envoy.SocketAddress(adminHost, adminPort),
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   corev3.ApiConfigSource_GRPC,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
						ClusterName: envoy.ClusterXDS,
					}},
				}},
			},
			CdsConfig: ads,
			LdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{{
				Name:                          envoy.ClusterXDS,
				ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: discovery},
				ConnectTimeout:                envoy.Duration(xdsConnectTimeout),
				TypedExtensionProtocolOptions: http2,
				LoadAssignment: &endpointv3.ClusterLoadAssignment{
					ClusterName: envoy.ClusterXDS,
					Endpoints: []*endpointv3.LocalityLbEndpoints{{
						LbEndpoints: []*endpointv3.LbEndpoint{{
							HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
								Address: envoy.SocketAddress(xdsHost, xdsPort),
							}},
						}},
					}},
				},
			}},
		},
	}, nil
}

// YAML renders the bootstrap as YAML for `envoy -c`.
func YAML(opts Options) ([]byte, error) {
	b, err := Build(opts)
	if err != nil {
		return nil, err
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	v, err := envoy.Plain(b)
	if err != nil {
		return nil, err
	}
	return envoy.YAML(v)
}
