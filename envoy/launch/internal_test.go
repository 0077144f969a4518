package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:19000": "127.0.0.1:19000",
		"0.0.0.0:19000":   "127.0.0.1:19000",
		":19000":          "127.0.0.1:19000",
		"[::]:19000":      "[::1]:19000",
		"[0:0::0]:19000":  "[::1]:19000",
		"[::1]:19000":     "[::1]:19000",
		"localhost:1":     "localhost:1",
		"no port":         "no port",
	} {
		if got := DialAddr(in); got != want {
			t.Errorf("DialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLastLines(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	lines, err := lastLines(write("short", "a\n\nb\r\nc"), 5)
	if err != nil || strings.Join(lines, ",") != "a,b,c" {
		t.Fatalf("short: %q %v", lines, err)
	}
	lines, err = lastLines(write("empty", ""), 5)
	if err != nil || len(lines) != 0 {
		t.Fatalf("empty: %q %v", lines, err)
	}
	// Bigger than the part read: only whole lines from the end.
	var b strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	lines, err = lastLines(write("big", b.String()), 3)
	if err != nil || strings.Join(lines, ",") != "line 19997,line 19998,line 19999" {
		t.Fatalf("big: %q %v", lines, err)
	}
	if _, err := lastLines(filepath.Join(dir, "missing"), 3); err == nil {
		t.Fatal("missing file: no error")
	}
}
