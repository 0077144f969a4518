//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/xds"
	"github.com/tollgate-dev/tollgate/xds/xdstest"
)

// TestMutualTLSControlPlane: tollgate serves xDS only over mutual TLS 1.3; the real Envoy,
// bootstrapped with a client certificate, gets its configuration and routes, and the ratelimit
// service, with its own client certificate, loads its limits — shown end to end by the seed
// scenario's 429. A client without a certificate gets nothing.
func TestMutualTLSControlPlane(t *testing.T) {
	testutil.Envoy(t)
	certs, err := xdstest.WriteCertificates(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, map[string]int{"sim": startSim(t, "sim")})
	s.writePolicy(t, seedPolicy)
	s.startTollgateWith(t,
		"--xds-tls-cert", certs.ServerCert, "--xds-tls-key", certs.ServerKey, "--xds-tls-client-ca", certs.CA)
	clientTLS := []string{"--xds-tls-ca", certs.CA, "--xds-tls-cert", certs.ClientCert, "--xds-tls-key", certs.ClientKey}
	s.startRateLimitWith(t, s.startRedis(t), clientTLS...)
	s.startEnvoyWith(t, clientTLS...)

	if got := fmt.Sprint(sendN(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("seed scenario over mutual TLS: %s", got)
	}

	stats := string(mustDo(t, "GET", s.adminURL("/stats?filter=^(cluster\\.tollgate_xds\\.ssl|control_plane)"), nil, "").body)
	t.Logf("Envoy's xDS TLS stats:\n%s", stats)
	if statValue(stats, "cluster.tollgate_xds.ssl.handshake") < 1 || statValue(stats, "cluster.tollgate_xds.ssl.versions.TLSv1.3") < 1 {
		t.Errorf("Envoy did not reach tollgate over TLS 1.3:\n%s", stats)
	}
	if statValue(stats, "control_plane.connected_state") != 1 {
		t.Errorf("Envoy is not connected to the control plane:\n%s", stats)
	}

	var st struct {
		XDS struct {
			Clients []struct{ NodeID, Group string }
		} `json:"xds"`
	}
	if err := getJSON(s.metricsURL("/status"), &st); err != nil {
		t.Fatal(err)
	}
	groups := map[string]bool{}
	for _, c := range st.XDS.Clients {
		groups[c.Group] = true
	}
	if !groups["envoy"] || !groups["ratelimit"] {
		t.Errorf("tollgate's status lists clients %+v, want an Envoy and the ratelimit service", st.XDS.Clients)
	}

	// The running binary refuses a client without a certificate at the handshake (TLS 1.3
	// reports it with the first read) and a plain-text client outright.
	pool, err := xds.LoadCertPool(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr(s.xdsPort), &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("a client without a certificate: read %v, want a certificate required alert", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plain, err := grpc.NewClient(addr(s.xdsPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plain.Close() }()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(plain).StreamAggregatedResources(ctx)
	if err == nil {
		err = stream.Send(&discoverygrpc.DiscoveryRequest{
			Node:    &corev3.Node{Id: "plain-envoy", Cluster: "tollgate"},
			TypeUrl: resource.ClusterType,
		})
	}
	if err == nil {
		var resp *discoverygrpc.DiscoveryResponse
		if resp, err = stream.Recv(); err == nil {
			t.Errorf("a plain-text client got version %q", resp.GetVersionInfo())
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a plain-text client: %v, want Unavailable (refused connection)", err)
	}
}
