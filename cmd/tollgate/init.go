package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/template"

	"github.com/tollgate-dev/tollgate/policies"
)

// initOptions are the flags of `tollgate init`.
type initOptions struct {
	out        string
	port       int
	backendURL string
	models     []string // the --models list, blanks dropped
	apiKeyEnv  string
	limit      uint64
	per        string
	force      bool
}

// initCommand writes a commented starter policy for one backend and its models, checked the
// way every policy is before it is written.
func initCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("init", stderr)
	var o initOptions
	fs.StringVar(&o.out, "o", "policy.yaml", "file to write (- for standard output)")
	fs.IntVar(&o.port, "port", policies.DefaultListenerPort, "the port Envoy listens on for clients (on 127.0.0.1)")
	fs.StringVar(&o.backendURL, "backend-url", "", "base URL of an OpenAI-compatible server, without a path, e.g. https://api.openai.com or http://127.0.0.1:8000 (required)")
	fs.Func("models", "comma-separated model names the backend serves, as clients write them in \"model\" (required)", func(list string) error {
		o.models = nil
		for _, m := range strings.Split(list, ",") {
			if m = strings.TrimSpace(m); m != "" {
				o.models = append(o.models, m)
			}
		}
		return nil
	})
	fs.StringVar(&o.apiKeyEnv, "api-key-env", "", "environment variable holding the backend's API key, sent upstream as Authorization: Bearer (e.g. OPENAI_API_KEY); empty: none")
	fs.Uint64Var(&o.limit, "limit", 100000, "tokens per user per window, for each model")
	fs.StringVar(&o.per, "per", "day", "the window: second, minute, hour, day, week, month or year")
	fs.BoolVar(&o.force, "force", false, "overwrite the file if it exists")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	content, err := o.render()
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate init: %v\n", err)
		return 2
	}
	// The starter must be a policy tollgate accepts; the key need not be set yet.
	if _, err := policies.Parse(o.out, content, func(string) (string, bool) { return "set-when-run", true }); err != nil {
		printErrors(stderr, err)
		return 2
	}
	if o.out == "-" {
		_, _ = stdout.Write(content)
		return 0
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if o.force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(o.out, flags, 0o644)
	if errors.Is(err, os.ErrExist) {
		_, _ = fmt.Fprintf(stderr, "tollgate init: %s exists; use --force to overwrite it, or -o to name another file\n", o.out)
		return 1
	}
	if err == nil {
		_, err = f.Write(content)
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate init: %v\n", err)
		return 1
	}
	_, _ = fmt.Fprintf(stdout, "wrote %s: %s, a quota of %d tokens per user per %s on each model\n", o.out, o.modelList(), o.limit, o.per)
	if o.apiKeyEnv != "" {
		_, _ = fmt.Fprintf(stdout, "the backend's API key is read from $%s when tollgate runs\n", o.apiKeyEnv)
	}
	_, _ = fmt.Fprintf(stdout, "next: tollgate run -f %s   (then send requests with an x-user-id header to http://127.0.0.1:%d)\n", o.out, o.port)
	return 0
}

func (o initOptions) modelList() string {
	if len(o.models) == 1 {
		return "model " + o.models[0]
	}
	return fmt.Sprintf("%d models (%s)", len(o.models), strings.Join(o.models, ", "))
}

// render fills the starter template. Values go in as YAML double-quoted strings, so a model
// name with YAML syntax in it stays a name; validation then says what else is wrong with it.
func (o initOptions) render() ([]byte, error) {
	if o.backendURL == "" || len(o.models) == 0 {
		return nil, errors.New("--backend-url and --models are required")
	}
	u, err := url.Parse(o.backendURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("--backend-url %q is not a URL with a host", o.backendURL)
	}
	tmpl, err := template.New("policy").Parse(starterPolicy)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	err = tmpl.Execute(&buf, map[string]any{
		"Port":       o.port,
		"BackendURL": o.backendURL,
		"Host":       u.Hostname(),
		"Models":     o.models,
		"APIKeyEnv":  o.apiKeyEnv,
		"Limit":      o.limit,
		"Per":        o.per,
	})
	return buf.Bytes(), err
}

// starterPolicy is the template of the policy `tollgate init` writes. Every value is quoted
// with printf %q, which gives a valid YAML double-quoted string for these inputs.
const starterPolicy = `# tollgate policy, written by tollgate init. Edit it while tollgate runs: every valid save is
# applied at once, an invalid one is rejected whole (tollgate validate -f FILE shows why).
# The reference of every field: docs/policy.md.

# Where Envoy listens for clients (127.0.0.1 by default; 0.0.0.0 to accept remote clients).
# maxConcurrentRequests (1024 by default) bounds the requests in flight; past it a request gets a
# JSON 503 with Retry-After at once. Size it as rate x usual request duration x 1.5.
listener: {port: {{.Port}}}

# Who the user is. The header is trusted as the client sends it: put tollgate behind a proxy that
# authenticates users and sets it, or use identity.mode apiKeys or jwt (docs/policy.md).
identity: {header: x-user-id}

backends:
  - name: upstream                       # {{.Host}}
    url: {{printf "%q" .BackendURL}}
{{- if .APIKeyEnv}}
    apiKey: {{printf "%q" (printf "${%s}" .APIKeyEnv)}}   # read from the environment when tollgate runs; never logged
{{- end}}

# The "model" a request names decides its backend; other models get a JSON 404.
models:
{{- range .Models}}
  - {name: {{printf "%q" .}}, backend: upstream}
{{- end}}

# What a request costs: here its total tokens as the backend reports them.
costs:
  - {name: tokens, type: TotalToken}

# Each user's budget, per model and window (windows are aligned to the clock: a day resets at
# 00:00 UTC). A user over it gets HTTP 429 until the window resets.
quotas:
{{- range .Models}}
  - {model: {{printf "%q" .}}, cost: tokens, limit: {{$.Limit}}, per: {{printf "%q" $.Per}}}
{{- end}}
# More ways to budget (docs/policy.md, "Budgets and pools"):
#   - money: give models prices per million tokens (prices: {input: 0.15, output: 0.60}), then
#     - {name: monthly, limit: "$20", per: calendar-month, timezone: Europe/Berlin}
#   - one pool across all models, a team's pool, or everyone's (a provider key's ceiling):
#     - {name: team-daily, scope: team, cost: tokens, limit: 2000000, per: calendar-day}
#     - {name: provider, scope: global, cost: requests, limit: 10000, per: hour}
`
