package policies

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.yaml.in/yaml/v3"
)

// defaultPollInterval is how often Run re-reads the file regardless of events. fsnotify is not
// expected to miss events, but a watch silently lost (the directory deleted and recreated, an
// overflowing queue, a network file system) would otherwise freeze the policy forever.
const defaultPollInterval = 15 * time.Second

// maxDebounceWaits bounds how long a stream of events can postpone a read: at most this many
// debounce periods after the first event, so that a file rewritten without pause is still
// reloaded.
const maxDebounceWaits = 10

// Watcher calls onChange with a file's content whenever it changes: after edits settle for
// debounce, and only when the bytes differ from the last delivered ones. It watches the parent
// directory, because editors and mv replace the file rather than write it; a symlink flip counts
// too. Run delivers the current content once at start, Reload forces a delivery even if nothing
// changed (for SIGHUP), and Run blocks until its context ends.
//
// An event leads to a read only when it names a path the policy's content can depend on: the
// file itself, each symlink followed to reach it and the directories on the way, and the same
// for every file the policy refers to. The content comparison then decides. That covers saves by
// rename, symlink flips and Kubernetes ConfigMap updates (which swap a "..data" symlink next to
// the file), while other files in the directory, such as tollgate's own log, cause no reads. A
// Watcher runs one Run at a time.
//
// The files a policy refers to (identity.apiKeysFile, identity.jwt.jwksFile, {file: ...}
// secrets) are read on every policy load, so their directories are watched too: when one of
// them changes, the policy's content is delivered again even though it did not change itself.
//
// A missing or unreadable file is logged when the problem starts or changes, not on every read
// that finds it again: the periodic read would otherwise repeat it forever.
type Watcher struct {
	path         string
	debounce     time.Duration
	pollInterval time.Duration
	logger       *slog.Logger
	reload       chan struct{}
	// references lists the files a policy content refers to, as absolute paths or relative to
	// the policy file's directory.
	references func(content []byte) []string
	// afterRead, when set, observes every read attempt; tests use it to know that an event
	// has been fully handled without sleeping.
	afterRead func(delivered bool, err error)
	// ignored, when set, observes every event that names no path the policy depends on and
	// so causes no read.
	ignored func(ev fsnotify.Event)
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
		references:   referencedFiles,
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
	defer func() { _ = fsw.Close() }()
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
			if !s.relevant(ev.Name) {
				if w.ignored != nil {
					w.ignored(ev)
				}
				continue
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
	// refDirs are the extra directories watched for referenced files.
	refDirs map[string]bool
	// lastRefs fingerprints the referenced files at the last delivery.
	lastRefs string
	// refs are the referenced files found at the last successful read, absolute.
	refs []string
	// dependsOn holds every path whose change can change what a read finds (see relevant);
	// rebuilt on each read.
	dependsOn map[string]bool
	// problem is the last read problem logged ("" after a successful read), so a file that
	// stays missing is reported once, not on every read.
	problem string
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
	// Whatever the outcome, the paths to watch for are those of the file system as it is now.
	defer s.trackDependencies()
	if err != nil {
		s.reportProblem(err)
		return false, err
	}
	if s.problem != "" {
		s.w.logger.Info("policy file is readable again", "path", s.w.path)
		s.problem = ""
	}
	s.followSymlink()
	refs := s.referencedPaths(data)
	s.refs = refs
	s.watchReferenceDirs(refs)
	fingerprint := fingerprintFiles(refs)
	if s.delivered && !force && bytes.Equal(data, s.last) && fingerprint == s.lastRefs {
		return false, nil
	}
	s.last, s.lastRefs, s.delivered = data, fingerprint, true
	s.onChange(data)
	return true, nil
}

// reportProblem logs a failed read unless the same problem was logged last: a file that stays
// missing is read again on every poll and after every relevant event.
func (s *watchState) reportProblem(err error) {
	problem := "missing"
	if !errors.Is(err, fs.ErrNotExist) {
		problem = err.Error()
	}
	if problem == s.problem {
		s.w.logger.Debug("policy file still unreadable", "path", s.w.path, "error", err)
		return
	}
	s.problem = problem
	if problem == "missing" {
		s.w.logger.Warn("policy file is missing; waiting for it to reappear", "path", s.w.path)
	} else {
		s.w.logger.Error("cannot read policy file", "path", s.w.path, "error", err)
	}
}

// relevant reports whether an event on name can change what the next read finds.
func (s *watchState) relevant(name string) bool {
	return s.dependsOn[filepath.Clean(name)]
}

// trackDependencies records the paths events are relevant for: for the policy file and each
// referenced file, the path itself, every symlink followed from it, where it finally resolves,
// and the directories along each of those (a "..data" directory symlink swapped in a
// Kubernetes volume is one of them).
func (s *watchState) trackDependencies() {
	deps := map[string]bool{}
	for _, p := range append([]string{s.path}, s.refs...) {
		for _, q := range symlinkChain(p) {
			for ; !deps[q]; q = filepath.Dir(q) {
				deps[q] = true
			}
		}
	}
	s.dependsOn = deps
}

// maxSymlinkHops bounds symlinkChain on a symlink loop.
const maxSymlinkHops = 40

// symlinkChain returns path, each path its symlinks point to in turn (relative targets anchored
// at the link's directory), and the fully resolved path when it exists. It stops where a path
// does not exist: creating that path is then the change to look out for.
func symlinkChain(path string) []string {
	chain := []string{path}
	for range maxSymlinkHops {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		target, err := os.Readlink(path)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = filepath.Clean(target)
		chain = append(chain, path)
	}
	// The loop follows the last element only; the fully resolved path also goes through
	// directory symlinks, and the watch of a symlink target's directory names its events
	// after it.
	if resolved, err := filepath.EvalSymlinks(chain[0]); err == nil {
		chain = append(chain, resolved)
	}
	return chain
}

// referencedPaths returns the absolute paths of the files content refers to, sorted.
func (s *watchState) referencedPaths(content []byte) []string {
	if s.w.references == nil {
		return nil
	}
	var out []string
	for _, p := range s.w.references(content) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(s.dir, p)
		}
		out = append(out, filepath.Clean(p))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// watchReferenceDirs watches the directories of referenced files and stops watching those no
// longer referenced. A directory that cannot be watched yet is tried again on the next read.
func (s *watchState) watchReferenceDirs(refs []string) {
	want := map[string]bool{}
	for _, p := range refs {
		if dir := filepath.Dir(p); dir != s.dir && dir != s.targetDir {
			want[dir] = true
		}
	}
	for dir := range s.refDirs {
		if !want[dir] {
			// The policy's own directory and its symlink target stay watched regardless.
			if dir != s.dir && dir != s.targetDir {
				_ = s.fsw.Remove(dir)
			}
			delete(s.refDirs, dir)
		}
	}
	for dir := range want {
		if s.refDirs[dir] {
			continue
		}
		if err := s.fsw.Add(dir); err != nil {
			s.w.logger.Warn("cannot watch the directory of a file the policy refers to", "dir", dir, "error", err)
			continue
		}
		if s.refDirs == nil {
			s.refDirs = map[string]bool{}
		}
		s.refDirs[dir] = true
	}
}

// maxFingerprintBytes bounds how much of one referenced file is hashed; Parse refuses larger
// files anyway.
const maxFingerprintBytes = 64 << 20

// fingerprintFiles hashes the content of each file (or the reason it cannot be read), so a
// change to any of them is seen without keeping their contents, which may be secrets.
func fingerprintFiles(paths []string) string {
	if len(paths) == 0 {
		return ""
	}
	h := sha256.New() // writes to a hash never fail
	for _, p := range paths {
		_, _ = fmt.Fprintf(h, "%s\x00", p)
		f, err := os.Open(p)
		if err != nil {
			_, _ = fmt.Fprintf(h, "unreadable: %v\x00", err)
			continue
		}
		if _, err := io.Copy(h, io.LimitReader(f, maxFingerprintBytes)); err != nil {
			_, _ = fmt.Fprintf(h, "read error: %v\x00", err)
		}
		_ = f.Close()
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// referencedFiles lists the files a policy's content refers to, as written (relative to the
// policy file's directory unless absolute): identity.apiKeysFile, identity.jwt.jwksFile and
// backends' {file: path} keys. It reads the content loosely, so it works on a policy that
// does not validate, and returns nothing for content that is not YAML at all.
func referencedFiles(content []byte) []string {
	var loose struct {
		Identity struct {
			APIKeysFile string `yaml:"apiKeysFile"`
			JWT         struct {
				JWKSFile string `yaml:"jwksFile"`
			} `yaml:"jwt"`
		} `yaml:"identity"`
		Backends []struct {
			APIKey yaml.Node `yaml:"apiKey"`
		} `yaml:"backends"`
	}
	// A type error leaves the fields it could not fill empty and the rest filled.
	_ = yaml.Unmarshal(content, &loose)
	var out []string
	for _, p := range []string{loose.Identity.APIKeysFile, loose.Identity.JWT.JWKSFile} {
		if p != "" {
			out = append(out, p)
		}
	}
	for _, b := range loose.Backends {
		n := &b.APIKey
		if n.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], n.Content[i+1]; k.Value == "file" && v.Kind == yaml.ScalarNode && v.Value != "" {
				out = append(out, v.Value)
			}
		}
	}
	return out
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
	if s.targetDir != "" && !s.refDirs[s.targetDir] {
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
