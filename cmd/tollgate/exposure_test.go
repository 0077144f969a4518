package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/xds"
	"github.com/tollgate-dev/tollgate/xds/xdstest"
)

// flagDefaults runs `tollgate <cmd> -h` and returns each flag's default as printed.
func flagDefaults(t *testing.T, cmd string) map[string]string {
	t.Helper()
	var out strings.Builder
	if code := run([]string{cmd, "-h"}, io.Discard, &out); code != 0 {
		t.Fatalf("tollgate %s -h: exit %d\n%s", cmd, code, out.String())
	}
	defaults := map[string]string{}
	var name string
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "  -"); ok {
			name, _, _ = strings.Cut(rest, " ")
			defaults[name] = ""
			continue
		}
		if i := strings.LastIndex(line, `(default "`); i >= 0 && name != "" {
			defaults[name] = strings.TrimSuffix(line[i+len(`(default "`):], `")`)
		}
	}
	return defaults
}

// Everything tollgate starts listens on loopback unless told otherwise, and every address it
// dials by default is local: the control plane, ext_proc, metrics, the ratelimit service and
// Envoy's admin interface are not for the network. Every flag whose default is a host:port is
// checked, so a new flag with a wildcard default fails here.
func TestListenDefaultsAreLoopback(t *testing.T) {
	t.Setenv("REDIS_URL", "") // ratelimit's --redis default comes from it
	required := map[string][]string{
		"serve":     {"xds", "extproc", "metrics"},
		"extproc":   {"listen", "metrics"},
		"ratelimit": {"grpc", "http", "debug", "xds", "redis"},
		"bootstrap": {"admin", "xds"},
		"status":    {"addr"},
	}
	commands := []string{"serve", "extproc", "ratelimit", "bootstrap", "status", "quota", "run"}
	for _, cmd := range commands {
		var stderr strings.Builder
		if code := run([]string{cmd, "-h"}, io.Discard, &stderr); strings.Contains(stderr.String(), "unknown command") {
			if required[cmd] != nil {
				t.Errorf("tollgate %s: unknown command (exit %d)", cmd, code)
			}
			continue
		}
		defaults := flagDefaults(t, cmd)
		for _, name := range required[cmd] {
			if defaults[name] == "" {
				t.Errorf("tollgate %s --%s: no address default found", cmd, name)
			}
		}
		for name, value := range defaults {
			host, port, err := net.SplitHostPort(value)
			if err != nil {
				continue
			}
			if _, err := strconv.Atoi(port); err != nil {
				continue
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				t.Errorf("tollgate %s --%s defaults to %q, not a loopback address", cmd, name, value)
			}
		}
	}

	// The data-plane listener and the endpoints Envoy dials default to loopback too.
	p, err := policies.Parse("policy.yaml", []byte("backends: [{name: sim, url: \"http://127.0.0.1:8000\"}]\nmodels: [{name: qwen3, backend: sim}]\n"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	for name, host := range map[string]string{
		"listener.address": p.Listener.Address, "extProc.address": p.ExtProc.Address, "rateLimit.address": p.RateLimit.Address,
	} {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			t.Errorf("policy %s defaults to %q", name, host)
		}
	}
}

func TestServeRefusesHalfConfiguredTLS(t *testing.T) {
	for name, args := range map[string][]string{
		"cert without key":  {"--xds-tls-cert", "server.pem"},
		"key without cert":  {"--xds-tls-key", "server-key.pem"},
		"client CA alone":   {"--xds-tls-client-ca", "ca.pem"},
		"CA and cert alone": {"--xds-tls-client-ca", "ca.pem", "--xds-tls-cert", "server.pem"},
	} {
		var stderr strings.Builder
		code := run(append([]string{"serve", "-f", "policy.yaml"}, args...), io.Discard, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "--xds-tls") {
			t.Errorf("%s: exit %d, stderr %q", name, code, stderr.String())
		}
	}
}

func TestBootstrapAndRatelimitRefuseHalfConfiguredTLS(t *testing.T) {
	for name, args := range map[string][]string{
		"bootstrap without CA":       {"bootstrap", "--xds-tls-cert", "c.pem", "--xds-tls-key", "k.pem"},
		"bootstrap cert without key": {"bootstrap", "--xds-tls-ca", "ca.pem", "--xds-tls-cert", "c.pem"},
		"ratelimit without CA":       {"ratelimit", "--xds-tls-cert", "c.pem", "--xds-tls-key", "k.pem"},
		"ratelimit key without cert": {"ratelimit", "--xds-tls-ca", "ca.pem", "--xds-tls-key", "k.pem"},
	} {
		var stderr strings.Builder
		if code := run(args, io.Discard, &stderr); code == 0 || !strings.Contains(strings.ToLower(stderr.String()), "tls") {
			t.Errorf("%s: exit %d, stderr %q", name, code, stderr.String())
		}
	}
	var stdout strings.Builder
	if code := run([]string{"bootstrap", "--xds-tls-ca", "/etc/tollgate/ca.pem", "--xds-tls-cert", "/etc/envoy/c.pem",
		"--xds-tls-key", "/etc/envoy/k.pem"}, &stdout, io.Discard); code != 0 {
		t.Fatalf("bootstrap with TLS: exit %d", code)
	}
	for _, want := range []string{"envoy.transport_sockets.tls", "/etc/tollgate/ca.pem", "/etc/envoy/c.pem", "TLSv1_3", "IP_ADDRESS"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("bootstrap lacks %q:\n%s", want, stdout.String())
		}
	}
}

// serve with the three TLS flags serves ADS to clients of its CA only.
func TestServeXDSOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	certs, err := xdstest.WriteCertificates(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := xdstest.WriteCertificates(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addrs := testutil.FreeAddrs(t, 3)
	path := filepath.Join(dir, "policy.yaml")
	writePolicyFile(t, path, smallPolicy(t, addrs[2], "x-user-id"))
	o := serveOptions{
		policyFile: path, xdsAddr: addrs[0], metricsAddr: addrs[1], extProcAddr: addrs[2], debounce: 10 * time.Millisecond,
		xdsTLS: xds.TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, ClientCAFile: certs.CA},
	}
	runInBackground(t, func(ctx context.Context) error {
		return serve(ctx, o, slog.New(slog.DiscardHandler))
	})
	want := controlPlaneVersion(t, path)

	var got string
	testutil.Eventually(t, 15*time.Second, "a client of the CA gets the snapshot", func() error {
		var err error
		got, err = fetchCDSVersion(t, addrs[0], certs.CA, certs.ClientCert, certs.ClientKey)
		return err
	})
	if got != want {
		t.Errorf("version %q, want %q", got, want)
	}
	if v, err := fetchCDSVersion(t, addrs[0], certs.CA, "", ""); err == nil {
		t.Errorf("a client without a certificate got version %q", v)
	}
	if v, err := fetchCDSVersion(t, addrs[0], certs.CA, other.ClientCert, other.ClientKey); err == nil {
		t.Errorf("a client of another CA got version %q", v)
	}
}

func fetchCDSVersion(t *testing.T, addr, caFile, certFile, keyFile string) (string, error) {
	t.Helper()
	pool, err := xds.LoadCertPool(caFile)
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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return "", err
	}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{
		Node:    &corev3.Node{Id: envoy.DefaultEnvoyNodeID, Cluster: envoy.NodeCluster},
		TypeUrl: resource.ClusterType,
	}); err != nil {
		return "", err
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", err
	}
	return resp.GetVersionInfo(), nil
}
