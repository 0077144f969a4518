package main

import "testing"

func TestByteSizeFlag(t *testing.T) {
	for in, want := range map[string]uint64{
		"536870912": 512 << 20, "512MiB": 512 << 20, "512M": 512 << 20, "2GiB": 2 << 30, "2 G": 2 << 30,
		"64KiB": 64 << 10, "100B": 100,
	} {
		var b byteSize
		if err := b.Set(in); err != nil || uint64(b) != want {
			t.Errorf("%q: %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1GiB", "1.5GiB", "1TiB", "99999999999G"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("%q accepted as %d", in, b)
		}
	}
	for n, want := range map[uint64]string{512 << 20: "512MiB", 3 << 30: "3GiB", 1536: "1536B", 1 << 10: "1KiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// Envoy's ext_proc filter logs a warning per stream it cannot open: quiet unless Envoy logs in
// detail, so a spike of refusals does not become a flood of log lines.
func TestExtProcWarningsQuietUnlessDebugging(t *testing.T) {
	for level, quiet := range map[string]bool{"info": true, "warning": true, "error": true, "debug": false, "trace": false} {
		args := quietExtProcArgs(level)
		if got := len(args) == 2 && args[0] == "--component-log-level" && args[1] == "ext_proc:error"; got != quiet {
			t.Errorf("level %s: args %v, want quiet=%v", level, args, quiet)
		}
	}
}
