package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// minKeyLength is the shortest key hash-key accepts without a warning: 32 random characters
// are far beyond guessing, and the hash in the policy is only as strong as the key behind it.
const minKeyLength = 32

// maxKeyInput bounds what hash-key reads from stdin; a key is a line, not a file.
const maxKeyInput = 64 << 10

// hashKeyCommand prints the SHA-256 of an API key as the policy lists it. The key comes from
// stdin (so it stays out of shell history and process lists) or --key.
func hashKeyCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags("hash-key", stderr)
	key := fs.String("key", "", "the key to hash (default: read it from stdin)")
	user := fs.String("user", "", "print a ready-made identity.apiKeys entry for this user")
	fs.Usage = func() {
		_, _ = fmt.Fprint(stderr, "Usage: tollgate hash-key [--user ID] < keyfile\n\n"+
			"Prints the SHA-256 of an API key for identity.apiKeys (or an apiKeysFile).\n"+
			"Make a key with, for example: openssl rand -hex 32\n\n")
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	k := *key
	if k == "" {
		data, err := io.ReadAll(io.LimitReader(stdin, maxKeyInput+1))
		if err != nil {
			_, _ = fmt.Fprintf(stderr, "tollgate hash-key: read stdin: %v\n", err)
			return 1
		}
		if len(data) > maxKeyInput {
			_, _ = fmt.Fprintf(stderr, "tollgate hash-key: stdin holds more than %d bytes; give one key\n", maxKeyInput)
			return 2
		}
		k = strings.TrimRight(string(data), "\r\n")
	}
	switch {
	case k == "":
		_, _ = fmt.Fprintln(stderr, "tollgate hash-key: no key given (pipe it to stdin or use --key)")
		return 2
	case strings.ContainsAny(k, "\r\n"):
		_, _ = fmt.Fprintln(stderr, "tollgate hash-key: the key spans several lines; give one key")
		return 2
	case strings.TrimSpace(k) != k || strings.ContainsFunc(k, unicode.IsControl):
		// The gateway trims what clients send, so such a key could never match.
		_, _ = fmt.Fprintln(stderr, "tollgate hash-key: the key has surrounding spaces or control characters")
		return 2
	}
	if len(k) < minKeyLength {
		_, _ = fmt.Fprintf(stderr, "tollgate hash-key: warning: the key is %d characters long; use at least %d random ones (openssl rand -hex 32)\n", len(k), minKeyLength)
	}
	sum := sha256.Sum256([]byte(k))
	hash := hex.EncodeToString(sum[:])
	if *user != "" {
		_, _ = fmt.Fprintf(stdout, "- {user: %q, sha256: %s}\n", *user, hash)
		return 0
	}
	_, _ = fmt.Fprintln(stdout, hash)
	return 0
}
