package xds

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// testCluster is a static cluster with one local endpoint.
func testCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress("127.0.0.1", 8000),
					}},
				}},
			}},
		},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatalf("packing %T: %v", m, err)
	}
	return a
}

func grpcService(cluster string) *corev3.GrpcService {
	return &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
		EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster},
	}}
}

// testHCM is an HTTP connection manager loading routeConfig over ADS, with tollgate's filter
// chain: ext_proc, router.
func testHCM(t testing.TB, routeConfig, extProcCluster string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: "ingress_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeConfig,
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: envoy.FilterExtProc, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &extprocfilterv3.ExternalProcessor{
				GrpcService: grpcService(extProcCluster),
			})}},
			{Name: envoy.FilterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}},
		},
	}
}

func testListener(t testing.TB, name string, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress("127.0.0.1", 8080),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
			}},
		}},
	}
}

// testRoutes is a route table with one prefix route per cluster.
func testRoutes(name string, clusters ...string) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: envoy.VirtualHostName, Domains: []string{"*"}}
	for _, c := range clusters {
		vh.Routes = append(vh.Routes, &routev3.Route{
			Name:  "to_" + c,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/" + c}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c},
			}},
		})
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{vh}}
}

// testRateLimitConfig limits each user of one model to limit tokens per hour.
func testRateLimitConfig(name, model string, limit uint32) *rlsconfv3.RateLimitConfig {
	return &rlsconfv3.RateLimitConfig{
		Name:   name,
		Domain: "tollgate",
		Descriptors: []*rlsconfv3.RateLimitDescriptor{{
			Key: "user_id",
			Descriptors: []*rlsconfv3.RateLimitDescriptor{{
				Key:       "model",
				Value:     model,
				RateLimit: &rlsconfv3.RateLimitPolicy{Unit: rlsconfv3.RateLimitUnit_HOUR, RequestsPerUnit: limit},
			}},
		}},
	}
}

// testResources is a complete, valid configuration; extraClusters adds backend clusters
// (each with a route) so tests can make a different but still valid configuration.
func testResources(t testing.TB, extraClusters ...string) Resources {
	backends := append([]string{envoy.BackendCluster("sim")}, extraClusters...)
	r := Resources{
		Listeners: []types.Resource{testListener(t, envoy.ListenerName,
			testHCM(t, envoy.RouteConfigName, envoy.ClusterExtProc))},
		Routes:           []types.Resource{testRoutes(envoy.RouteConfigName, backends...)},
		Clusters:         []types.Resource{testCluster(envoy.ClusterExtProc)},
		RateLimitConfigs: []types.Resource{testRateLimitConfig("tollgate", "qwen3", 50)},
	}
	for _, b := range backends {
		r.Clusters = append(r.Clusters, testCluster(b))
	}
	return r
}

// testServer is a Server behind a real gRPC server on a free local port.
type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := NewServer(slog.New(slog.DiscardHandler), reg, Options{})
	g := grpc.NewServer()
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &testServer{Server: s, addr: lis.Addr().String(), reg: reg}
}

// adsClient is one ADS stream speaking for a node, the way Envoy or the ratelimit service do.
type adsClient struct {
	t         *testing.T
	node      *corev3.Node
	stream    discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel    context.CancelFunc
	responses chan *discoverygrpc.DiscoveryResponse
	sentNode  bool
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func connect(t *testing.T, addr, nodeID string) *adsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &adsClient{
		t:         t,
		node:      &corev3.Node{Id: nodeID, Cluster: envoy.NodeCluster},
		stream:    stream,
		cancel:    cancel,
		responses: make(chan *discoverygrpc.DiscoveryResponse, 16),
	}
	go func() {
		defer close(c.responses)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			c.responses <- resp
		}
	}()
	t.Cleanup(cancel)
	return c
}

// send sends a request; like Envoy, only the first request on the stream carries the node.
func (c *adsClient) send(req *discoverygrpc.DiscoveryRequest) {
	c.t.Helper()
	if !c.sentNode {
		req.Node = c.node
		c.sentNode = true
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("sending %s request: %v", req.GetTypeUrl(), err)
	}
}

// subscribe asks for every resource of a type, starting from version (empty: none yet).
func (c *adsClient) subscribe(typeURL, version string) {
	c.send(&discoverygrpc.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version})
}

func (c *adsClient) ack(resp *discoverygrpc.DiscoveryResponse) {
	c.send(&discoverygrpc.DiscoveryRequest{
		TypeUrl:       resp.GetTypeUrl(),
		VersionInfo:   resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(),
	})
}

// nack rejects resp the way Envoy does: version_info stays at the last accepted version.
func (c *adsClient) nack(resp *discoverygrpc.DiscoveryResponse, accepted, message string) {
	c.send(&discoverygrpc.DiscoveryRequest{
		TypeUrl:       resp.GetTypeUrl(),
		VersionInfo:   accepted,
		ResponseNonce: resp.GetNonce(),
		ErrorDetail:   &statuspb.Status{Code: 3, Message: message},
	})
}

// next waits for the next response. The deadline only bounds a hang; it is not a timing assert.
func (c *adsClient) next() *discoverygrpc.DiscoveryResponse {
	c.t.Helper()
	select {
	case resp, ok := <-c.responses:
		if !ok {
			c.t.Fatal("stream closed while waiting for a response")
		}
		return resp
	case <-time.After(10 * time.Second):
		c.t.Fatal("no response within 10s")
		return nil
	}
}

func (s *testServer) client(nodeID string) (ClientStatus, bool) {
	for _, c := range s.Status().Clients {
		if c.NodeID == nodeID {
			return c, true
		}
	}
	return ClientStatus{}, false
}

// openWatches is how many requests of the group the cache holds unanswered: a request the
// server has handled without responding shows up here.
func (s *testServer) openWatches(group string) int {
	info := s.cache.GetStatusInfo(group)
	if info == nil {
		return 0
	}
	return info.GetNumWatches()
}

func publish(t *testing.T, s *Server, r Resources) PublishResult {
	t.Helper()
	res, err := s.Publish(context.Background(), r)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return res
}

func resourceNames(t *testing.T, resp *discoverygrpc.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			t.Errorf("response of type %s holds a %s", resp.GetTypeUrl(), a.GetTypeUrl())
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("decoding %s: %v", a.GetTypeUrl(), err)
		}
		out = append(out, m.(namedMessage).GetName())
	}
	return out
}
