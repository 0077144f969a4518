package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
)

func TestHashKey(t *testing.T) {
	// sha256("abc"), a published test vector.
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	long := strings.Repeat("k", minKeyLength)
	tests := []struct {
		name, stdin string
		args        []string
		code        int
		out, errIn  string
	}{
		{name: "stdin with newline", stdin: "abc\n", code: 0, out: abc + "\n", errIn: "warning: the key is 3 characters"},
		{name: "flag", args: []string{"--key", "abc"}, code: 0, out: abc + "\n", errIn: "warning"},
		{name: "user entry", stdin: long, args: []string{"--user", "alice"}, code: 0,
			out: fmt.Sprintf("- {user: \"alice\", sha256: %s}\n", sha256Hex(long))},
		{name: "long key, no warning", stdin: long + "\r\n", code: 0, out: sha256Hex(long) + "\n"},
		{name: "empty", stdin: "\n", code: 2, errIn: "no key given"},
		{name: "two lines", stdin: "a\nb\n", code: 2, errIn: "several lines"},
		{name: "spaces", stdin: " abc\n", code: 2, errIn: "surrounding spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := hashKeyCommand(tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if code != tt.code || stdout.String() != tt.out {
				t.Fatalf("exit %d, stdout %q; want %d, %q (stderr %q)", code, stdout.String(), tt.code, tt.out, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.errIn) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.errIn)
			}
			if tt.errIn == "" && stderr.Len() > 0 {
				t.Errorf("unexpected stderr %q", stderr.String())
			}
			if strings.Contains(stderr.String(), "abc") {
				t.Errorf("stderr echoes the key: %q", stderr.String())
			}
		})
	}
}

func sha256Hex(s string) string {
	return fmt.Sprintf("%x", sha256.Sum256([]byte(s)))
}
