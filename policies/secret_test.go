package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// canary is a fake key; no output other than Value may ever contain it.
const canary = "sk-canary-5f3a9d0e7c"

// seedWithKey is the seed with an apiKey line on its backend.
func seedWithKey(t *testing.T, apiKey string) string {
	t.Helper()
	return seedWith(t, "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    apiKey: "+apiKey+"\n")
}

func TestSecretFromEnv(t *testing.T) {
	for _, form := range []string{"${OPENAI_API_KEY}", "{env: OPENAI_API_KEY}"} {
		t.Run(form, func(t *testing.T) {
			src := seedWithKey(t, form)
			p, err := Parse("policy.yaml", []byte(src), envOf(map[string]string{"OPENAI_API_KEY": canary}))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			key := p.Backends[0].APIKey
			if !key.IsSet() || key.Value() != canary || key.Source() != "env:OPENAI_API_KEY" {
				t.Errorf("secret: set=%v source=%q value matches=%v", key.IsSet(), key.Source(), key.Value() == canary)
			}
		})
	}
}

func TestSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "keys", "openai")
	if err := os.WriteFile(keyFile, []byte(canary+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")

	for _, ref := range []string{"keys/openai", keyFile} {
		t.Run(ref, func(t *testing.T) {
			src := seedWithKey(t, fmt.Sprintf("{file: %q}", ref))
			if err := os.WriteFile(policyPath, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			// Loaded from another working directory: the relative path follows the policy file.
			p, _, err := Load(policyPath, noEnv)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			key := p.Backends[0].APIKey
			if key.Value() != canary {
				t.Errorf("value not read from the file (or newline kept)")
			}
			if key.Source() != "file:"+ref {
				t.Errorf("Source() = %q, want file:%s", key.Source(), ref)
			}
		})
	}
}

func TestSecretErrors(t *testing.T) {
	dir := t.TempDir()
	multiLine := filepath.Join(dir, "two-lines")
	if err := os.WriteFile(multiLine, []byte(canary+"\n"+canary+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := envOf(map[string]string{"EMPTY": "", "SET": canary})

	tests := []struct {
		name, apiKey, path, msg string
	}{
		{"inline key", canary, "backends[0].apiKey", "write the key as ${ENV_VAR} or {file: path}, never inline"},
		{"shell-style reference", "$SET", "backends[0].apiKey", "never inline"},
		{"reference with text around it", `"Bearer ${SET}"`, "backends[0].apiKey", "never inline"},
		{"missing env var", "${NOT_SET}", "backends[0].apiKey", "environment variable NOT_SET is not set"},
		{"empty env var", "{env: EMPTY}", "backends[0].apiKey", "env:EMPTY is empty"},
		{"missing file", "{file: nope}", "backends[0].apiKey", "cannot read key file"},
		{"empty file", fmt.Sprintf("{file: %q}", empty), "backends[0].apiKey", "is empty"},
		{"multi-line file", fmt.Sprintf("{file: %q}", multiLine), "backends[0].apiKey", "control character or line break"},
		{"directory", fmt.Sprintf("{file: %q}", dir), "backends[0].apiKey", "cannot read key file"},
		{"both env and file", "{env: SET, file: x}", "backends[0].apiKey.file", "set exactly one of env or file"},
		{"neither", "{}", "backends[0].apiKey", "set one of env or file"},
		{"unknown key", "{envv: SET}", "backends[0].apiKey.envv", `unknown field "envv"`},
		{"bad env name", "{env: " + canary + "}", "backends[0].apiKey.env", "must be an environment variable name"},
		{"empty env name", `{env: ""}`, "backends[0].apiKey.env", "must be a non-empty string"},
		{"list", "[a]", "backends[0].apiKey", `must be "${ENV_VAR}", {env: NAME} or {file: path}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(dir, "policy.yaml"), []byte(seedWithKey(t, tt.apiKey)), env)
			var errs *Errors
			if !errors.As(err, &errs) || len(errs.List) != 1 {
				t.Fatalf("error = %v, want exactly one", err)
			}
			fe := errs.List[0]
			if fe.Path != tt.path || !strings.Contains(fe.Message, tt.msg) || fe.Line != 6 {
				t.Errorf("error = %v, want line 6 %s containing %q", fe, tt.path, tt.msg)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error message leaks the key: %v", err)
			}
		})
	}
}

// TestSecretNeverPrinted pushes a resolved key through every printing path a policy might
// take and checks that the canary never comes out.
func TestSecretNeverPrinted(t *testing.T) {
	p, err := Parse("policy.yaml", []byte(seedWithKey(t, "${KEY}")), envOf(map[string]string{"KEY": canary}))
	if err != nil {
		t.Fatal(err)
	}
	secret := p.Backends[0].APIKey
	if secret.Value() != canary {
		t.Fatal("secret did not resolve; the test would prove nothing")
	}

	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%10v", "%T %v"} {
		for _, v := range []any{secret, &secret, p.Backends[0], p.Backends, p, *p} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	outputs = append(outputs, secret.String(), secret.GoString(), fmt.Sprint(secret), fmt.Sprintln(p))

	var logs bytes.Buffer
	for _, h := range []slog.Handler{
		slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
	} {
		logger := slog.New(h)
		logger.Info("loaded", "key", secret, "backend", p.Backends[0], "policy", p)
		logger.Info("loaded", slog.Any("key", secret), slog.Group("g", "backends", p.Backends))
	}
	outputs = append(outputs, logs.String())

	y, err := yaml.Marshal(p)
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	j, err := json.Marshal(p)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	outputs = append(outputs, string(y), string(j))

	for _, out := range outputs {
		if strings.Contains(out, canary) {
			t.Fatalf("secret leaked:\n%s", out)
		}
	}
	all := strings.Join(outputs, "\n")
	if !strings.Contains(all, redacted) {
		t.Errorf("no output shows %q; the key may have been dropped instead of redacted", redacted)
	}
	if !strings.Contains(string(y), "apiKey: '[redacted]'") || !strings.Contains(string(j), `"APIKey":"[redacted]"`) {
		t.Errorf("yaml/json dumps do not show the redacted key:\n%s\n%s", y, j)
	}
	if got := fmt.Sprintf("%q", secret); got != `"[redacted]"` {
		t.Errorf("%%q = %s", got)
	}
}

func TestUnsetSecretPrintsEmpty(t *testing.T) {
	var s Secret
	if s.IsSet() || s.Value() != "" || s.Source() != "" {
		t.Errorf("zero Secret reports something set")
	}
	if got := fmt.Sprintf("%v|%s|%+v", s, s, s); got != "||" {
		t.Errorf("unset secret prints %q", got)
	}
	j, _ := json.Marshal(s)
	if string(j) != `""` {
		t.Errorf("unset secret JSON = %s", j)
	}
}

func TestNewSecret(t *testing.T) {
	s := NewSecret("env:TOKEN", canary)
	if !s.IsSet() || s.Value() != canary || s.Source() != "env:TOKEN" || s.String() != redacted {
		t.Errorf("NewSecret: set=%v source=%q string=%q", s.IsSet(), s.Source(), s.String())
	}
}
