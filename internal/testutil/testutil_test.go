package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeT records how a helper ended a test: Fatal and Skip stop the calling goroutine, as the
// real ones do.
type fakeT struct {
	testing.TB
	mu     sync.Mutex
	failed string
	skip   string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatal(args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeT) Fatalf(format string, args ...any) { f.Fatal(fmt.Sprintf(format, args...)) }
func (f *fakeT) Skip(args ...any) {
	f.mu.Lock()
	f.skip = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// run calls fn with a fakeT on a goroutine of its own and reports how it ended.
func run(fn func(t testing.TB)) (failed, skipped string) {
	f := &fakeT{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed, f.skip
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	n := 0
	Eventually(t, 10*time.Second, "third call", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	m := 0
	Eventually(t, 10*time.Second, "third call", func() bool { m++; return m == 3 })
	if n != 3 || m != 3 {
		t.Fatalf("conditions checked %d and %d times, want 3 each", n, m)
	}
}

func TestEventuallyFailsWithTheLastAnswer(t *testing.T) {
	failed, _ := run(func(t testing.TB) {
		Eventually(t, 50*time.Millisecond, "the door opens", func() error { return errors.New("door locked") })
	})
	if !strings.Contains(failed, "the door opens: not within 50ms: door locked") {
		t.Fatalf("failure %q", failed)
	}
	failed, _ = run(func(t testing.TB) {
		Eventually(t, 50*time.Millisecond, "the flag", func() bool { return false })
	})
	if !strings.Contains(failed, "the flag: not within 50ms") {
		t.Fatalf("failure %q", failed)
	}
}

func TestFreePortsAreFreeAndNeverHandedOutTwice(t *testing.T) {
	seen := map[string]bool{}
	addrs := append(FreeAddrs(t, 50), FreeAddr(t), fmt.Sprintf("127.0.0.1:%d", FreePort(t)))
	for range 50 {
		addrs = append(addrs, FreeAddr(t))
	}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s is not free: %v", a, err)
		}
		_ = l.Close()
	}
}

func TestBufferTakesWritesFromManyGoroutines(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				_, _ = fmt.Fprint(&b, "x")
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := len(b.String()); got != 800 {
		t.Fatalf("%d bytes, want 800", got)
	}
}

func TestMissingFailsUnlessAllowed(t *testing.T) {
	t.Setenv(AllowMissing, "")
	if failed, skipped := run(func(t testing.TB) { Missing(t, "no frobnicator") }); !strings.HasPrefix(failed, "no frobnicator") || skipped != "" {
		t.Errorf("by default: skipped %q, failed %q; want a failure", skipped, failed)
	}
	t.Setenv(AllowMissing, "1")
	if failed, skipped := run(func(t testing.TB) { Missing(t, "no frobnicator") }); skipped != "no frobnicator" || failed != "" {
		t.Errorf("with %s=1: skipped %q, failed %q; want a skip", AllowMissing, skipped, failed)
	}
}

func TestEnvoyHonoursEnvoyBin(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "envoy")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ENVOY_BIN", bin)
	if got := Envoy(t); got != bin {
		t.Errorf("Envoy = %q, want $ENVOY_BIN's %q", got, bin)
	}
	// A $ENVOY_BIN that cannot run fails the test even when missing parts may skip: someone
	// asked for that binary.
	t.Setenv(AllowMissing, "1")
	t.Setenv("ENVOY_BIN", filepath.Join(t.TempDir(), "no-envoy-here"))
	if failed, skipped := run(func(t testing.TB) { Envoy(t) }); !strings.Contains(failed, "no-envoy-here") || skipped != "" {
		t.Errorf("bad ENVOY_BIN: failed %q, skipped %q; want a failure naming it", failed, skipped)
	}
}

// TestOnlyTestsImportThisPackage keeps testutil out of the binaries: only test files and
// test-only helper packages (named …test, like xdstest) may import it.
func TestOnlyTestsImportThisPackage(t *testing.T) {
	const self = "github.com/tollgate-dev/tollgate/internal/testutil"
	cmd := exec.Command("go", "list", "-tags", "e2e,demo", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "github.com/tollgate-dev/tollgate/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] == self || strings.HasSuffix(fields[0], "test") {
			continue
		}
		for _, imp := range fields[1:] {
			if imp == self {
				t.Errorf("%s imports %s outside its tests", fields[0], self)
			}
		}
	}
}
