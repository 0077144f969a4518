package rls

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/xds"
	"github.com/tollgate-dev/tollgate/xds/xdstest"
)

func TestXDSTLSValidation(t *testing.T) {
	for name, tt := range map[string]struct {
		tls  XDSTLS
		want string
	}{
		"no CA":            {XDSTLS{CertFile: "c", KeyFile: "k"}, "XDSTLS: a CA file is required"},
		"cert without key": {XDSTLS{CAFile: "ca", CertFile: "c"}, "XDSTLS: client certificate and key go together"},
		"key without cert": {XDSTLS{CAFile: "ca", KeyFile: "k"}, "XDSTLS: client certificate and key go together"},
		"server name only": {XDSTLS{ServerName: "x"}, "XDSTLS: a CA file is required"},
	} {
		_, err := Options{XDSTLS: tt.tls}.resolve()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", name, err, tt.want)
		}
	}
	if _, err := (Options{XDSTLS: XDSTLS{CAFile: "ca"}}).resolve(); err != nil {
		t.Errorf("server-side TLS with a CA only: %v", err)
	}
}

func TestBuildSettingsXDSTLS(t *testing.T) {
	certs, err := xdstest.WriteCertificates(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Options{XDSTLS: XDSTLS{CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, ServerName: "xds.internal"}}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	s, err := buildSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc := s.ConfigGrpcXdsTlsConfig
	if !s.ConfigGrpcXdsServerUseTls || tc == nil {
		t.Fatalf("TLS off: UseTls=%v config=%v", s.ConfigGrpcXdsServerUseTls, tc)
	}
	if s.ConfigGrpcXdsServerTlsSAN != "xds.internal" || len(tc.Certificates) != 1 || tc.RootCAs == nil || tc.MinVersion != 0x0304 {
		t.Errorf("settings: SAN %q, %d client certificates, roots set %v, min version %x",
			s.ConfigGrpcXdsServerTlsSAN, len(tc.Certificates), tc.RootCAs != nil, tc.MinVersion)
	}

	cfg.XDSTLS.CAFile = certs.ClientKey // not a certificate
	if _, err := buildSettings(cfg); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a key given as the CA: %v", err)
	}
	cfg.XDSTLS.CAFile, cfg.XDSTLS.KeyFile = certs.CA, certs.ServerKey // key of another certificate
	if _, err := buildSettings(cfg); err == nil {
		t.Error("a mismatched key pair was accepted")
	}
}

// The unmodified upstream service loads its limits from an ADS server that requires mutual
// TLS with TLS 1.3 only, configured exactly as tollgate serve configures its own.
func TestServiceOverMutualTLS(t *testing.T) {
	certs, err := xdstest.WriteCertificates(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ads := startTLSADS(t, xds.TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, ClientCAFile: certs.CA})
	ads.publishQwen3Limit(t, 50)

	redisAddr := startRedis(t)
	addrs := testutil.FreeAddrs(t, 3)
	opts := Options{
		GRPCAddr: addrs[0], DebugAddr: addrs[1], HTTPAddr: addrs[2],
		XDSAddr:  ads.addr,
		RedisURL: redisAddr,
		XDSTLS:   XDSTLS{CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey},
	}
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan error, 1)
	go func() { finished <- Run(ctx, logger, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-finished:
			_ = err // the test is done; this only waits for Run to return
		case <-time.After(2 * stopTimeout):
			t.Error("Run did not return after cancel")
		}
	})

	st := &stack{opts: opts, ads: ads, conn: dialService(t, opts.GRPCAddr), logs: logs}
	st.waitForLimit(t, "probe", 50)
	st.waitForConfigLoadLogged(t)
}

// startTLSADS is startADS behind TLS.
func startTLSADS(tb testing.TB, files xds.TLSFiles) *testADS {
	tb.Helper()
	cfg, err := files.ServerConfig(nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	snapshots := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, snapshots, nil))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			tb.Errorf("ADS server: %v", err)
		}
	}()
	tb.Cleanup(func() {
		cancel()
		g.Stop()
	})
	return &testADS{addr: l.Addr().String(), cache: snapshots, nodeID: envoy.DefaultRateLimitNode}
}
