package policies

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// defaultPollInterval is how often Run re-reads the file regardless of events. fsnotify is not
// expected to miss events, but a watch silently lost (the directory deleted and recreated, an
// overflowing queue, a network file system) would otherwise freeze the policy forever.
const defaultPollInterval = 15 * time.Second

// maxDebounceWaits bounds how long a stream of events can postpone a read: at most this many
// debounce periods after the first event. Other files in the same directory (logs, editor swap
// files) also produce events, and they must not be able to starve reloads.
const maxDebounceWaits = 10

// Watcher calls onChange with a file's content whenever it changes: after edits settle for
// debounce, and only when the bytes differ from the last delivered ones. It watches the parent
// directory, because editors and mv replace the file rather than write it; a symlink flip counts
// too. Run delivers the current content once at start, Reload forces a delivery even if nothing
// changed (for SIGHUP), and Run blocks until its context ends.
//
// Any event in the directory leads to a read, and the content comparison decides; this is what
// makes renames, symlink flips and Kubernetes ConfigMap updates (which swap a "..data" symlink)
// work without special cases. A Watcher runs one Run at a time.
type Watcher struct {
	path         string
	debounce     time.Duration
	pollInterval time.Duration
	logger       *slog.Logger
	reload       chan struct{}
	// afterRead, when set, observes every read attempt; tests use it to know that an event
	// has been fully handled without sleeping.
	afterRead func(delivered bool, err error)
}

// NewWatcher prepares a watcher of the file at path. A nil logger discards logs.
func NewWatcher(path string, debounce time.Duration, logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{
		path:         path,
		debounce:     max(debounce, 0),
		pollInterval: defaultPollInterval,
		logger:       logger,
		reload:       make(chan struct{}, 1),
	}
}

// Reload asks Run to read the file and deliver it even if it has not changed. It never blocks;
// requests made while one is pending merge into it.
func (w *Watcher) Reload() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

// Run watches until ctx ends and then returns nil. It returns an error only when watching cannot
// start (for example, the parent directory does not exist). onChange runs on Run's goroutine.
func (w *Watcher) Run(ctx context.Context, onChange func(content []byte)) error {
	path, err := filepath.Abs(w.path)
	if err != nil {
		return fmt.Errorf("watch policy %s: %w", w.path, err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy %s: %w", w.path, err)
	}
	defer fsw.Close()
	dir := filepath.Dir(path)
	if err := fsw.Add(dir); err != nil {
		return fmt.Errorf("watch directory %s: %w", dir, err)
	}

	s := &watchState{w: w, path: path, dir: dir, fsw: fsw, onChange: onChange}
	s.read(true)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	poll := time.NewTicker(w.pollInterval)
	defer poll.Stop()
	var pendingSince time.Time // zero when no read is scheduled

	schedule := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
		}
		deadline := pendingSince.Add(maxDebounceWaits * w.debounce)
		timer.Reset(min(w.debounce, max(deadline.Sub(now), 0)))
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fsw.Events:
			if !ok {
				return errors.New("policy file watcher closed")
			}
			w.logger.Debug("policy directory event", "event", ev.String())
			schedule()
		case err, ok := <-fsw.Errors:
			if !ok {
				return errors.New("policy file watcher closed")
			}
			// An overflow means events were dropped; reading again is always safe.
			w.logger.Warn("policy file watcher error; re-reading the file", "path", w.path, "error", err)
			schedule()
		case <-timer.C:
			pendingSince = time.Time{}
			s.read(false)
		case <-w.reload:
			s.read(true)
		case <-poll.C:
			// Re-adding is a no-op while the watch lives and revives it when the directory
			// was replaced.
			if err := fsw.Add(dir); err != nil {
				w.logger.Warn("cannot watch policy directory", "dir", dir, "error", err)
			}
			s.read(false)
		}
	}
}

// watchState is what one Run remembers between reads.
type watchState struct {
	w        *Watcher
	path     string
	dir      string
	fsw      *fsnotify.Watcher
	onChange func([]byte)

	last      []byte
	delivered bool
	// targetDir is the directory of the file a symlinked path resolves to, watched as well
	// so edits of the target are seen; "" when that is the parent directory itself.
	targetDir string
}

// read delivers the file's content when it changed since the last delivery, or always when force.
// Problems are logged, never fatal: a file deleted mid-edit usually comes back moments later.
func (s *watchState) read(force bool) {
	delivered, err := s.readOnce(force)
	if s.w.afterRead != nil {
		s.w.afterRead(delivered, err)
	}
}

func (s *watchState) readOnce(force bool) (bool, error) {
	data, err := os.ReadFile(s.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.w.logger.Warn("policy file is missing; waiting for it to reappear", "path", s.w.path)
		} else {
			s.w.logger.Error("cannot read policy file", "path", s.w.path, "error", err)
		}
		return false, err
	}
	s.followSymlink()
	if s.delivered && !force && bytes.Equal(data, s.last) {
		return false, nil
	}
	s.last, s.delivered = data, true
	s.onChange(data)
	return true, nil
}

// followSymlink watches the directory of the symlink target, when the path is a symlink into
// another directory, and stops watching a previous target's directory.
func (s *watchState) followSymlink() {
	resolved, err := filepath.EvalSymlinks(s.path)
	if err != nil {
		return
	}
	target := filepath.Dir(resolved)
	if parent, err := filepath.EvalSymlinks(s.dir); err == nil && target == parent {
		target = ""
	}
	if target == s.targetDir {
		return
	}
	if s.targetDir != "" {
		_ = s.fsw.Remove(s.targetDir)
	}
	s.targetDir = ""
	if target == "" {
		return
	}
	if err := s.fsw.Add(target); err != nil {
		s.w.logger.Warn("cannot watch symlink target directory", "dir", target, "error", err)
		return
	}
	s.targetDir = target
}
