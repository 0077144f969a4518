package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// File size bounds. A keys file may list many users; a key set holds a handful of public keys.
// The bounds keep a mistaken path (a log, a device) from being read whole.
const (
	maxAPIKeysFileBytes = 16 << 20
	maxJWKSFileBytes    = 1 << 20
)

// sha256HexLen is the length of a SHA-256 hash written in hex.
const sha256HexLen = 64

// keyEntry is one API key with where it was written, for messages.
type keyEntry struct {
	key APIKey
	// path is the policy field the error is reported at.
	path string
	// where prefixes messages about keys from the keys file ("keys.yaml:3: [1]"); "" inline.
	where string
}

// resolveIdentity reads the files the identity section refers to (relative to baseDir), fills
// ResolvedAPIKeys and JWT.JWKS, and checks every API key. Only the files of the configured mode
// are read: a file the mode ignores is reported by validation, not opened.
func resolveIdentity(id *Identity, baseDir string) []FieldError {
	var errs []FieldError
	switch id.Mode {
	case IdentityAPIKeys:
		entries := make([]keyEntry, 0, len(id.APIKeys))
		for i, k := range id.APIKeys {
			entries = append(entries, keyEntry{key: k, path: indexPath("identity.apiKeys", i)})
		}
		if id.APIKeysFile != "" {
			fileEntries, err := loadAPIKeysFile(resolvePath(baseDir, id.APIKeysFile), id.APIKeysFile)
			if err != nil {
				errs = append(errs, FieldError{Path: "identity.apiKeysFile", Message: err.Error()})
			}
			entries = append(entries, fileEntries...)
		}
		errs = append(errs, checkAPIKeys(entries)...)
		id.ResolvedAPIKeys = make([]APIKey, len(entries))
		for i, e := range entries {
			id.ResolvedAPIKeys[i] = e.key
		}
	case IdentityJWT:
		if id.JWT.JWKSFile == "" {
			break
		}
		data, err := readLimited(resolvePath(baseDir, id.JWT.JWKSFile), maxJWKSFileBytes)
		if err == nil {
			err = checkJWKS(data)
		}
		if err != nil {
			errs = append(errs, FieldError{Path: "identity.jwt.jwksFile", Message: err.Error()})
			break
		}
		id.JWT.JWKS = string(data)
	}
	return errs
}

// resolvePath anchors a relative path at the policy file's directory.
func resolvePath(baseDir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(baseDir, path)
}

// readLimited reads a whole file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// loadAPIKeysFile decodes a keys file: a YAML list of {user, sha256}, decoded as strictly as
// the policy. Decode problems come back as one error naming file, line and entry; the entries
// that decoded are returned for checking, each located in the file.
func loadAPIKeysFile(path, shown string) ([]keyEntry, error) {
	data, err := readLimited(path, maxAPIKeysFileBytes)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file lists no keys: every key is revoked
		}
		return nil, fmt.Errorf("%s: %s", shown, syntaxError(err).Error())
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	root = resolveAlias(root)
	if isNull(root) {
		return nil, nil
	}
	if root.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s: must be a list of {user, sha256}, got %s", shown, describe(root))
	}
	var keys []APIKey
	d := newDecoder(root)
	d.sequence(root, reflect.ValueOf(&keys).Elem(), "")
	if len(d.errs) > 0 {
		var msgs []string
		for _, e := range d.errs {
			msgs = append(msgs, fmt.Sprintf("%s:%d: %s: %s", shown, e.Line, e.Path, e.Message))
		}
		return nil, errors.New(strings.Join(msgs, "; "))
	}
	entries := make([]keyEntry, len(keys))
	for i, k := range keys {
		p := indexPath("", i)
		entries[i] = keyEntry{key: k, path: "identity.apiKeysFile", where: fmt.Sprintf("%s:%d: %s", shown, d.lines[p], p)}
	}
	return entries, nil
}

// checkAPIKeys validates every key and refuses a hash listed twice: one key must name exactly
// one user. A user may have several keys (rotation).
func checkAPIKeys(entries []keyEntry) []FieldError {
	var errs []FieldError
	add := func(e keyEntry, field, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if e.where != "" {
			errs = append(errs, FieldError{Path: e.path, Message: e.where + "." + field + ": " + msg})
			return
		}
		errs = append(errs, FieldError{Path: e.path + "." + field, Message: msg})
	}
	firstSeen := map[string]keyEntry{}
	for _, e := range entries {
		if !validUserID(e.key.User) {
			if e.key.User == "" {
				add(e, "user", "required")
			} else {
				add(e, "user", "%q is not a valid user id (printable, no whitespace, at most %d bytes)", e.key.User, maxNameBytes)
			}
		}
		if e.key.Team != "" && !validUserID(e.key.Team) {
			add(e, "team", "%q is not a valid team id (%s)", e.key.Team, UserIDRule)
		}
		if !isSHA256Hex(e.key.SHA256) {
			if e.key.SHA256 == "" {
				add(e, "sha256", "required (print it with `tollgate hash-key`)")
			} else {
				// The value is a hash, but it may be a key pasted by mistake: never echo it.
				add(e, "sha256", "must be %d lowercase hex digits (print it with `tollgate hash-key`)", sha256HexLen)
			}
			continue
		}
		if first, dup := firstSeen[e.key.SHA256]; dup {
			add(e, "sha256", "the same key is listed again (first at %s)", describeEntry(first))
			continue
		}
		firstSeen[e.key.SHA256] = e
	}
	return errs
}

func describeEntry(e keyEntry) string {
	if e.where != "" {
		return e.where
	}
	return e.path
}

// isSHA256Hex reports whether s is a SHA-256 hash in lowercase hex.
func isSHA256Hex(s string) bool {
	if len(s) != sha256HexLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkJWKS makes sure a key set is usable before Envoy gets it: Envoy would accept a broken
// one and then reject every token, which looks like an outage rather than a typo.
func checkJWKS(data []byte) error {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	if len(set.Keys) == 0 {
		return errors.New(`not a JSON Web Key Set: "keys" must list at least one key`)
	}
	for i, k := range set.Keys {
		if kty, _ := k["kty"].(string); kty == "" {
			return fmt.Errorf(`not a JSON Web Key Set: keys[%d] has no "kty"`, i)
		}
		// The set is served to Envoy inline and shows in its config dump: it must hold public
		// keys only. "d" is a private RSA/EC/OKP key, "k" a shared HMAC secret.
		for _, private := range []string{"d", "k"} {
			if _, ok := k[private]; ok {
				return fmt.Errorf(`keys[%d] holds secret key material (%q); a key set for verification lists public keys only`, i, private)
			}
		}
	}
	return nil
}
