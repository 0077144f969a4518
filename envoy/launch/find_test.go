package launch_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

func notOnPath(string) (string, error) { return "", errors.New("not found") }

// installTools creates an executable at ToolsBinary under root.
func installTools(t *testing.T, root string) string {
	t.Helper()
	bin := filepath.Join(root, filepath.FromSlash(launch.ToolsBinary))
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestFindPrefersEnvBin(t *testing.T) {
	root := t.TempDir()
	installTools(t, root)
	custom := writeScript(t, "#!/bin/sh\n")
	got, err := launch.Search{EnvBin: custom, Dirs: []string{root}, LookPath: notOnPath}.Find()
	if err != nil || got != custom {
		t.Fatalf("Find = %q, %v; want %q", got, err, custom)
	}
}

func TestFindRejectsABadEnvBinWithoutFallingBack(t *testing.T) {
	root := t.TempDir()
	installTools(t, root) // a usable Envoy exists, but ENVOY_BIN asked for another one
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-exec")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ path, reason string }{
		"missing":        {filepath.Join(dir, "nope"), "no such file"},
		"directory":      {dir, "is a directory"},
		"not executable": {notExec, "is not executable"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := launch.Search{EnvBin: tc.path, Dirs: []string{root}, LookPath: notOnPath}.Find()
			var nf *launch.NotFoundError
			if !errors.As(err, &nf) {
				t.Fatalf("Find = %v, want *NotFoundError", err)
			}
			msg := err.Error()
			for _, s := range []string{"ENVOY_BIN=" + tc.path, tc.reason, launch.InstallCommand, "task setup"} {
				if !strings.Contains(msg, s) {
					t.Errorf("message lacks %q:\n%s", s, msg)
				}
			}
		})
	}
}

func TestFindWalksUpToTheRepositoryTools(t *testing.T) {
	root := t.TempDir()
	want := installTools(t, root)
	deep := filepath.Join(root, "examples", "e2e")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := launch.Search{Dirs: []string{deep}, LookPath: notOnPath}.Find()
	if err != nil || got != want {
		t.Fatalf("Find = %q, %v; want %q", got, err, want)
	}
}

func TestFindChecksEveryDirBeforeThePath(t *testing.T) {
	elsewhere := t.TempDir()
	root := t.TempDir()
	want := installTools(t, root)
	onPath := func(string) (string, error) { return "/usr/bin/envoy", nil }
	// The first dir has no tools; the second (the executable's bin/) does, one level up.
	got, err := launch.Search{Dirs: []string{elsewhere, filepath.Join(root, "bin")}, LookPath: onPath}.Find()
	if err != nil || got != want {
		t.Fatalf("Find = %q, %v; want %q", got, err, want)
	}
}

func TestFindFallsBackToThePath(t *testing.T) {
	var asked string
	onPath := func(file string) (string, error) { asked = file; return "/opt/envoy/bin/envoy", nil }
	got, err := launch.Search{Dirs: []string{t.TempDir()}, LookPath: onPath}.Find()
	if err != nil || got != "/opt/envoy/bin/envoy" || asked != "envoy" {
		t.Fatalf("Find = %q, %v (asked PATH for %q)", got, err, asked)
	}
}

func TestFindNothingSaysWhereItLookedAndHowToInstall(t *testing.T) {
	dir := t.TempDir()
	_, err := launch.Search{Dirs: []string{dir}, LookPath: notOnPath}.Find()
	var nf *launch.NotFoundError
	if !errors.As(err, &nf) {
		t.Fatalf("Find = %v, want *NotFoundError", err)
	}
	msg := err.Error()
	for _, s := range []string{filepath.Join(dir, filepath.FromSlash(launch.ToolsBinary)), "envoy on the PATH", launch.InstallCommand, "task setup", launch.EnvVar} {
		if !strings.Contains(msg, s) {
			t.Errorf("message lacks %q:\n%s", s, msg)
		}
	}
}

func TestDefaultSearchReadsTheEnvironment(t *testing.T) {
	t.Setenv(launch.EnvVar, "/some/envoy")
	s := launch.DefaultSearch()
	if s.EnvBin != "/some/envoy" {
		t.Fatalf("EnvBin = %q", s.EnvBin)
	}
	wd, _ := os.Getwd()
	if len(s.Dirs) == 0 || s.Dirs[0] != wd {
		t.Fatalf("Dirs = %q, want the working directory first", s.Dirs)
	}
}
