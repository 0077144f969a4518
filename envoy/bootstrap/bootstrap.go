// Package bootstrap renders the Envoy bootstrap that points an Envoy at tollgate: everything
// but the admin interface and the xDS cluster arrives over ADS, so the bootstrap never changes
// when the policy does.
package bootstrap

import (
	"errors"
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

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
	// XDSTLS, when set, makes Envoy reach tollgate over TLS 1.3, verifying tollgate's
	// certificate and, with a client certificate, proving its own identity (mutual TLS).
	XDSTLS TLS
	// Overload bounds Envoy's heap and connections; zero values take the defaults.
	Overload Overload
}

// TLS names the PEM files Envoy uses to reach tollgate's ADS server over TLS. Paths are
// written into the bootstrap as given, so they must be valid where Envoy runs.
type TLS struct {
	// CAFile holds the CA certificates that tollgate's server certificate must chain to.
	// Required whenever TLS is on: without it Envoy would accept any server.
	CAFile string
	// CertFile and KeyFile are Envoy's client certificate and key, for a tollgate that
	// requires mutual TLS (serve --xds-tls-client-ca). Both or neither.
	CertFile, KeyFile string
	// ServerName is the name tollgate's certificate must carry (a DNS or IP subject
	// alternative name), also sent as SNI when it is a DNS name. Default: the host of
	// XDSAddress.
	ServerName string
}

// Enabled reports whether any TLS setting is given.
func (t TLS) Enabled() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// Validate refuses a half-configured set, which would otherwise give an Envoy that cannot
// connect or one that trusts any server.
func (t TLS) Validate() error {
	if !t.Enabled() {
		return nil
	}
	var errs []error
	if t.CAFile == "" {
		errs = append(errs, errors.New("xDS TLS needs a CA file to verify tollgate's certificate"))
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("xDS TLS client certificate and key go together: give both or neither"))
	}
	return errors.Join(errs...)
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
	o.Overload = o.Overload.withDefaults()
	return o
}

// xdsConnectTimeout is short: tollgate runs beside Envoy, and Envoy retries with backoff.
const xdsConnectTimeout = time.Second

// Build returns the bootstrap message.
func Build(opts Options) (*bootstrapv3.Bootstrap, error) {
	if err := opts.Overload.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	overload, err := overloadManager(opts.Overload)
	if err != nil {
		return nil, err
	}
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
	var transport *corev3.TransportSocket
	if opts.XDSTLS.Enabled() {
		if transport, err = xdsTransportSocket(opts.XDSTLS, xdsHost); err != nil {
			return nil, err
		}
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
		Node:                   &corev3.Node{Id: opts.NodeID, Cluster: opts.NodeCluster, Metadata: boundsMetadata(opts.Overload)},
		OverloadManager:        overload,
		MemoryAllocatorManager: memoryAllocatorManager(),
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
				TransportSocket:               transport,
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

// xdsTransportSocket is the xDS cluster's TLS: TLS 1.3 only, tollgate's certificate checked
// against the CA and the expected name, and Envoy's client certificate when one is given.
func xdsTransportSocket(t TLS, xdsHost string) (*corev3.TransportSocket, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	name := t.ServerName
	if name == "" {
		name = xdsHost
	}
	sanType := tlsv3.SubjectAltNameMatcher_DNS
	if envoy.IsIP(name) {
		sanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	common := &tlsv3.CommonTlsContext{
		// Envoy's upstream default tops out at TLS 1.2; tollgate's server speaks only 1.3.
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		// gRPC servers expect HTTP/2 to be negotiated by ALPN.
		AlpnProtocols: []string{"h2"},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: fileSource(t.CAFile),
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: sanType,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}},
				}},
			},
		},
	}
	if t.CertFile != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: fileSource(t.CertFile),
			PrivateKey:       fileSource(t.KeyFile),
		}}
	}
	upstream := &tlsv3.UpstreamTlsContext{CommonTlsContext: common}
	// SNI carries host names only (RFC 6066); an IP address is matched by the SAN check alone.
	if !envoy.IsIP(name) {
		upstream.Sni = name
	}
	typed, err := envoy.Any(upstream)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed},
	}, nil
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
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
