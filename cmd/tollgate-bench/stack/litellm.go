package stack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// LiteLLM is the LiteLLM proxy routing qwen3 to llmsim and doing nothing else: what a request
// costs in a Python AI gateway, for comparison (system L).
type LiteLLM struct {
	// URL is the proxy's listener, http://127.0.0.1:PORT.
	URL string
	// Version is what `litellm --version` says ("" when it says nothing readable).
	Version string
	// Workers is the number of uvicorn worker processes.
	Workers int
	// Proc is the `litellm` command, uvicorn's supervisor: the workers are its children, so
	// its CPU is that of its process tree (proc.TreeUsage).
	Proc *proc.Process
}

// LiteLLMStartTimeout bounds the proxy's start: every worker imports LiteLLM, which takes tens
// of seconds of CPU, more on a busy machine.
const LiteLLMStartTimeout = 5 * time.Minute

// LiteLLMEnv is the proxy's environment on top of the benchmark's: nothing may reach the
// internet (there is none to reach, and waiting for it would distort the start or the run).
// The model cost map is the copy shipped in the package instead of a download at every
// start; telemetry is vetoed (LITELLM_TELEMETRY_DISABLED; LITELLM_TELEMETRY for older
// releases).
func LiteLLMEnv() []string {
	return []string{
		"LITELLM_LOCAL_MODEL_COST_MAP=True",
		"LITELLM_TELEMETRY_DISABLED=true",
		"LITELLM_TELEMETRY=False",
	}
}

// LiteLLMConfig is the proxy's config.yaml: one model, qwen3, sent to llmsim's OpenAI
// compatible API on simPort. Routing only: no database, no callbacks, no caching, no
// guardrails, no budgets. There is no master key either: the plain Envoy (A) authenticates
// nobody and tollgate (B) takes the user from a header, so LiteLLM does not check keys; it
// refuses to start keyless unless told it may.
func LiteLLMConfig(simPort int) string {
	return fmt.Sprintf(`model_list:
  - model_name: qwen3
    litellm_params:
      model: openai/qwen3
      api_base: http://127.0.0.1:%d/v1
      api_key: sk-llmsim-does-not-check
general_settings:
  dangerously_permit_weak_or_unset_master_key: true
`, simPort)
}

// uvicornLogConfig is uvicorn's default logging without the access log: a line per request
// would cost the proxy CPU that neither Envoy (no access log here) nor tollgate spends. Startup
// lines stay, for readiness and for the log on failure.
const uvicornLogConfig = `{
  "version": 1,
  "disable_existing_loggers": false,
  "formatters": {"default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s", "use_colors": false}},
  "handlers": {"default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
  "loggers": {
    "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": false},
    "uvicorn.error": {"level": "INFO"},
    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": false}
  }
}
`

// workerStarted is what each uvicorn worker logs once it serves.
const workerStarted = "Application startup complete."

// LiteLLMArgs are the `litellm` command's arguments. The worker health-check timeout is
// raised from uvicorn's 5 s: a worker still importing LiteLLM on a busy machine misses the
// check and is killed and restarted, over and over.
func LiteLLMArgs(configPath, logConfigPath string, port, workers int) []string {
	return []string{
		"--config", configPath,
		"--host", "127.0.0.1",
		"--port", fmt.Sprint(port),
		"--num_workers", fmt.Sprint(workers),
		"--timeout_worker_healthcheck", fmt.Sprint(int((2 * time.Minute).Seconds())),
		"--log_config", logConfigPath,
	}
}

// StartLiteLLM runs the LiteLLM proxy (e.Bins.LiteLLM) with workers uvicorn workers in front of
// llmsim on simPort, and waits until every worker has started and a chat completion for qwen3
// passes through it.
func (e *Env) StartLiteLLM(ctx context.Context, simPort, workers int) (*LiteLLM, error) {
	if e.Bins.LiteLLM == "" {
		return nil, fmt.Errorf("no litellm command")
	}
	if workers < 1 {
		workers = 1
	}
	ps, err := launch.FreePorts(1)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.Dir, "litellm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfgPath, logCfgPath := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "uvicorn-log.json")
	if err := os.WriteFile(cfgPath, []byte(LiteLLMConfig(simPort)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(logCfgPath, []byte(uvicornLogConfig), 0o644); err != nil {
		return nil, err
	}
	l := &LiteLLM{URL: "http://" + proc.Addr(ps[0]), Workers: workers, Version: liteLLMVersion(ctx, e.Bins.LiteLLM)}
	if l.Proc, err = e.startWithEnv("litellm", LiteLLMEnv(), e.Bins.LiteLLM, LiteLLMArgs(cfgPath, logCfgPath, ps[0], workers)...); err != nil {
		return nil, err
	}
	client := newProbeClient()
	err = l.Proc.Await(ctx, LiteLLMStartTimeout, 250*time.Millisecond, "LiteLLM serving qwen3", func() error {
		b, _ := os.ReadFile(l.Proc.LogPath)
		if n := strings.Count(string(b), workerStarted); n < workers {
			return fmt.Errorf("%d of %d workers started", n, workers)
		}
		if err := get(client, l.URL+"/health/liveliness"); err != nil {
			return err
		}
		return ask(client, l.URL, "qwen3", "warmup")
	})
	if err != nil {
		// Stop it now: a proxy still starting (or restarting workers) would take the CPU the
		// other systems are measured with.
		l.Proc.Stop()
		return nil, err
	}
	return l, nil
}

// liteLLMVersion asks the command for its version ("LiteLLM: Current Version = 1.108.7").
func liteLLMVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Env = append(os.Environ(), LiteLLMEnv()...)
	out, _ := cmd.CombinedOutput()
	return parseLiteLLMVersion(string(out))
}

func parseLiteLLMVersion(out string) string {
	_, v, ok := strings.Cut(out, "Current Version = ")
	if !ok {
		return ""
	}
	if f := strings.Fields(v); len(f) > 0 {
		return f[0]
	}
	return ""
}

// ask sends one chat completion for model as user to baseURL and fails unless the answer is
// 200.
func ask(client *http.Client, baseURL, model, user string) error {
	req, err := http.NewRequest(http.MethodPost, baseURL+"/v1/chat/completions", strings.NewReader(ChatBody(model, false)))
	if err != nil {
		return err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set(UserHeader, user)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", model, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
