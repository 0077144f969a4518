package policies

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// seedPolicy is the seed document's scenario. Line numbers matter: tests point at them.
const seedPolicy = `listener: {port: 8080}
identity: {header: x-user-id}
backends:
  - name: sim
    url: http://127.0.0.1:8000
models:
  - {name: qwen3, backend: sim}
  - {name: gpt-4, backend: sim}
  - {name: gpt-3.5-turbo, backend: sim}
costs:
  - {name: llm_input_token,  type: InputToken}
  - {name: llm_output_token, type: OutputToken}
  - {name: llm_total_token,  type: TotalToken}
  - {name: custom_cost, cel: "input_tokens * 2 + output_tokens"}
quotas:
  - {model: gpt-4,         cost: llm_total_token, limit: 1000, per: hour}
  - {model: gpt-3.5-turbo, cost: llm_total_token, limit: 100,  per: hour}
  - {model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}
`

// noEnv is a LookupEnv with nothing set.
func noEnv(string) (string, bool) { return "", false }

// envOf returns a LookupEnv backed by a map.
func envOf(vars map[string]string) LookupEnv {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// seedWith returns the seed with old replaced by new; old must occur exactly once.
func seedWith(t *testing.T, old, new string) string {
	t.Helper()
	if n := strings.Count(seedPolicy, old); n != 1 {
		t.Fatalf("seed contains %q %d times, want 1", old, n)
	}
	return strings.Replace(seedPolicy, old, new, 1)
}

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse("policy.yaml", []byte(src), noEnv)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

// parseErrors parses src and returns its field errors, failing the test when it parses.
func parseErrors(t *testing.T, src string) []FieldError {
	t.Helper()
	p, err := Parse("policy.yaml", []byte(src), noEnv)
	if err == nil {
		t.Fatalf("Parse succeeded, want errors; policy: %+v", p)
	}
	if p != nil {
		t.Errorf("Parse returned a policy along with errors")
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want *Errors: %v", err, err)
	}
	if len(errs.List) == 0 {
		t.Fatalf("*Errors with an empty list")
	}
	return errs.List
}

func TestParseSeed(t *testing.T) {
	p := mustParse(t, seedPolicy)
	if got := len(p.Models); got != 3 {
		t.Fatalf("models = %d, want 3", got)
	}
	if p.Models[1].Name != "gpt-4" || p.Models[1].Backend != "sim" {
		t.Errorf("models[1] = %+v", p.Models[1])
	}
	if p.Backends[0].URL != "http://127.0.0.1:8000" {
		t.Errorf("backend url = %q", p.Backends[0].URL)
	}
	if p.Backends[0].APIKey.IsSet() {
		t.Errorf("apiKey is set without being configured")
	}
	if c := p.Costs[3]; c.Type != CostCEL || c.CEL != "input_tokens * 2 + output_tokens" {
		t.Errorf("costs[3] = %+v, want type CEL with the expression", c)
	}
	want := Quota{Name: "qwen3-llm_total_token-per-hour", Model: "qwen3", Scope: "user", Cost: "llm_total_token", Limit: Limit{Count: 50}, Per: "hour"}
	if !reflect.DeepEqual(p.Quotas[2], want) {
		t.Errorf("quotas[2] = %+v, want %+v", p.Quotas[2], want)
	}
}

func TestDefaults(t *testing.T) {
	p := mustParse(t, `
backends: [{name: sim, url: "http://127.0.0.1:8000"}]
models: [{name: qwen3, backend: sim}]
costs: [{name: custom, cel: "total_tokens"}]
quotas: [{model: qwen3, cost: custom, limit: 5, per: Hour}]
`)
	checks := []struct {
		name      string
		got, want any
	}{
		{"listener.address", p.Listener.Address, DefaultListenerAddress},
		{"listener.port", p.Listener.Port, DefaultListenerPort},
		{"listener.modelHeader", p.Listener.ModelHeader, DefaultModelHeader},
		{"listener.maxRequestBytes", p.Listener.MaxRequestBytes, int64(DefaultMaxRequestBytes)},
		{"listener.requestTimeout", p.Listener.RequestTimeout.Duration, DefaultRequestTimeout},
		{"identity.header", p.Identity.Header, DefaultIdentityHeader},
		{"extProc.address", p.ExtProc.Address, DefaultExtProcAddress},
		{"extProc.port", p.ExtProc.Port, DefaultExtProcPort},
		{"rateLimit.address", p.RateLimit.Address, DefaultRateLimitAddress},
		{"rateLimit.port", p.RateLimit.Port, DefaultRateLimitPort},
		{"rateLimit.domain", p.RateLimit.Domain, DefaultRateLimitDomain},
		{"rateLimit.timeout", p.RateLimit.Timeout.Duration, DefaultRateLimitTimeout},
		{"rateLimit.failureMode", p.RateLimit.FailureMode, FailureModeOpen},
		{"rateLimit.defaultMaxOutputTokens", p.RateLimit.DefaultMaxOutputTokens, int64(DefaultMaxOutputTokens)},
		{"rateLimit.maxConcurrentRequests", p.RateLimit.MaxConcurrentRequests, 0},
		{"backends[0].connectTimeout", p.Backends[0].ConnectTimeout.Duration, DefaultConnectTimeout},
		{"listener.maxConcurrentRequests", p.Listener.MaxConcurrentRequests, DefaultMaxConcurrentRequests},
		{"backends[0].maxConcurrentRequests", p.Backends[0].MaxConcurrentRequests, DefaultMaxConcurrentRequests},
		{"backends[0].maxPendingRequests", p.Backends[0].MaxPendingRequests, DefaultMaxConcurrentRequests},
		{"costs[0].type", p.Costs[0].Type, CostCEL},
		{"quotas[0].per", p.Quotas[0].Per, "hour"},
		{"quotas[0].name", p.Quotas[0].Name, "qwen3-custom-per-hour"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// The values the envoy package uses; repeated here because policies may not import it.
	if DefaultListenerPort != 8080 || DefaultExtProcPort != 1063 || DefaultRateLimitPort != 8081 ||
		DefaultModelHeader != "x-ai-eg-model" || DefaultIdentityHeader != "x-user-id" {
		t.Errorf("defaults drifted from the documented ports and headers")
	}
}

func TestExplicitValuesOverrideDefaults(t *testing.T) {
	p := mustParse(t, `
listener: {address: 0.0.0.0, port: 9090, modelHeader: X-Model, maxRequestBytes: 2048, requestTimeout: 1m}
identity: {header: X-Tenant}
extProc: {address: extproc.internal, port: 2000, streamUsage: envoy}
rateLimit: {address: "::1", port: 2001, domain: mine, timeout: 250ms, failureMode: CLOSED}
backends: [{name: sim, url: "https://llm.example.com/", connectTimeout: 2s}]
models: [{name: qwen3, backend: sim}]
costs: [{name: total, type: TotalToken}]
quotas: [{name: q, model: qwen3, cost: total, limit: 5, per: DAY}]
`)
	if p.Listener.Address != "0.0.0.0" || p.Listener.Port != 9090 || p.Listener.MaxRequestBytes != 2048 ||
		p.Listener.RequestTimeout.Duration != time.Minute {
		t.Errorf("listener = %+v", p.Listener)
	}
	if p.Listener.ModelHeader != "x-model" || p.Identity.Header != "x-tenant" {
		t.Errorf("headers not lowercased: %q, %q", p.Listener.ModelHeader, p.Identity.Header)
	}
	if p.ExtProc != (ExtProcEndpoint{Endpoint: Endpoint{Address: "extproc.internal", Port: 2000}, StreamUsage: StreamUsageEnvoy}) {
		t.Errorf("extProc = %+v", p.ExtProc)
	}
	r := p.RateLimit
	if r.Address != "::1" || r.Port != 2001 || r.Domain != "mine" || r.Timeout.Duration != 250*time.Millisecond || r.FailureMode != FailureModeClosed {
		t.Errorf("rateLimit = %+v", r)
	}
	if p.Backends[0].ConnectTimeout.Duration != 2*time.Second {
		t.Errorf("connectTimeout = %v", p.Backends[0].ConnectTimeout)
	}
	if q := p.Quotas[0]; q.Name != "q" || q.Per != "day" {
		t.Errorf("quota = %+v", q)
	}
}

func TestThreeMistakesThreeErrors(t *testing.T) {
	src := seedWith(t, "listener: {port: 8080}", "listener: {port: 0}")
	src = strings.Replace(src, "{name: gpt-4, backend: sim}", "{name: gpt-4, backend: nope}", 1)
	src = strings.Replace(src, "limit: 50,", "limit: 0,", 1)
	list := parseErrors(t, src)
	want := []string{
		`policy.yaml:1: listener.port: must be between 1 and 65535, got 0`,
		`policy.yaml:8: models[1].backend: unknown backend "nope" (have: sim)`,
		`policy.yaml:18: quotas[2].limit: must be greater than 0`,
	}
	if len(list) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(list), len(want), (&Errors{List: list}).Error())
	}
	for i := range want {
		if got := list[i].Error(); got != want[i] {
			t.Errorf("error %d = %q, want %q", i, got, want[i])
		}
	}
	wantLines := []int{1, 8, 18}
	for i, fe := range list {
		if fe.Line != wantLines[i] || fe.File != "policy.yaml" {
			t.Errorf("error %d at %s:%d, want policy.yaml:%d", i, fe.File, fe.Line, wantLines[i])
		}
	}
}

func TestUnknownFieldsAllReportedWithLines(t *testing.T) {
	src := `listener:
  port: 8080
  prot: 1
backends:
  - name: sim
    url: http://127.0.0.1:8000
    timeout: 5s
models:
  - name: qwen3
    backend: sim
    weight: 2
extra: true
rateLimit: {domian: x}
`
	list := parseErrors(t, src)
	want := []string{
		`policy.yaml:3: listener.prot: unknown field "prot"`,
		`policy.yaml:7: backends[0].timeout: unknown field "timeout"`,
		`policy.yaml:11: models[0].weight: unknown field "weight"`,
		`policy.yaml:12: extra: unknown field "extra"`,
		`policy.yaml:13: rateLimit.domian: unknown field "domian"`,
	}
	got := make([]string, len(list))
	for i, fe := range list {
		got[i] = fe.Error()
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnknownFieldInListItemFlowStyle(t *testing.T) {
	src := seedWith(t, "  - {name: gpt-4, backend: sim}", "  - {name: gpt-4, bakend: sim}")
	src = strings.Replace(src, "models:\n", "# the seed, with a typo\nmodels:\n", 1)
	err := func() error { _, err := Parse("policy.yaml", []byte(src), noEnv); return err }()
	if err == nil {
		t.Fatal("Parse accepted a misspelt field")
	}
	if !strings.Contains(err.Error(), `policy.yaml:9: models[1].bakend: unknown field "bakend"`) {
		t.Errorf("error does not point at the typo:\n%v", err)
	}
}

func TestTypeErrorsAllReportedWithPaths(t *testing.T) {
	src := `listener:
  port: "8080"
  requestTimeout: 30
backends: {name: sim}
models:
  - name: qwen3
    backend: [sim]
quotas:
  - {model: qwen3, cost: c, limit: 1.5, per: hour}
  - {model: qwen3, cost: c, limit: -3, per: day}
costs: [{name: c, type: TotalToken}]
identity: x-user-id
`
	list := parseErrors(t, src)
	want := []struct {
		line int
		path string
		msg  string
	}{
		{2, "listener.port", `must be an integer, got "8080"`},
		{3, "listener.requestTimeout", `must be a duration`},
		{4, "backends", "must be a list, got a mapping"},
		{7, "models[0].backend", "must be a string, got a list"},
		{9, "quotas[0].limit", `must be a whole number, or an amount with its currency`},
		{10, "quotas[1].limit", `must be a whole number greater than 0, got -3`},
		{12, "identity", "must be a mapping"},
	}
	if len(list) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(list), len(want), (&Errors{List: list}).Error())
	}
	for i, w := range want {
		fe := list[i]
		if fe.Line != w.line || fe.Path != w.path || !strings.Contains(fe.Message, w.msg) {
			t.Errorf("error %d = %v, want line %d %s containing %q", i, fe, w.line, w.path, w.msg)
		}
	}
}

func TestDocumentLevelErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int
		msg  string
	}{
		{"empty", "", 0, "policy is empty"},
		{"whitespace", "  \n\n", 0, "policy is empty"},
		{"only comments", "# nothing here\n", 0, "policy is empty"},
		{"null", "~\n", 1, "policy is empty"},
		{"two documents", "listener: {port: 1}\n---\nmodels: []\n", 2, "single YAML document"},
		{"syntax", "listener:\n  port: 1\n bad: [\n", 2, "invalid YAML: did not find expected key"},
		{"tab indentation", "listener:\n\tport: 1\n", 2, "invalid YAML: found character that cannot start any token"},
		{"a list", "- a\n- b\n", 1, "must be a mapping"},
		{"a scalar", "hello\n", 1, "must be a mapping"},
		{"duplicate key", "listener: {port: 1}\nlistener: {port: 2}\n", 2, `duplicate field "listener" (first at line 1)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list := parseErrors(t, tt.src)
			for _, fe := range list {
				if strings.Contains(fe.Message, tt.msg) {
					if fe.Line != tt.line {
						t.Errorf("line = %d, want %d (%v)", fe.Line, tt.line, fe)
					}
					return
				}
			}
			t.Errorf("errors = %v, want one containing %q", list, tt.msg)
		})
	}
}

func TestMergeKeysAndAnchors(t *testing.T) {
	p := mustParse(t, `
backends:
  - &base {name: a, url: "http://127.0.0.1:1", connectTimeout: 2s}
  - <<: *base
    name: b
models:
  - {name: m1, backend: a}
  - {name: m2, backend: b}
costs: [{name: t, type: TotalToken}]
quotas: []
`)
	b := p.Backends[1]
	if b.Name != "b" || b.URL != "http://127.0.0.1:1" || b.ConnectTimeout.Duration != 2*time.Second {
		t.Errorf("merged backend = %+v", b)
	}

	list := parseErrors(t, `
x-defaults: &d {url: "http://127.0.0.1:1", colour: blue}
backends:
  - <<: *d
    name: a
models: [{name: m, backend: a}]
`)
	var paths []string
	for _, fe := range list {
		paths = append(paths, fe.Path)
	}
	if strings.Join(paths, ",") != "backends[0].colour,x-defaults" {
		t.Errorf("error paths = %v, want the unknown top-level key and the merged unknown key", paths)
	}
}

// TestValidationRules checks each rule on its own: the seed with one change must yield
// exactly one error, at the expected path.
func TestValidationRules(t *testing.T) {
	tests := []struct {
		name     string
		old, new string // replacement in the seed
		path     string
		msg      string
	}{
		// listener
		{"port zero", "listener: {port: 8080}", "listener: {port: 0}", "listener.port", "between 1 and 65535"},
		{"port too big", "listener: {port: 8080}", "listener: {port: 65536}", "listener.port", "between 1 and 65535"},
		{"port out of range", "listener: {port: 8080}", "listener: {port: 99999999999999999999}", "listener.port", `"99999999999999999999" is out of range`},
		{"listener address empty", "listener: {port: 8080}", `listener: {address: ""}`, "listener.address", "required"},
		{"listener address host name", "listener: {port: 8080}", "listener: {address: localhost}", "listener.address", "must be an IP address"},
		{"model header invalid", "listener: {port: 8080}", `listener: {modelHeader: "x model"}`, "listener.modelHeader", "not a valid HTTP header name"},
		{"model header empty", "listener: {port: 8080}", `listener: {modelHeader: ""}`, "listener.modelHeader", "required"},
		{"model header same as identity", "listener: {port: 8080}", "listener: {modelHeader: X-User-ID}", "identity.header", "must differ from listener.modelHeader"},
		{"max request bytes too small", "listener: {port: 8080}", "listener: {maxRequestBytes: 1023}", "listener.maxRequestBytes", "between 1024 (1 KiB) and 67108864 (64 MiB)"},
		{"max request bytes too large", "listener: {port: 8080}", "listener: {maxRequestBytes: 67108865}", "listener.maxRequestBytes", "between 1024"},
		{"request timeout zero", "listener: {port: 8080}", "listener: {requestTimeout: 0s}", "listener.requestTimeout", "greater than 0"},
		{"in-flight bound zero", "listener: {port: 8080}", "listener: {maxConcurrentRequests: 0}", "listener.maxConcurrentRequests", "between 1 and 1000000, got 0"},
		{"in-flight bound too large", "listener: {port: 8080}", "listener: {maxConcurrentRequests: 1000001}", "listener.maxConcurrentRequests", "between 1 and 1000000"},
		{"request timeout negative", "listener: {port: 8080}", "listener: {requestTimeout: -1s}", "listener.requestTimeout", "must not be negative"},
		{"request timeout unitless", "listener: {port: 8080}", "listener: {requestTimeout: 300}", "listener.requestTimeout", "must be a duration"},
		// usage log and alerts
		{"usage log relative path", "listener: {port: 8080}", "listener: {port: 8080}\nusageLog: {path: logs/usage.log}", "usageLog.path", "must be an absolute file path"},
		{"alert threshold zero", "{model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}", "{model: qwen3, cost: llm_total_token, limit: 50, per: hour, alerts: {at: [0]}}", "quotas[2].alerts.at[0]", "from 1 to 1000"},
		{"alert thresholds falling", "{model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}", "{model: qwen3, cost: llm_total_token, limit: 50, per: hour, alerts: {at: [90, 80]}}", "quotas[2].alerts.at[1]", "thresholds must rise"},
		{"alert webhook scheme", "{model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}", "{model: qwen3, cost: llm_total_token, limit: 50, per: hour, alerts: {webhook: ftp://x}}", "quotas[2].alerts.webhook", "scheme must be https or http"},
		{"alert thresholds empty", "{model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}", "{model: qwen3, cost: llm_total_token, limit: 50, per: hour, alerts: {at: []}}", "quotas[2].alerts.at", "at least one threshold"},
		// identity
		{"identity header empty", "identity: {header: x-user-id}", `identity: {header: ""}`, "identity.header", "required"},
		{"identity header invalid", "identity: {header: x-user-id}", `identity: {header: "x:user"}`, "identity.header", "not a valid HTTP header name"},
		// extProc and rateLimit
		{"extProc port", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nextProc: {port: -1}", "extProc.port", "between 1 and 65535"},
		{"extProc address with port", "identity: {header: x-user-id}", `identity: {header: x-user-id}` + "\n" + `extProc: {address: "127.0.0.1:1063"}`, "extProc.address", "without a port"},
		{"extProc address empty", "identity: {header: x-user-id}", `identity: {header: x-user-id}` + "\n" + `extProc: {address: ""}`, "extProc.address", "required"},
		{"extProc clashes with listener", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nextProc: {port: 8080}", "extProc.port", "clashes with listener.port (both 127.0.0.1:8080)"},
		{"extProc socket relative", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nextProc: {socket: run/extproc.sock}", "extProc.socket", "must be an absolute path"},
		{"extProc streamUsage unknown", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nextProc: {streamUsage: ext_proc}", "extProc.streamUsage", `must be one of tollgate, envoy, got "ext_proc"`},
		{"extProc socket too long", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nextProc: {socket: /" + strings.Repeat("s", 107) + "}", "extProc.socket", "at most 107 bytes"},
		{"rateLimit port", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {port: 70000}", "rateLimit.port", "between 1 and 65535"},
		{"rateLimit domain empty", "identity: {header: x-user-id}", `identity: {header: x-user-id}` + "\n" + `rateLimit: {domain: ""}`, "rateLimit.domain", "required"},
		{"rateLimit timeout zero", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {timeout: 0ms}", "rateLimit.timeout", "greater than 0"},
		{"rateLimit failure mode", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {failureMode: sometimes}", "rateLimit.failureMode", `must be "open" or "closed"`},
		{"rateLimit output ceiling zero", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {defaultMaxOutputTokens: 0}", "rateLimit.defaultMaxOutputTokens", "must be from 1 to 10000000, got 0"},
		{"rateLimit output ceiling huge", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {defaultMaxOutputTokens: 10000001}", "rateLimit.defaultMaxOutputTokens", "must be from 1 to 10000000"},
		{"rateLimit concurrency negative", "identity: {header: x-user-id}", "identity: {header: x-user-id}\nrateLimit: {maxConcurrentRequests: -1}", "rateLimit.maxConcurrentRequests", "must not be negative"},
		// backends
		{"backend name missing", "  - name: sim\n", "  - url: http://127.0.0.1:8001\n  - name: sim\n", "backends[0].name", "required"},
		{"backend name chars", "  - name: sim\n", "  - {name: s/m, url: \"http://127.0.0.1:8001\"}\n  - name: sim\n", "backends[0].name", "may contain only letters, digits"},
		{"backend name duplicate", "  - name: sim\n", "  - name: sim\n    url: http://127.0.0.1:8001\n  - name: sim\n", "backends[1].name", `duplicate backend name "sim" (also backends[0])`},
		{"backend url missing", "    url: http://127.0.0.1:8000\n", "    url: \"\"\n", "backends[0].url", "required"},
		{"backend url scheme", "http://127.0.0.1:8000", "ftp://127.0.0.1:8000", "backends[0].url", `scheme must be http or https, got "ftp"`},
		{"backend url no scheme", "http://127.0.0.1:8000", "127.0.0.1:8000", "backends[0].url", ""},
		{"backend url no host", "http://127.0.0.1:8000", "http://", "backends[0].url", "host required"},
		{"backend url path", "http://127.0.0.1:8000", "http://127.0.0.1:8000/v1", "backends[0].url", "must not have a path"},
		{"backend url query", "http://127.0.0.1:8000", "http://127.0.0.1:8000?a=b", "backends[0].url", "must not have a query"},
		{"backend url user info", "http://127.0.0.1:8000", "http://me:pw@127.0.0.1:8000", "backends[0].url", "must not contain user info"},
		{"backend url port zero", "http://127.0.0.1:8000", "http://127.0.0.1:0", "backends[0].url", "port must be between 1 and 65535"},
		{"backend url port too big", "http://127.0.0.1:8000", "http://127.0.0.1:65536", "backends[0].url", "port must be between 1 and 65535"},
		{"backend url unparsable", "http://127.0.0.1:8000", "http://[::1", "backends[0].url", "not a valid URL"},
		{"backend connect timeout", "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    connectTimeout: 0s\n", "backends[0].connectTimeout", "greater than 0"},
		{"backend in-flight bound negative", "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    maxConcurrentRequests: -1\n", "backends[0].maxConcurrentRequests", "between 1 and 1000000, got -1"},
		{"backend pending bound zero", "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    maxPendingRequests: 0\n", "backends[0].maxPendingRequests", "between 1 and 1000000, got 0"},
		// models
		{"model name missing", "{name: qwen3, backend: sim}", "{backend: sim}\n  - {name: qwen3, backend: sim}", "models[0].name", "required"},
		{"model name whitespace", "{name: qwen3, backend: sim}", "{name: \"gpt 4\", backend: sim}\n  - {name: qwen3, backend: sim}", "models[0].name", "no whitespace"},
		{"model name too long", "{name: qwen3, backend: sim}", "{name: " + strings.Repeat("g", 257) + ", backend: sim}\n  - {name: qwen3, backend: sim}", "models[0].name", "at most 256 bytes"},
		{"model name duplicate", "{name: gpt-3.5-turbo, backend: sim}", "{name: gpt-3.5-turbo, backend: sim}\n  - {name: qwen3, backend: sim}", "models[3].name", `duplicate model name "qwen3" (also models[0])`},
		{"model backend missing", "{name: gpt-4, backend: sim}", "{name: gpt-4}", "models[1].backend", "required"},
		{"model backend unknown", "{name: gpt-4, backend: sim}", "{name: gpt-4, backend: simm}", "models[1].backend", `unknown backend "simm" (have: sim)`},
		// costs
		{"cost name missing", "{name: llm_input_token,  type: InputToken}", "{type: InputToken}", "costs[0].name", "required"},
		{"cost name chars", "{name: llm_input_token,  type: InputToken}", "{name: \"in put\", type: InputToken}", "costs[0].name", "may contain only"},
		{"cost name duplicate", "{name: llm_output_token, type: OutputToken}", "{name: llm_input_token, type: OutputToken}", "costs[1].name", `duplicate cost name "llm_input_token"`},
		{"cost type unknown", "{name: llm_input_token,  type: InputToken}", "{name: llm_input_token,  type: InputTokens}", "costs[0].type", "must be one of InputToken, OutputToken, TotalToken, CEL"},
		{"cost type missing", "{name: llm_input_token,  type: InputToken}", "{name: llm_input_token}", "costs[0].type", "required"},
		{"cost CEL without expression", "{name: llm_input_token,  type: InputToken}", "{name: llm_input_token,  type: CEL}", "costs[0].cel", "required when type is CEL"},
		{"cost expression without CEL type", "{name: llm_input_token,  type: InputToken}", `{name: llm_input_token,  type: InputToken, cel: "input_tokens"}`, "costs[0].cel", "only allowed when type is CEL"},
		{"cost CEL syntax", `"input_tokens * 2 + output_tokens"`, `"input_tokens * "`, "costs[3].cel", "column"},
		{"cost CEL unknown variable", `"input_tokens * 2 + output_tokens"`, `"prompt_tokens * 2"`, "costs[3].cel", "undeclared reference to 'prompt_tokens'"},
		{"cost CEL double", `"input_tokens * 2 + output_tokens"`, `"double(input_tokens) * 0.5"`, "costs[3].cel", "result must be int or uint, got double"},
		{"cost CEL string", `"input_tokens * 2 + output_tokens"`, `"model"`, "costs[3].cel", "result must be int or uint, got string"},
		{"cost CEL dyn", `"input_tokens * 2 + output_tokens"`, `"dyn(input_tokens)"`, "costs[3].cel", "result must be int or uint, got dyn"},
		// quotas
		{"quota model unknown", "{model: gpt-4,         cost", "{model: gpt-5,         cost", "quotas[0].model", `unknown model "gpt-5" (have: qwen3, gpt-4, gpt-3.5-turbo)`},
		{"quota cost unknown", "{model: qwen3,         cost: llm_total_token", "{model: qwen3,         cost: tokens", "quotas[2].cost", `unknown cost "tokens"`},
		{"quota cost missing", "{model: qwen3,         cost: llm_total_token,", "{model: qwen3,", "quotas[2].cost", "required"},
		{"quota limit zero", "limit: 50,", "limit: 0,", "quotas[2].limit", "greater than 0"},
		{"quota limit missing", "limit: 50,", "", "quotas[2].limit", "greater than 0"},
		{"quota per unknown", "limit: 50,   per: hour", "limit: 50,   per: fortnight", "quotas[2].per", "must be one of second, minute, hour, day, week, month, year"},
		{"quota per missing", "limit: 50,   per: hour}", "limit: 50}", "quotas[2].per", "required"},
		{"quota name duplicate", "limit: 50,   per: hour}", "limit: 50,   per: day, name: gpt-4-llm_total_token-per-hour}", "quotas[2].name", `duplicate quota name "gpt-4-llm_total_token-per-hour" (also quotas[0])`},
		{"quota limit above the service's maximum", "limit: 50,", "limit: 4294967296,", "quotas[2].limit", "at most 4294967295"},
		{"override with user and tier", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{user: a, tier: b, limit: 5}]}", "quotas[2].overrides[0]", "exactly one of user and tier"},
		{"override with neither", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{limit: 5}]}", "quotas[2].overrides[0]", "exactly one of user and tier"},
		{"override unknown tier", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{tier: gold, limit: 5}]}", "quotas[2].overrides[0].tier", `unknown tier "gold" (none defined)`},
		{"override limit zero", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{user: alice, limit: 0}]}", "quotas[2].overrides[0].limit", "greater than 0"},
		{"override twice for a user", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{user: alice, limit: 5}, {user: alice, limit: 6}]}", "quotas[2].overrides[1]", "second override for user alice"},
		{"override bad user id", "limit: 50,   per: hour}", "limit: 50,   per: hour, overrides: [{user: \"a b\", limit: 5}]}", "quotas[2].overrides[0].user", "not a valid user id"},
		{"tier without users", "quotas:\n", "tiers: [{name: gold, users: []}]\nquotas:\n", "tiers[0].users", "at least one user"},
		{"tier concurrency negative", "quotas:\n", "tiers: [{name: gold, users: [a], maxConcurrentRequests: -2}]\nquotas:\n", "tiers[0].maxConcurrentRequests", "must not be negative, got -2"},
		{"tier name chars", "quotas:\n", "tiers: [{name: \"go ld\", users: [a]}]\nquotas:\n", "tiers[0].name", "may contain only"},
		{"tier duplicate name", "quotas:\n", "tiers: [{name: gold, users: [a]}, {name: gold, users: [b]}]\nquotas:\n", "tiers[1].name", `duplicate tier name "gold"`},
		{"user in two tiers", "quotas:\n", "tiers: [{name: gold, users: [a]}, {name: free, users: [a]}]\nquotas:\n", "tiers[1].users[0]", `user "a" is already in tier "gold"`},
		{"quota same window twice", "{model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}", "{model: gpt-4, cost: llm_total_token, limit: 50, per: hour, name: other}", "quotas[2]", "same model, scope, cost and per as quotas[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list := parseErrors(t, seedWith(t, tt.old, tt.new))
			if len(list) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(list), (&Errors{List: list}).Error())
			}
			fe := list[0]
			if fe.Path != tt.path || !strings.Contains(fe.Message, tt.msg) {
				t.Errorf("error = %v\nwant path %s, message containing %q", fe, tt.path, tt.msg)
			}
			if fe.Line == 0 {
				t.Errorf("error has no line: %v", fe)
			}
		})
	}
}

func TestNoModels(t *testing.T) {
	list := parseErrors(t, "backends: [{name: sim, url: \"http://127.0.0.1:1\"}]\n")
	if len(list) != 1 || list[0].Path != "models" || !strings.Contains(list[0].Message, "at least one model") {
		t.Errorf("errors = %v", list)
	}
	// models is absent, so the error has no line of its own.
	if list[0].Line != 0 || list[0].Error() != "policy.yaml: models: at least one model is required" {
		t.Errorf("error = %q", list[0].Error())
	}
}

func TestValidValues(t *testing.T) {
	tests := []struct{ name, old, new string }{
		{"https backend with trailing slash", "http://127.0.0.1:8000", "https://api.openai.com/"},
		{"backend without port", "http://127.0.0.1:8000", "http://llm.internal"},
		{"ipv6 backend", "http://127.0.0.1:8000", "http://[::1]:8000"},
		{"model names with slashes and colons", "{name: qwen3, backend: sim}", "{name: qwen3, backend: sim}\n  - {name: \"meta-llama/Llama-3.1-8B-Instruct:latest\", backend: sim}"},
		{"uint CEL result", `"input_tokens * 2 + output_tokens"`, `"uint(input_tokens) + 1u"`},
		{"CEL over strings", `"input_tokens * 2 + output_tokens"`, `"model == 'gpt-4' ? total_tokens * 10 : total_tokens + reasoning_tokens - cached_input_tokens"`},
		{"explicit CEL type", `{name: custom_cost, cel:`, `{name: custom_cost, type: CEL, cel:`},
		{"uppercase per", "limit: 50,   per: hour", "limit: 50,   per: HOUR"},
		{"listener on all interfaces", "listener: {port: 8080}", "listener: {port: 8080, address: 0.0.0.0}"},
		{"null section", "listener: {port: 8080}", "listener:"},
		{"upstream key from env", "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    apiKey: ${KEY}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := seedWith(t, tt.old, tt.new)
			if _, err := Parse("policy.yaml", []byte(src), envOf(map[string]string{"KEY": "k"})); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(seedPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	p, raw, err := Load(path, noEnv)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if string(raw) != seedPolicy || len(p.Quotas) != 3 {
		t.Errorf("Load returned %d bytes and %d quotas", len(raw), len(p.Quotas))
	}

	bad := filepath.Join(dir, "bad.yaml")
	badPolicy := strings.Replace(seedPolicy, "port: 8080", "port: 0", 1)
	if err := os.WriteFile(bad, []byte(badPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	_, raw, err = Load(bad, noEnv)
	if err == nil || !strings.HasPrefix(err.Error(), bad+":1: listener.port:") {
		t.Errorf("Load error = %v, want it located in %s", err, bad)
	}
	if string(raw) != badPolicy {
		t.Errorf("Load did not return the raw bytes of an invalid file")
	}

	if _, _, err := Load(filepath.Join(dir, "missing.yaml"), noEnv); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file = %v, want ErrNotExist", err)
	}
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		fe   FieldError
		want string
	}{
		{FieldError{File: "p.yaml", Line: 7, Path: "models[1].bakend", Message: "m"}, "p.yaml:7: models[1].bakend: m"},
		{FieldError{File: "p.yaml", Path: "models", Message: "m"}, "p.yaml: models: m"},
		{FieldError{File: "p.yaml", Line: 3, Message: "m"}, "p.yaml:3: m"},
		{FieldError{Line: 3, Path: "a", Message: "m"}, "line 3: a: m"},
		{FieldError{Message: "m"}, "m"},
	}
	for _, tt := range tests {
		if got := tt.fe.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	errs := &Errors{List: []FieldError{tests[0].fe, tests[1].fe}}
	if got := errs.Error(); got != tests[0].want+"\n"+tests[1].want {
		t.Errorf("Errors.Error() = %q", got)
	}
}

func TestErrorsSortedByLineThenPath(t *testing.T) {
	src := seedWith(t, "  - {model: qwen3,         cost: llm_total_token, limit: 50,   per: hour}",
		"  - {model: qwen4,         cost: llm_total_tokens, limit: 0,   per: hour}")
	list := parseErrors(t, src)
	var got []string
	for _, fe := range list {
		got = append(got, fe.Path)
	}
	if strings.Join(got, " ") != "quotas[2].cost quotas[2].limit quotas[2].model" {
		t.Errorf("paths = %v, want sorted by path within line 18", got)
	}
}

func BenchmarkParseSeed(b *testing.B) {
	data := []byte(seedPolicy)
	for b.Loop() {
		if _, err := Parse("policy.yaml", data, noEnv); err != nil {
			b.Fatal(err)
		}
	}
}

// userIDCases are ids on either side of CheckUserID's rule.
var (
	validUserIDs = []string{
		"alice", "bob@example.com", "4711", "josé", "用户", "Ölçü-ß_ø", "a\u00e9\u0301",
		strings.Repeat("a", MaxUserIDBytes),
		strings.Repeat("用", MaxUserIDBytes/3), // 255 bytes of three-byte characters
	}
	invalidUserIDs = map[string]string{
		"":                                    "empty",
		"mallory\xff\xfe":                     "not valid UTF-8",
		"\xc3":                                "not valid UTF-8", // a sequence cut short
		"\x00":                                "non-printable character (U+0000)",
		"a\x00b":                              "non-printable character (U+0000)",
		"a\tb":                                "whitespace (U+0009)",
		"a\nb":                                "whitespace (U+000A)",
		"\x7f":                                "non-printable character (U+007F)",
		"a\u0085b":                            "whitespace (U+0085)", // C1 NEL is also whitespace
		"a\u009bb":                            "non-printable character (U+009B)",
		"a\u200bb":                            "non-printable character (U+200B)", // zero-width space
		"admin\u202e":                         "non-printable character (U+202E)", // right-to-left override
		"\ufeffalice":                         "non-printable character (U+FEFF)",
		"a\u00a0b":                            "whitespace (U+00A0)",
		"   ":                                 "whitespace (U+0020)",
		" alice":                              "whitespace (U+0020)",
		"alice ":                              "whitespace (U+0020)",
		"a b":                                 "whitespace (U+0020)",
		strings.Repeat("a", MaxUserIDBytes+1): "257 bytes, more than 256",
		strings.Repeat("用", MaxUserIDBytes/3+1): "258 bytes, more than 256",
	}
)

func TestCheckUserID(t *testing.T) {
	for _, id := range validUserIDs {
		if err := CheckUserID(id); err != nil {
			t.Errorf("CheckUserID(%q) = %v, want nil", id, err)
		}
	}
	for id, want := range invalidUserIDs {
		err := CheckUserID(id)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckUserID(%q) = %v, want an error containing %q", id, err, want)
		}
	}
	if !strings.Contains(UserIDRule, fmt.Sprint(MaxUserIDBytes)) {
		t.Errorf("UserIDRule %q does not state the %d-byte bound", UserIDRule, MaxUserIDBytes)
	}
}

// TestUserIDsInPolicy: every place the policy names a user applies CheckUserID, and reports the
// field path. The ids are set on a parsed policy, since raw bytes that are not UTF-8 cannot get
// through the YAML decoder in the first place.
func TestUserIDsInPolicy(t *testing.T) {
	celEnv, celErr := CostEnv()
	check := func(t *testing.T, id string, edit func(p *Policy) string) (path string, errs []FieldError) {
		t.Helper()
		p := mustParse(t, seedPolicy)
		path = edit(p)
		errs = validate(p, celEnv, celErr)
		if p.Identity.Mode == IdentityAPIKeys {
			errs = append(errs, resolveIdentity(&p.Identity, t.TempDir())...)
		}
		return path, errs
	}
	places := map[string]func(id string) func(p *Policy) string{
		"tier": func(id string) func(p *Policy) string {
			return func(p *Policy) string {
				p.Tiers = []Tier{{Name: "gold", Users: []string{"carol", id}}}
				return "tiers[0].users[1]"
			}
		},
		"override": func(id string) func(p *Policy) string {
			return func(p *Policy) string {
				p.Quotas[2].Overrides = []Override{{User: id, Limit: Limit{Count: 5}}}
				return "quotas[2].overrides[0].user"
			}
		},
		"api key": func(id string) func(p *Policy) string {
			return func(p *Policy) string {
				p.Identity = Identity{Mode: IdentityAPIKeys, Header: "x-user-id", APIKeys: []APIKey{
					{User: "carol", SHA256: strings.Repeat("a", 64)},
					{User: id, SHA256: strings.Repeat("b", 64)},
				}}
				return "identity.apiKeys[1].user"
			}
		},
	}
	for place, edit := range places {
		t.Run(place, func(t *testing.T) {
			for _, id := range validUserIDs {
				if _, errs := check(t, id, edit(id)); len(errs) != 0 {
					t.Errorf("user %q refused: %v", id, errs)
				}
			}
			for id := range invalidUserIDs {
				if id == "" && place != "tier" {
					continue // an empty override or key user is "set exactly one" / "required"
				}
				path, errs := check(t, id, edit(id))
				if len(errs) != 1 || errs[0].Path != path || !strings.Contains(errs[0].Message, "not a valid user id") {
					t.Errorf("user %q: errors %v, want one at %s saying it is not a valid user id", id, errs, path)
				}
			}
		})
	}
}

// TestUserIDErrorsInPolicyFile: the messages for ids written in a policy file name the field and
// the rule, and control characters written as YAML escapes are caught too.
func TestUserIDErrorsInPolicyFile(t *testing.T) {
	tests := []struct{ name, users, path, msg string }{
		{"DEL", `["carol", "a\x7f"]`, "tiers[0].users[1]", "non-printable character (U+007F)"},
		{"NUL", `["\0"]`, "tiers[0].users[0]", "non-printable character (U+0000)"},
		{"tab", `["a\tb"]`, "tiers[0].users[0]", "whitespace (U+0009)"},
		{"blank", `["   "]`, "tiers[0].users[0]", "whitespace (U+0020)"},
		{"leading space", `[" alice"]`, "tiers[0].users[0]", "whitespace (U+0020)"},
		{"too long", `[` + strings.Repeat("a", MaxUserIDBytes+1) + `]`, "tiers[0].users[0]", "257 bytes, more than 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := parseErrors(t, seedWith(t, "quotas:\n", "tiers: [{name: gold, users: "+tt.users+"}]\nquotas:\n"))
			if len(errs) != 1 || !hasError(errs, tt.path, "not a valid user id", tt.msg, UserIDRule) {
				t.Errorf("errors %v, want %s: ... %s ... (%s)", errs, tt.path, tt.msg, UserIDRule)
			}
		})
	}
	p := mustParse(t, seedWith(t, "quotas:\n", "tiers: [{name: intl, users: [josé, 用户]}]\nquotas:\n"))
	if got := p.Tiers[0].Users; len(got) != 2 || got[0] != "josé" || got[1] != "用户" {
		t.Errorf("tier users %q", got)
	}
}
