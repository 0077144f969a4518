package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
)

func TestLiteLLMConfig(t *testing.T) {
	var cfg struct {
		ModelList []struct {
			ModelName     string         `yaml:"model_name"`
			LiteLLMParams map[string]any `yaml:"litellm_params"`
		} `yaml:"model_list"`
		GeneralSettings map[string]any `yaml:"general_settings"`
		LiteLLMSettings map[string]any `yaml:"litellm_settings"`
		RouterSettings  map[string]any `yaml:"router_settings"`
	}
	dec := yaml.NewDecoder(strings.NewReader(LiteLLMConfig(18000)))
	dec.KnownFields(true) // a key this test does not know about is a setting to review
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.ModelList) != 1 {
		t.Fatalf("models %+v, want qwen3 only", cfg.ModelList)
	}
	m := cfg.ModelList[0]
	// The model name is what the load sends (stack.ChatBody); openai/ makes LiteLLM speak
	// the OpenAI API to api_base, which llmsim serves under /v1.
	if m.ModelName != "qwen3" || m.LiteLLMParams["model"] != "openai/qwen3" ||
		m.LiteLLMParams["api_base"] != "http://127.0.0.1:18000/v1" || m.LiteLLMParams["api_key"] == "" {
		t.Errorf("model %+v", m)
	}
	// Routing only: no database, no callbacks, no cache, no master key (so no key checks).
	for k := range cfg.GeneralSettings {
		if k != "dangerously_permit_weak_or_unset_master_key" {
			t.Errorf("general_settings.%s set", k)
		}
	}
	if cfg.GeneralSettings["dangerously_permit_weak_or_unset_master_key"] != true {
		t.Error("no master key and no permission to start without one: LiteLLM would refuse to start")
	}
	if len(cfg.LiteLLMSettings) != 0 || len(cfg.RouterSettings) != 0 {
		t.Errorf("litellm_settings %v, router_settings %v: want LiteLLM's defaults", cfg.LiteLLMSettings, cfg.RouterSettings)
	}
}

func TestLiteLLMEnvKeepsItOffline(t *testing.T) {
	env := LiteLLMEnv()
	for _, want := range []string{"LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_TELEMETRY_DISABLED=true"} {
		if !slices.Contains(env, want) {
			t.Errorf("environment %q lacks %s", env, want)
		}
	}
}

func TestUvicornLogConfigDropsAccessLog(t *testing.T) {
	var c struct {
		Version int
		Loggers map[string]struct {
			Handlers  *[]string
			Level     string
			Propagate *bool
		}
	}
	if err := json.Unmarshal([]byte(uvicornLogConfig), &c); err != nil {
		t.Fatal(err)
	}
	access := c.Loggers["uvicorn.access"]
	// uvicorn logs requests only when the access logger has handlers (hasHandlers, which
	// looks up the hierarchy unless propagation is off).
	if access.Handlers == nil || len(*access.Handlers) != 0 || access.Propagate == nil || *access.Propagate {
		t.Errorf("uvicorn.access %+v: want no handlers and no propagation", access)
	}
	// Readiness counts the workers' startup lines, which uvicorn.error logs at INFO.
	if c.Version != 1 || c.Loggers["uvicorn"].Level != "INFO" || c.Loggers["uvicorn.error"].Level != "INFO" {
		t.Errorf("config %+v: the startup lines must still be logged", c)
	}
}

func TestLiteLLMArgs(t *testing.T) {
	got := strings.Join(LiteLLMArgs("/r/config.yaml", "/r/log.json", 4000, 2), " ")
	want := "--config /r/config.yaml --host 127.0.0.1 --port 4000 --num_workers 2 --timeout_worker_healthcheck 120 --log_config /r/log.json"
	if got != want {
		t.Errorf("args\n %s\nwant\n %s", got, want)
	}
}

func TestParseLiteLLMVersion(t *testing.T) {
	for out, want := range map[string]string{
		"\nLiteLLM: Current Version = 1.108.7\n\n":              "1.108.7",
		"some warning\nLiteLLM: Current Version = 1.74.0.post2": "1.74.0.post2",
		"Traceback (most recent call last): ...":                "",
	} {
		if got := parseLiteLLMVersion(out); got != want {
			t.Errorf("parseLiteLLMVersion(%q) = %q, want %q", out, got, want)
		}
	}
}

// The real proxy, when asked for (LITELLM=1, as `LITELLM=1 task bench` installs it): it starts
// routing-only with two workers, answers through llmsim, and Close leaves none of its
// processes behind. It takes a minute or more.
func TestStartLiteLLM(t *testing.T) {
	if os.Getenv("LITELLM") != "1" {
		t.Skip("LITELLM=1 runs the real LiteLLM proxy")
	}
	bin := os.Getenv("LITELLM_BIN")
	if bin == "" {
		root, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(filepath.Dir(strings.TrimSpace(string(root))), ".tools", "litellm-venv", "bin", "litellm")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no LiteLLM at %s (task install-litellm, or set LITELLM_BIN)", bin)
	}
	sim := filepath.Join(t.TempDir(), "llmsim")
	if out, err := exec.Command("go", "build", "-o", sim, "github.com/tollgate-dev/tollgate/cmd/llmsim").CombinedOutput(); err != nil {
		t.Fatalf("build llmsim: %v\n%s", err, out)
	}
	e := &Env{Bins: Bins{LLMSim: sim, LiteLLM: bin}, Dir: t.TempDir()}
	defer e.Close()
	ctx := context.Background()
	simPort, _, err := e.StartSim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := e.StartLiteLLM(ctx, simPort, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("LiteLLM %s at %s", l.Version, l.URL)
	if l.Version == "" {
		t.Error("no version")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if err := ask(client, l.URL, "qwen3", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := ask(client, l.URL, "gpt-4", "alice"); err == nil {
		t.Error("a model the config does not list was routed")
	}
	pgid := l.Proc.Pid()
	e.Close()
	// Every process of the proxy's group must be gone (zombies aside, which init reaps).
	err = proc.Poll(ctx, 10*time.Second, 100*time.Millisecond, "LiteLLM's processes gone", func() error {
		return groupAlive(pgid)
	})
	if err != nil {
		t.Error(err)
	}
}

// groupAlive fails while a live (not zombie) process is in process group pgid.
func groupAlive(pgid int) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		// After ")": state, ppid, pgrp.
		f := strings.Fields(s[end+1:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			return fmt.Errorf("process %s (%s) still running", e.Name(), strings.TrimSpace(s[:end+1]))
		}
	}
	return nil
}
