package bootstrap

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/xds/xdstest"
)

// Nothing in the default bootstrap listens beyond this machine: the admin interface can stop
// Envoy and dump its configuration.
func TestDefaultsAreLoopback(t *testing.T) {
	b, err := Build(Options{})
	if err != nil {
		t.Fatal(err)
	}
	admin := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress()
	if ip := net.ParseIP(admin); ip == nil || !ip.IsLoopback() {
		t.Errorf("admin binds %q, want a loopback address", admin)
	}
	xdsCluster := b.GetStaticResources().GetClusters()[0]
	endpoint := xdsCluster.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	if host := endpoint.GetAddress().GetSocketAddress().GetAddress(); host != "127.0.0.1" {
		t.Errorf("xDS cluster dials %q, want 127.0.0.1", host)
	}
	if xdsCluster.GetTransportSocket() != nil {
		t.Error("a transport socket without TLS options")
	}
}

func TestXDSTLS(t *testing.T) {
	tests := []struct {
		name       string
		xds        string
		tls        TLS
		wantSNI    string
		wantSAN    string
		wantSANTyp tlsv3.SubjectAltNameMatcher_SanType
		clientCert bool
	}{
		{"mutual TLS to an IP", "127.0.0.1:18000", TLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"},
			"", "127.0.0.1", tlsv3.SubjectAltNameMatcher_IP_ADDRESS, true},
		{"server TLS to a host name", "tollgate.internal:18000", TLS{CAFile: "/ca.pem"},
			"tollgate.internal", "tollgate.internal", tlsv3.SubjectAltNameMatcher_DNS, false},
		{"explicit server name", "10.0.0.7:18000", TLS{CAFile: "/ca.pem", ServerName: "xds.example"},
			"xds.example", "xds.example", tlsv3.SubjectAltNameMatcher_DNS, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Build(Options{XDSAddress: tt.xds, XDSTLS: tt.tls})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			ts := b.GetStaticResources().GetClusters()[0].GetTransportSocket()
			if ts.GetName() != "envoy.transport_sockets.tls" {
				t.Fatalf("transport socket %q", ts.GetName())
			}
			var up tlsv3.UpstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
				t.Fatal(err)
			}
			if up.GetSni() != tt.wantSNI {
				t.Errorf("SNI %q, want %q", up.GetSni(), tt.wantSNI)
			}
			common := up.GetCommonTlsContext()
			if p := common.GetTlsParams(); p.GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 ||
				p.GetTlsMaximumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
				t.Errorf("TLS versions %v", p)
			}
			if strings.Join(common.GetAlpnProtocols(), ",") != "h2" {
				t.Errorf("ALPN %v, want h2", common.GetAlpnProtocols())
			}
			vc := common.GetValidationContext()
			if vc.GetTrustedCa().GetFilename() != "/ca.pem" {
				t.Errorf("trusted CA %v", vc.GetTrustedCa())
			}
			sans := vc.GetMatchTypedSubjectAltNames()
			if len(sans) != 1 || sans[0].GetSanType() != tt.wantSANTyp || sans[0].GetMatcher().GetExact() != tt.wantSAN {
				t.Errorf("SAN matchers %v, want %s %q", sans, tt.wantSANTyp, tt.wantSAN)
			}
			if got := len(common.GetTlsCertificates()) == 1; got != tt.clientCert {
				t.Errorf("client certificate present %v, want %v", got, tt.clientCert)
			}
		})
	}
}

func TestXDSTLSHalfConfigured(t *testing.T) {
	for name, tls := range map[string]TLS{
		"no CA":            {CertFile: "c", KeyFile: "k"},
		"cert without key": {CAFile: "ca", CertFile: "c"},
		"key without cert": {CAFile: "ca", KeyFile: "k"},
		"server name only": {ServerName: "x"},
	} {
		if _, err := YAML(Options{XDSTLS: tls}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The real Envoy accepts the rendered bootstrap, TLS files included.
func TestEnvoyValidatesTLSBootstrap(t *testing.T) {
	bin := testutil.Envoy(t)
	dir := t.TempDir()
	certs, err := xdstest.WriteCertificates(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	y, err := YAML(Options{XDSTLS: TLS{CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(path, y, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--mode", "validate", "-c", path, "--disable-hot-restart").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate: %v\n%s\n%s", err, out, y)
	}
	if !strings.Contains(string(out), "OK") {
		t.Errorf("envoy output: %s", out)
	}

	// A missing CA file is caught by Envoy, which shows the validation really loads the files.
	y, err = YAML(Options{XDSTLS: TLS{CAFile: filepath.Join(dir, "missing.pem")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, y, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "--mode", "validate", "-c", path, "--disable-hot-restart").CombinedOutput(); err == nil {
		t.Errorf("envoy accepted a bootstrap naming a missing CA file:\n%s", out)
	}
}
