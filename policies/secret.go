package policies

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// redacted is what every printing path shows instead of a secret's value.
const redacted = "[redacted]"

// maxSecretFileBytes bounds a key file; a real API key is far smaller, and the bound keeps a
// mistaken path (a log, a device) from being read whole.
const maxSecretFileBytes = 64 << 10

// Secret is a credential, such as an upstream API key, that the policy refers to but never
// contains. In YAML it is "${ENV_VAR}", {env: NAME} or {file: path}; Parse resolves it.
//
// Every way of printing or serialising a Secret (fmt verbs, slog, YAML, JSON) shows
// "[redacted]", or "" when unset, so a policy can be logged or dumped whole. Only Value returns
// the key itself.
type Secret struct {
	// kind is "env" or "file"; empty when unset.
	kind string
	// ref is the variable name or the path as written in the policy.
	ref   string
	value string
}

// NewSecret builds a resolved Secret for code that assembles a Policy without a file, such as
// tests of packages that consume policies. source is shown by Source, for example "env:KEY".
func NewSecret(source, value string) Secret {
	kind, ref, _ := strings.Cut(source, ":")
	return Secret{kind: kind, ref: ref, value: value}
}

// Value returns the key. Use it only where the key is sent, never where it could be logged.
func (s Secret) Value() string { return s.value }

// IsSet reports whether the policy configured this secret.
func (s Secret) IsSet() bool { return s.kind != "" }

// Source says where the value comes from ("env:OPENAI_API_KEY", "file:keys/openai"); it is safe
// to print. Empty when unset.
func (s Secret) Source() string {
	if !s.IsSet() {
		return ""
	}
	return s.kind + ":" + s.ref
}

func (s Secret) shown() string {
	if !s.IsSet() {
		return ""
	}
	return redacted
}

// String hides the value.
func (s Secret) String() string { return s.shown() }

// GoString hides the value from %#v.
func (s Secret) GoString() string { return s.shown() }

// Format hides the value from every fmt verb, including %+v and %#v of structs holding it.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = fmt.Fprintf(f, "%q", s.shown())
		return
	}
	_, _ = io.WriteString(f, s.shown())
}

// LogValue hides the value from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.shown()) }

// MarshalYAML hides the value from YAML dumps.
func (s Secret) MarshalYAML() (any, error) { return s.shown(), nil }

// MarshalJSON hides the value from JSON dumps (and slog's JSON handler).
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.shown() + `"`), nil }

// isEnvName reports whether name is a portable environment variable name.
func isEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, r := range name {
		letter := r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z')
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// envReference returns NAME for a scalar written exactly as "${NAME}".
func envReference(s string) (string, bool) {
	name, ok := strings.CutPrefix(s, "${")
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, "}")
	if !ok || !isEnvName(name) {
		return "", false
	}
	return name, true
}

const inlineKeyMessage = "write the key as ${ENV_VAR} or {file: path}, never inline"

// UnmarshalYAML records where the secret lives; Parse resolves it afterwards, because resolution
// needs the environment and the policy file's directory. Error messages never echo the scalar:
// it may be a key pasted inline by mistake.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		name, ok := envReference(n.Value)
		if !ok {
			return errors.New(inlineKeyMessage)
		}
		*s = Secret{kind: "env", ref: name}
		return nil
	case yaml.MappingNode:
		return s.unmarshalMapping(n)
	}
	return errors.New(`must be "${ENV_VAR}", {env: NAME} or {file: path}`)
}

func (s *Secret) unmarshalMapping(n *yaml.Node) error {
	var problems nodeErrors
	var got Secret
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], resolveAlias(n.Content[i+1])
		if key.Kind != yaml.ScalarNode || (key.Value != "env" && key.Value != "file") {
			problems = append(problems, nodeError{sub: key.Value, line: key.Line, msg: fmt.Sprintf("unknown field %q", key.Value)})
			continue
		}
		if got.IsSet() {
			problems = append(problems, nodeError{sub: key.Value, line: key.Line, msg: "set exactly one of env or file"})
			continue
		}
		if val == nil || val.Kind != yaml.ScalarNode || val.ShortTag() == "!!null" || val.Value == "" {
			problems = append(problems, nodeError{sub: key.Value, line: key.Line, msg: "must be a non-empty string"})
			continue
		}
		if key.Value == "env" && !isEnvName(val.Value) {
			problems = append(problems, nodeError{sub: key.Value, line: key.Line, msg: "must be an environment variable name (letters, digits and _)"})
			continue
		}
		got = Secret{kind: key.Value, ref: val.Value}
	}
	if len(problems) > 0 {
		return problems
	}
	if !got.IsSet() {
		return errors.New("set one of env or file")
	}
	*s = got
	return nil
}

// resolve loads the value. baseDir anchors relative file paths (the policy file's directory).
// Errors name the source, never the value.
func (s *Secret) resolve(env LookupEnv, baseDir string) error {
	var value string
	switch s.kind {
	case "":
		return nil
	case "env":
		v, ok := env(s.ref)
		if !ok {
			return fmt.Errorf("environment variable %s is not set", s.ref)
		}
		value = v
	case "file":
		path := s.ref
		if !filepath.IsAbs(path) {
			path = filepath.Join(baseDir, path)
		}
		v, err := readSmallFile(path)
		if err != nil {
			return err
		}
		value = strings.TrimRight(v, "\r\n")
	default:
		return fmt.Errorf("unknown secret source %q", s.kind)
	}
	if value == "" {
		return fmt.Errorf("%s is empty", s.Source())
	}
	// The key goes into an HTTP header; a control character there is an injection or a
	// broken file, and the value must not be echoed either way.
	if strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%s contains a control character or line break", s.Source())
	}
	s.value = value
	return nil
}

func readSmallFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot read key file: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("cannot read key file %s: %w", path, err)
	}
	if len(data) > maxSecretFileBytes {
		return "", fmt.Errorf("key file %s is larger than %d bytes", path, maxSecretFileBytes)
	}
	return string(data), nil
}
