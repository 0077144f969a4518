package policies

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LookupEnv resolves environment variables for ${ENV_VAR} and {env: NAME} secrets. os.LookupEnv
// fits; tests pass a map-backed function instead of touching the process environment.
type LookupEnv func(name string) (string, bool)

// Load reads the policy file at path and parses it. It returns the raw bytes too, so callers can
// hash or compare exactly what was loaded.
func Load(path string, env LookupEnv) (*Policy, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(path, data, env)
	return p, data, err
}

// Parse decodes, defaults and validates one policy. filename is used in error messages and to
// resolve relative file references. Returns *Errors (all problems) on failure.
func Parse(filename string, data []byte, env LookupEnv) (*Policy, error) {
	fail := func(list []FieldError) error {
		errs := &Errors{List: list}
		for i := range errs.List {
			errs.List[i].File = filename
		}
		errs.sort()
		return errs
	}

	root, problem := parseDocument(data)
	if problem != nil {
		return nil, fail([]FieldError{*problem})
	}

	var p Policy
	d := newDecoder(root)
	d.mapping(root, reflect.ValueOf(&p).Elem(), "")
	decodeErrs := d.errs

	applyDefaults(&p, func(path string) bool { return d.written[path] })

	var problems []FieldError
	if env == nil {
		env = func(string) (string, bool) { return "", false }
	}
	baseDir := filepath.Dir(filename)
	for i := range p.Backends {
		if err := p.Backends[i].APIKey.resolve(env, baseDir); err != nil {
			problems = append(problems, FieldError{Path: indexPath("backends", i) + ".apiKey", Message: err.Error()})
		}
	}
	problems = append(problems, resolveIdentity(&p.Identity, baseDir)...)
	celEnv, celEnvErr := CostEnv()
	problems = append(problems, validate(&p, celEnv, celEnvErr)...)

	// A field that failed to decode was left at its zero value; validating it again would
	// only repeat the decode error in vaguer words.
	failed := map[string]bool{}
	for _, e := range decodeErrs {
		failed[e.Path] = true
	}
	all := decodeErrs
	for _, e := range problems {
		if coveredBy(e.Path, failed) {
			continue
		}
		e.Line = lineOf(e.Path, d.lines)
		all = append(all, e)
	}
	if len(all) > 0 {
		return nil, fail(all)
	}
	return &p, nil
}

// coveredBy reports whether path or one of its parents failed to decode.
func coveredBy(path string, failed map[string]bool) bool {
	for ; path != ""; path = parentPath(path) {
		if failed[path] {
			return true
		}
	}
	return false
}

// lineOf finds the line of a path, falling back to its nearest parent written in the file
// (a defaulted field has no line of its own); 0 when no part of the path is in the file.
func lineOf(path string, lines map[string]int) int {
	for ; path != ""; path = parentPath(path) {
		if line, ok := lines[path]; ok {
			return line
		}
	}
	return 0
}

// parseDocument parses exactly one YAML document and returns its top-level mapping.
func parseDocument(data []byte) (*yaml.Node, *FieldError) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{Message: "policy is empty"}
		}
		return nil, syntaxError(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, &FieldError{Line: extra.Line, Message: "policy must be a single YAML document (found another one here)"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, &FieldError{Message: "policy is empty"}
		}
		root = root.Content[0]
	}
	root = resolveAlias(root)
	switch {
	case isNull(root):
		return nil, &FieldError{Line: doc.Line, Message: "policy is empty"}
	case root.Kind != yaml.MappingNode:
		return nil, &FieldError{Line: root.Line, Message: "policy must be a mapping of sections (listener, backends, models, ...), got " + describe(root)}
	}
	return root, nil
}

// syntaxError turns yaml's "yaml: line 7: did not find expected key" into a located FieldError.
func syntaxError(err error) *FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if line, convErr := strconv.Atoi(num); convErr == nil {
				return &FieldError{Line: line, Message: "invalid YAML: " + tail}
			}
		}
	}
	return &FieldError{Message: "invalid YAML: " + msg}
}
