//go:build e2e

// Package e2e runs tollgate end to end with the real parts users run: a real Envoy, the
// tollgate binary, the upstream ratelimit service with a real Redis, and llmsim as the LLM.
// Its files build only with the tag e2e (`task test-e2e`); the demo check (demo_test.go) only
// with the tag demo (`task test-demo`). `task test` runs both.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// binaries built once per test run.
type binaries struct {
	tollgate, llmsim string
}

var bins binaries

func TestMain(m *testing.M) {
	code, err := buildAndRun(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildAndRun(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "tollgate-e2e-bin")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	root, err := repoRoot()
	if err != nil {
		return 0, err
	}
	for _, b := range []struct{ name, pkg string }{{"tollgate", "./cmd/tollgate"}, {"llmsim", "./cmd/llmsim"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
		}
	}
	bins = binaries{
		tollgate: filepath.Join(dir, "tollgate"),
		llmsim:   filepath.Join(dir, "llmsim"),
	}
	return m.Run(), nil
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// process is a child process on launch's supervisor, its output in a log file shown when the
// test fails. It stays in the test's process group and stops on SIGINT, as at a terminal.
type process struct {
	name  string
	port  int // the port it listens on, when a test needs to start it again there
	child *launch.Child
	done  <-chan struct{} // closed when the process has exited
	log   string
}

func start(t testing.TB, name string, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The child has its own copy of the file once started.
	defer func() { _ = f.Close() }()
	child, err := launch.StartChild(launch.ChildOptions{
		Path: bin, Args: args,
		Stdout: f, Stderr: f,
		StopSignal: syscall.SIGINT,
		StopGrace:  5 * time.Second,
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, child: child, done: child.Done(), log: logPath}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s log (last 8 KiB) ----\n%s", name, tail(b, 8<<10))
		}
	})
	return p
}

func (p *process) stop() { _ = p.child.Stop() }

func (p *process) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// response is an HTTP answer read in full.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("response body is not JSON (%v): %s", err, r.body)
	}
	return v
}

var client = &http.Client{Timeout: 30 * time.Second}

func do(method, url string, header map[string]string, body string) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if body != "" {
		req.Header.Set("content-type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

func mustDo(t testing.TB, method, url string, header map[string]string, body string) response {
	t.Helper()
	r, err := do(method, url, header, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func chatBody(model string) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello from Alice!"}]}`, model)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	// Write then rename, as editors do; the watcher must follow the new inode.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func getJSON(url string, into any) error {
	r, err := do(http.MethodGet, url, nil, "")
	if err != nil {
		return err
	}
	if r.status != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, r.status, r.body)
	}
	return json.Unmarshal(r.body, into)
}

// execOutput runs a command to completion and returns its stdout; stderr goes into the error.
func execOutput(bin string, args ...string) (string, error) {
	var stderr strings.Builder
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}
