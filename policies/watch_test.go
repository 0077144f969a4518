package policies

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// waitTimeout is generous: it only bounds a failing test, a passing one never waits for it.
const waitTimeout = 10 * time.Second

// testDebounce is long enough that one os.WriteFile (truncate, then write) is never split into
// two reads, and short enough to keep the tests quick.
const testDebounce = 50 * time.Millisecond

// watchRun is a Watcher running in the background with its deliveries and reads observable.
type watchRun struct {
	w          *Watcher
	deliveries chan []byte
	reads      chan readResult
}

// readResult is one read attempt, or an event the watcher ignored without reading (ignored
// is then set): either way the event before it has been handled.
type readResult struct {
	delivered bool
	err       error
	ignored   string // the ignored event's path
}

// startWatch runs a Watcher on path until the test ends.
func startWatch(t *testing.T, path string, debounce time.Duration) *watchRun {
	t.Helper()
	return startWatcher(t, NewWatcher(path, debounce, nil))
}

// startWatcher runs w until the test ends.
func startWatcher(t *testing.T, w *Watcher) *watchRun {
	t.Helper()
	r := &watchRun{
		w:          w,
		deliveries: make(chan []byte, 100),
		reads:      make(chan readResult, 4096),
	}
	r.w.afterRead = func(delivered bool, err error) { r.reads <- readResult{delivered: delivered, err: err} }
	r.w.ignored = func(ev fsnotify.Event) {
		// Never block the watcher: tests that flood the directory do not read these.
		select {
		case r.reads <- readResult{ignored: ev.Name}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.w.Run(ctx, func(content []byte) { r.deliveries <- bytes.Clone(content) })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return after cancel")
		}
	})
	return r
}

// next waits for the next delivery. It also consumes the read results up to the one that
// made this delivery, so later read-based waits see only reads that happen afterwards.
func (r *watchRun) next(t *testing.T) string {
	t.Helper()
	var got string
	select {
	case b := <-r.deliveries:
		got = string(b)
	case <-time.After(waitTimeout):
		t.Fatal("no delivery")
	}
	if r.reads != nil {
		for !r.nextRead(t).delivered {
		}
	}
	return got
}

// nextRead waits for the next read attempt, delivered or not.
func (r *watchRun) nextRead(t *testing.T) readResult {
	t.Helper()
	select {
	case res := <-r.reads:
		return res
	case <-time.After(waitTimeout):
		t.Fatal("no read")
		return readResult{}
	}
}

// skipUndelivered waits until a read that did not deliver, proving the latest event was handled
// and skipped, and fails on any delivery in the meantime.
func (r *watchRun) skipUndelivered(t *testing.T) {
	t.Helper()
	for {
		res := r.nextRead(t)
		if !res.delivered {
			return
		}
		t.Fatalf("unexpected delivery: %q", <-r.deliveries)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWatchDeliversInitialContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	if got := r.next(t); got != "v1" {
		t.Errorf("initial delivery = %q, want v1", got)
	}
}

func TestWatchInPlaceWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	writeFile(t, path, "v2")
	if got := r.next(t); got != "v2" {
		t.Errorf("delivery = %q, want v2", got)
	}
}

func TestWatchAtomicRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	tmp := filepath.Join(dir, ".policy.yaml.tmp")
	writeFile(t, tmp, "v2")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); got != "v2" {
		t.Errorf("delivery = %q, want v2", got)
	}
}

func TestWatchCoalescesRapidWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v0")
	// The debounce is long compared to the write loop below, so all writes fall in one window.
	r := startWatch(t, path, 300*time.Millisecond)
	r.next(t)
	for i := 1; i <= 20; i++ {
		writeFile(t, path, "v"+string(rune('a'+i)))
	}
	final := "v" + string(rune('a'+20))
	if got := r.next(t); got != final {
		t.Errorf("first delivery after the burst = %q, want only the final %q", got, final)
	}
	// The read that delivered the final content handled the whole burst.
	select {
	case res := <-r.reads:
		t.Errorf("a second read followed the burst (delivered=%v)", res.delivered)
	default:
	}
}

func TestWatchSkipsUnchangedContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "same")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	writeFile(t, path, "same")
	r.skipUndelivered(t)
	writeFile(t, path, "changed")
	if got := r.next(t); got != "changed" {
		t.Errorf("delivery = %q, want changed (an unchanged write was delivered)", got)
	}
}

func TestWatchReloadForcesDelivery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	r.w.Reload()
	if got := r.next(t); got != "v1" {
		t.Errorf("Reload delivered %q, want the unchanged v1", got)
	}
}

func TestWatchDeleteThenRecreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for res := r.nextRead(t); res.err == nil; res = r.nextRead(t) {
	}
	writeFile(t, path, "v2")
	if got := r.next(t); got != "v2" {
		t.Errorf("delivery after recreate = %q, want v2", got)
	}
}

func TestWatchFileMissingAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	r := startWatch(t, path, testDebounce)
	if res := r.nextRead(t); res.err == nil || res.delivered {
		t.Fatalf("first read of a missing file = %+v, want an error", res)
	}
	writeFile(t, path, "v1")
	if got := r.next(t); got != "v1" {
		t.Errorf("delivery = %q, want v1", got)
	}
}

func TestWatchSymlinkFlip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, filepath.Join(dir, "a.yaml"), "a")
	writeFile(t, filepath.Join(dir, "b.yaml"), "b")
	if err := os.Symlink("a.yaml", path); err != nil {
		t.Fatal(err)
	}
	r := startWatch(t, path, testDebounce)
	if got := r.next(t); got != "a" {
		t.Fatalf("initial = %q, want a", got)
	}
	tmpLink := filepath.Join(dir, ".policy.yaml.new")
	if err := os.Symlink("b.yaml", tmpLink); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmpLink, path); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); got != "b" {
		t.Errorf("after flip = %q, want b", got)
	}
}

func TestWatchSymlinkTargetInOtherDirectory(t *testing.T) {
	linkDir, targetDir := t.TempDir(), t.TempDir()
	target := filepath.Join(targetDir, "real.yaml")
	writeFile(t, target, "v1")
	path := filepath.Join(linkDir, "policy.yaml")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	r := startWatch(t, path, testDebounce)
	r.next(t)
	writeFile(t, target, "v2")
	if got := r.next(t); got != "v2" {
		t.Errorf("edit of the symlink target delivered %q, want v2", got)
	}
}

func TestWatchMissingDirectoryFails(t *testing.T) {
	w := NewWatcher(filepath.Join(t.TempDir(), "nope", "policy.yaml"), time.Millisecond, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Run(ctx, func([]byte) { t.Error("delivered without a directory") }); err == nil {
		t.Error("Run succeeded without a directory to watch")
	}
}

func TestWatchPollsWithoutEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "v1")
	r := &watchRun{w: NewWatcher(path, time.Hour, nil), deliveries: make(chan []byte, 10)}
	// With an hour-long debounce only the poll can pick the change up in time.
	r.w.pollInterval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.w.Run(ctx, func(b []byte) { r.deliveries <- bytes.Clone(b) })
	}()
	defer func() { cancel(); <-done }()
	r.next(t)
	// Replace atomically: a poll can land at any moment, even between truncate and write.
	tmp := path + ".tmp"
	writeFile(t, tmp, "v2")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); got != "v2" {
		t.Errorf("poll delivered %q, want v2", got)
	}
}

func loggingWatcher(path string, debounce time.Duration) (*Watcher, *testutil.Buffer) {
	logs := &testutil.Buffer{}
	return NewWatcher(path, debounce, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))), logs
}

const missingWarning = "policy file is missing"

// awaitIgnored waits until the watcher ignored an event on path, and fails on any read before:
// events arrive in order, so every earlier event caused no read either.
func (r *watchRun) awaitIgnored(t *testing.T, path string) {
	t.Helper()
	for {
		res := r.nextRead(t)
		if res.ignored == "" {
			t.Fatalf("a read (delivered=%v, err=%v) while waiting for the event on %s to be ignored", res.delivered, res.err, path)
		}
		if res.ignored == path {
			return
		}
	}
}

// TestWatchMissingFileIgnoresOtherFiles: with the policy file gone, a file written over and over
// next to it (tollgate's own log, say) causes no reads and no more warnings; the policy's
// return is still seen at once.
func TestWatchMissingFileIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	w, logs := loggingWatcher(path, time.Millisecond)
	r := startWatcher(t, w)
	if res := r.nextRead(t); res.err == nil {
		t.Fatalf("first read of a missing file = %+v, want an error", res)
	}
	other := filepath.Join(dir, "tollgate.log")
	f, err := os.OpenFile(other, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for i := range 200 {
		if _, err := fmt.Fprintf(f, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
	}
	marker := filepath.Join(dir, "marker")
	writeFile(t, marker, "x")
	r.awaitIgnored(t, marker)
	if n := strings.Count(logs.String(), missingWarning); n != 1 {
		t.Errorf("%d missing-file warnings, want 1:\n%s", n, logs)
	}

	writeFile(t, path, "v1")
	if got := r.next(t); got != "v1" {
		t.Errorf("delivery = %q, want v1", got)
	}
	if n := strings.Count(logs.String(), missingWarning); n != 1 {
		t.Errorf("%d missing-file warnings, want 1:\n%s", n, logs)
	}
}

// TestWatchWarnsOncePerDisappearance: the periodic read of a missing file does not repeat the
// warning; a file that comes back and goes missing again is warned about again.
func TestWatchWarnsOncePerDisappearance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	w, logs := loggingWatcher(path, time.Millisecond)
	w.pollInterval = 5 * time.Millisecond
	r := startWatcher(t, w)
	failedReads := func(n int) {
		t.Helper()
		for n > 0 {
			if res := r.nextRead(t); res.err != nil {
				n--
			}
		}
	}
	failedReads(5)
	if n := strings.Count(logs.String(), missingWarning); n != 1 {
		t.Fatalf("%d missing-file warnings after 5 reads, want 1:\n%s", n, logs)
	}

	writeFile(t, path, "v1")
	if got := r.next(t); got != "v1" {
		t.Fatalf("delivery = %q, want v1", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	failedReads(5)
	if n := strings.Count(logs.String(), missingWarning); n != 2 {
		t.Errorf("%d missing-file warnings after the second disappearance, want 2:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), "policy file is readable again"); n != 1 {
		t.Errorf("%d notices of the file's return, want 1:\n%s", n, logs)
	}
}

// TestWatchIgnoresOtherFiles: writes to other files in the policy's directory cause no read.
func TestWatchIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	writeFile(t, path, "v1")
	r := startWatch(t, path, testDebounce)
	r.next(t)
	for i := range 20 {
		writeFile(t, filepath.Join(dir, "other.log"), fmt.Sprint(i))
	}
	marker := filepath.Join(dir, "marker")
	writeFile(t, marker, "x")
	r.awaitIgnored(t, marker)
	writeFile(t, path, "v2")
	if got := r.next(t); got != "v2" {
		t.Errorf("delivery = %q, want v2", got)
	}
}

// TestWatchKubernetesDataSwap: a ConfigMap volume links policy.yaml to ..data/policy.yaml and
// ..data to a timestamped directory; an update writes a new directory and renames a new ..data
// symlink over the old one. Only the ..data rename names a path the policy depends on.
func TestWatchKubernetesDataSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), content)
	}
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	version("..2024_01_01", "v1")
	link("..2024_01_01", "..data")
	link("..data/policy.yaml", "policy.yaml")
	r := startWatch(t, filepath.Join(dir, "policy.yaml"), testDebounce)
	if got := r.next(t); got != "v1" {
		t.Fatalf("initial = %q, want v1", got)
	}

	version("..2024_01_02", "v2")
	link("..2024_01_02", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2024_01_01")); err != nil {
		t.Fatal(err)
	}
	if got := r.next(t); got != "v2" {
		t.Errorf("after the swap = %q, want v2", got)
	}
}
