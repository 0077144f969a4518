package translate_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

var update = flag.Bool("update", false, "rewrite testdata/out from testdata/in")

// testEnv is the environment golden policies resolve ${VARS} from; its values must never
// show up in rendered output.
func testEnv(name string) (string, bool) {
	if name == "UPSTREAM_KEY" {
		return "sk-canary-0123456789", true
	}
	return "", false
}

func render(t testing.TB, path string) []byte {
	t.Helper()
	p, _, err := policies.Load(path, testEnv)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	out, err := translate.Translate(p)
	if err != nil {
		t.Fatalf("translate %s: %v", path, err)
	}
	b, err := translate.Render(out)
	if err != nil {
		t.Fatalf("render %s: %v", path, err)
	}
	return b
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	want := map[string]bool{}
	for _, in := range inputs {
		name := filepath.Base(in)
		outPath := filepath.Join("testdata", "out", name)
		want[outPath] = true
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			got := render(t, in)
			if bytes.Contains(got, []byte("sk-canary")) {
				t.Fatalf("rendered output contains the upstream secret")
			}
			if *update {
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			expected, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatalf("%v (run: go test ./translate -update)", err)
			}
			if !bytes.Equal(got, expected) {
				t.Errorf("%s differs from the golden file; if the change is intended run: go test ./translate -update\n%s",
					outPath, firstDiff(expected, got))
			}
		})
	}
	outputs, _ := filepath.Glob("testdata/out/*.yaml")
	for _, out := range outputs {
		if want[out] {
			continue
		}
		if *update {
			if err := os.Remove(out); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("stale golden file %s has no input (run: go test ./translate -update)", out)
	}
}

func firstDiff(want, got []byte) string {
	wl, gl := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, w, g)
		}
	}
	return "(no line differs)"
}

// TestDeterministic renders every input repeatedly and with its lists reversed: the bytes must
// not change, so an unchanged policy never produces a new xDS version.
func TestDeterministic(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	for _, in := range inputs {
		first := render(t, in)
		for i := 0; i < 5; i++ {
			if again := render(t, in); !bytes.Equal(first, again) {
				t.Fatalf("%s: render %d differs from the first", in, i+2)
			}
		}
		p, _, err := policies.Load(in, testEnv)
		if err != nil {
			t.Fatal(err)
		}
		reverse(p.Models)
		reverse(p.Backends)
		reverse(p.Costs)
		reverse(p.Quotas)
		out, err := translate.Translate(p)
		if err != nil {
			t.Fatal(err)
		}
		reordered, err := translate.Render(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, reordered) {
			t.Fatalf("%s: reordering the policy's lists changed the output:\n%s", in, firstDiff(first, reordered))
		}
	}
}

func reverse[T any](s []T) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}
