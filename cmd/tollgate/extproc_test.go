package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// smallPolicy is a valid policy whose ext_proc endpoint is extProcAddr and whose users are
// named by identityHeader.
func smallPolicy(t *testing.T, extProcAddr, identityHeader string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(extProcAddr)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
listener: {port: 18080}
extProc: {port: %s}
identity: {header: %s}
backends:
  - {name: sim, url: "http://127.0.0.1:8000"}
models:
  - {name: qwen3, backend: sim}
`, port, identityHeader)
}

// writePolicyFile writes content the way editors save: to a temporary file, then renamed.
func writePolicyFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// runInBackground runs fn until the test ends and fails the test if fn returns an error.
func runInBackground(t *testing.T, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("did not stop within 10s")
		}
	})
}

func getStatus(url string, into any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return json.Unmarshal(b, into)
}

// controlPlaneVersion is the Envoy version serve would publish for a policy.
func controlPlaneVersion(t *testing.T, path string) string {
	t.Helper()
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policies.Parse(path, content, os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	out, err := translate.Translate(p)
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := xds.Versions(resources(out))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// askIdentity sends request headers carrying only x-user-id and reports whether the server
// refused them with 401 (true) or went on with the request (false).
func askIdentity(t *testing.T, addr string) (rejected bool, err error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		return false, err
	}
	headers := &corev3.HeaderMap{}
	for _, kv := range [][2]string{{":method", "POST"}, {":path", "/v1/chat/completions"}, {":authority", "gw"},
		{"content-type", "application/json"}, {"content-length", "20"}, {"x-user-id", "alice"}} {
		headers.Headers = append(headers.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	err = stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headers},
	}})
	if err != nil {
		return false, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return false, err
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		return ir.GetStatus().GetCode() == 401, nil
	}
	return false, nil
}

// The standalone ext_proc server follows the policy file on its own: an edit reaches its
// request handling, an invalid edit is refused while the last good policy keeps serving, and
// its status reports the same version the control plane computes for the same file.
func TestStandaloneExtProcFollowsThePolicy(t *testing.T) {
	addrs := testutil.FreeAddrs(t, 2)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicyFile(t, path, smallPolicy(t, addrs[0], "x-user-id"))
	o := extProcOptions{policyFile: path, listenAddr: addrs[0], metricsAddr: addrs[1], debounce: 10 * time.Millisecond}
	runInBackground(t, func(ctx context.Context) error {
		return runExtProc(ctx, o, slog.New(slog.DiscardHandler))
	})

	var st extProcStatus
	statusURL := "http://" + addrs[1] + "/status"
	testutil.Eventually(t, 15*time.Second, "status", func() error { return getStatus(statusURL, &st) })
	if want := controlPlaneVersion(t, path); st.Reload.EnvoyVersion != want || st.Reload.LastResult != "ok" {
		t.Fatalf("status %+v, want version %s (the control plane's) and ok", st.Reload, want)
	}
	if rejected, err := askIdentity(t, addrs[0]); err != nil || rejected {
		t.Fatalf("x-user-id under a policy naming it: rejected=%v err=%v", rejected, err)
	}

	// Users are now named by another header: alice's request lacks it.
	writePolicyFile(t, path, smallPolicy(t, addrs[0], "x-team-user"))
	testutil.Eventually(t, 15*time.Second, "edited identity header applies", func() error {
		rejected, err := askIdentity(t, addrs[0])
		if err != nil {
			return err
		}
		if !rejected {
			return fmt.Errorf("not rejected yet")
		}
		return nil
	})
	edited := controlPlaneVersion(t, path)

	writePolicyFile(t, path, "models: [\n")
	testutil.Eventually(t, 15*time.Second, "broken policy reported", func() error {
		if err := getStatus(statusURL, &st); err != nil {
			return err
		}
		if st.Reload.LastResult != "failed" {
			return fmt.Errorf("last result %q", st.Reload.LastResult)
		}
		return nil
	})
	if st.Reload.EnvoyVersion != edited || len(st.Reload.LastErrors) == 0 {
		t.Errorf("after a broken edit: version %s (want the last good %s), errors %v", st.Reload.EnvoyVersion, edited, st.Reload.LastErrors)
	}
	if rejected, err := askIdentity(t, addrs[0]); err != nil || !rejected {
		t.Errorf("the broken edit changed request handling: rejected=%v err=%v", rejected, err)
	}
}

func TestStandaloneExtProcRefusesAnInvalidPolicy(t *testing.T) {
	addrs := testutil.FreeAddrs(t, 2)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicyFile(t, path, "backends: []\nmodels: [{name: qwen3, backend: nowhere}]\n")
	var stderr strings.Builder
	code := run([]string{"extproc", "-f", path, "--listen", addrs[0], "--metrics", addrs[1]}, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "nowhere") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
	}
}

// serve --extproc "" runs no ext_proc server: requests are processed elsewhere.
func TestServeWithoutExtProc(t *testing.T) {
	addrs := testutil.FreeAddrs(t, 3)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicyFile(t, path, smallPolicy(t, addrs[2], "x-user-id"))
	o := serveOptions{policyFile: path, xdsAddr: addrs[0], metricsAddr: addrs[1], debounce: 10 * time.Millisecond}
	runInBackground(t, func(ctx context.Context) error {
		return serve(ctx, o, slog.New(slog.DiscardHandler))
	})
	var st serveStatus
	testutil.Eventually(t, 15*time.Second, "status", func() error { return getStatus("http://"+addrs[1]+"/status", &st) })
	if st.Reload.LastResult != "ok" || st.XDS.EnvoyVersion == "" {
		t.Fatalf("status %+v", st)
	}
	if c, err := net.DialTimeout("tcp", addrs[2], time.Second); err == nil {
		_ = c.Close()
		t.Errorf("something listens on the policy's ext_proc address %s", addrs[2])
	}
}

// The ext_proc server must never refuse a stream that Envoy's in-flight bound admitted.
func TestExtProcStreamBoundCoversThePolicyCeiling(t *testing.T) {
	if extproc.MaxStreamsPerConnection < policies.MaxConcurrentRequestsCeiling {
		t.Fatalf("ext_proc server takes %d streams per connection, a policy may admit %d in flight",
			extproc.MaxStreamsPerConnection, policies.MaxConcurrentRequestsCeiling)
	}
}
