package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestServeMissingPolicyDoesNotFloodItsLog runs serve with its log in the policy's directory, as
// `tollgate serve -f dir/policy.yaml 2>dir/tollgate.log` does, and removes the policy file. Every
// line serve logs is then an event in the watched directory; when such events re-read the
// missing file, each read logs the warning again and the log feeds itself without end.
func TestServeMissingPolicyDoesNotFloodItsLog(t *testing.T) {
	dir := t.TempDir()
	addrs := testutil.FreeAddrs(t, 3)
	path := filepath.Join(dir, "policy.yaml")
	policy := smallPolicy(t, addrs[2], "x-user-id")
	writePolicyFile(t, path, policy)
	logPath := filepath.Join(dir, "tollgate.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()
	logger, err := newLogger(logFile, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	o := serveOptions{
		policyFile: path, xdsAddr: addrs[0], metricsAddr: addrs[1], extProcAddr: addrs[2],
		debounce: 10 * time.Millisecond,
	}
	runInBackground(t, func(ctx context.Context) error { return serve(ctx, o, logger) })
	testutil.Eventually(t, 15*time.Second, "serve is up", func() error {
		resp, err := http.Get("http://" + addrs[1] + "/healthz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		return nil
	})

	const warning = "policy file is missing"
	warnings := func() int {
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), warning)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the missing file is reported", func() error {
		if warnings() == 0 {
			return fmt.Errorf("no warning yet")
		}
		return nil
	})
	// Other writers in the directory, and time for a feedback loop to show: at a 10ms
	// debounce it would add dozens of lines a second.
	other := filepath.Join(dir, "other.log")
	for i := range 100 {
		if err := os.WriteFile(other, []byte(fmt.Sprint(i)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if n := warnings(); n != 1 {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("%d warnings, want 1; log:\n%s", n, lastBytes(string(b), 2000))
	}

	writePolicyFile(t, path, policy)
	testutil.Eventually(t, 15*time.Second, "the policy's return is noticed", func() error {
		b, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "policy file is readable again") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// lastBytes returns the last n bytes of s.
func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
