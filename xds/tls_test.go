package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/xds/xdstest"
)

func TestTLSFilesValidate(t *testing.T) {
	tests := []struct {
		name  string
		files TLSFiles
		want  []string // fragments of the error; none: valid
	}{
		{"nothing", TLSFiles{}, nil},
		{"server TLS", TLSFiles{CertFile: "c", KeyFile: "k"}, nil},
		{"mutual TLS", TLSFiles{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}, nil},
		{"cert without key", TLSFiles{CertFile: "c"}, []string{"key file is required"}},
		{"key without cert", TLSFiles{KeyFile: "k"}, []string{"certificate file is required"}},
		{"client CA alone", TLSFiles{ClientCAFile: "ca"}, []string{"certificate file is required", "key file is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.files.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, err := tt.files.ServerConfig(nil); err == nil {
				t.Error("ServerConfig accepted a half-configured set")
			}
		})
	}
}

func TestServerConfigReportsUnreadableFiles(t *testing.T) {
	certs := writeCerts(t)
	bad := writeTemp(t, "not a certificate")
	for name, files := range map[string]TLSFiles{
		"missing cert":        {CertFile: certs.ServerCert + ".missing", KeyFile: certs.ServerKey},
		"key of another cert": {CertFile: certs.ServerCert, KeyFile: certs.ClientKey},
		"client CA not PEM":   {CertFile: certs.ServerCert, KeyFile: certs.ServerKey, ClientCAFile: bad},
	} {
		if _, err := files.ServerConfig(nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// tlsServer is an ADS server behind TLS with one published snapshot.
type tlsServer struct {
	*Server
	addr    string
	version string
}

func startTLSServer(t *testing.T, files TLSFiles) *tlsServer {
	t.Helper()
	cfg, err := files.ServerConfig(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(nil, prometheus.NewRegistry(), Options{})
	res := publish(t, s, testResources(t))
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &tlsServer{Server: s, addr: lis.Addr().String(), version: res.EnvoyVersion}
}

// fetchClusters opens an ADS stream with creds and asks for clusters; it returns the version
// received or the stream's error.
func fetchClusters(t *testing.T, addr string, creds credentials.TransportCredentials) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	// The deadline bounds a hang; a refused handshake fails long before it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return "", err
	}
	err = stream.Send(&discoverygrpc.DiscoveryRequest{
		Node:    &corev3.Node{Id: "envoy-tls", Cluster: envoy.NodeCluster},
		TypeUrl: resource.ClusterType,
	})
	if err != nil {
		return "", err
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", err
	}
	return resp.GetVersionInfo(), nil
}

func clientCreds(t *testing.T, caFile, certFile, keyFile string) credentials.TransportCredentials {
	t.Helper()
	pool, err := LoadCertPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg)
}

func TestMutualTLS(t *testing.T) {
	certs := writeCerts(t)
	other := writeCerts(t) // a second CA the server does not trust
	s := startTLSServer(t, TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, ClientCAFile: certs.CA})

	t.Run("client certificate from the CA gets the snapshot", func(t *testing.T) {
		v, err := fetchClusters(t, s.addr, clientCreds(t, certs.CA, certs.ClientCert, certs.ClientKey))
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		if v != s.version {
			t.Errorf("got version %q, want %q", v, s.version)
		}
	})

	refused := map[string]credentials.TransportCredentials{
		"no client certificate":          clientCreds(t, certs.CA, "", ""),
		"certificate from another CA":    clientCreds(t, certs.CA, other.ClientCert, other.ClientKey),
		"plain text":                     insecure.NewCredentials(),
		"server certificate not trusted": clientCreds(t, other.CA, certs.ClientCert, certs.ClientKey),
	}
	for name, creds := range refused {
		t.Run(name+" is refused", func(t *testing.T) {
			v, err := fetchClusters(t, s.addr, creds)
			if err == nil {
				t.Fatalf("got version %q", v)
			}
			if code := status.Code(err); code != codes.Unavailable {
				t.Errorf("error %v (code %s), want Unavailable from a failed handshake", err, code)
			}
		})
	}
	// Refused clients never reached the ADS service.
	for _, c := range s.Status().Clients {
		if c.NodeID != "envoy-tls" {
			t.Errorf("unexpected client %+v", c)
		}
	}
	if n := len(s.Status().Clients); n > 1 {
		t.Errorf("%d clients connected, want at most the accepted one", n)
	}

	t.Run("the handshake itself fails without a certificate", func(t *testing.T) {
		pool, err := LoadCertPool(certs.CA)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer func() { _ = conn.Close() }()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		// In TLS 1.3 the server checks the client certificate after the client's side of the
		// handshake is done, so the refusal arrives as an alert on the first read.
		_, err = conn.Read(make([]byte, 1))
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Errorf("read after a handshake without a certificate: %v, want a certificate required alert", err)
		}
	})

	t.Run("TLS 1.2 is refused", func(t *testing.T) {
		pool, err := LoadCertPool(certs.CA)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.LoadX509KeyPair(certs.ClientCert, certs.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", s.addr, &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
			ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12,
		})
		if err == nil {
			_ = conn.Close()
			t.Fatal("a TLS 1.2 handshake succeeded")
		}
	})
}

func TestServerOnlyTLS(t *testing.T) {
	certs := writeCerts(t)
	s := startTLSServer(t, TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey})
	v, err := fetchClusters(t, s.addr, clientCreds(t, certs.CA, "", ""))
	if err != nil || v != s.version {
		t.Fatalf("client without a certificate: version %q, error %v; want %q", v, err, s.version)
	}
	if _, err := fetchClusters(t, s.addr, insecure.NewCredentials()); err == nil {
		t.Error("a plain-text client was served by a TLS server")
	}
}

// Rotating the files on disk applies to the next connection; files that do not load keep
// the last good set serving.
func TestTLSFilesRotate(t *testing.T) {
	dir := t.TempDir()
	first, err := xdstest.WriteCertificates(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	firstCA := copyFile(t, first.CA)
	firstClient, firstKey := copyFile(t, first.ClientCert), copyFile(t, first.ClientKey)
	s := startTLSServer(t, TLSFiles{CertFile: first.ServerCert, KeyFile: first.ServerKey, ClientCAFile: first.CA})
	if _, err := fetchClusters(t, s.addr, clientCreds(t, firstCA, firstClient, firstKey)); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	// A broken write (half a rotation) keeps the old files serving.
	if err := os.WriteFile(first.ServerCert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fetchClusters(t, s.addr, clientCreds(t, firstCA, firstClient, firstKey)); err != nil {
		t.Fatalf("a broken certificate file replaced the working one: %v", err)
	}

	// A complete rotation to a new CA: new clients get in, clients of the old CA do not.
	second, err := xdstest.WriteCertificates(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fetchClusters(t, s.addr, clientCreds(t, second.CA, second.ClientCert, second.ClientKey)); err != nil {
		t.Fatalf("after rotation, a client of the new CA: %v", err)
	}
	if _, err := fetchClusters(t, s.addr, clientCreds(t, firstCA, firstClient, firstKey)); err == nil {
		t.Error("after rotation, a client of the old CA was still served")
	}
}

func writeCerts(t *testing.T) xdstest.Files {
	t.Helper()
	f, err := xdstest.WriteCertificates(t.TempDir(), "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	// The certificates must be what they claim, or every test above proves nothing.
	pool, err := LoadCertPool(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("server certificate does not verify for 127.0.0.1: %v", err)
	}
	return f
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.pem")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func copyFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, string(b))
}
