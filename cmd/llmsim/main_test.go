package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
	"github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.listen != "127.0.0.1:8000" {
		t.Errorf("listen %q", cfg.listen)
	}
	if cfg.opts.InputTokens != 6 || cfg.opts.OutputTokens != 6 {
		t.Errorf("tokens %d/%d, want the seed's 6/6", cfg.opts.InputTokens, cfg.opts.OutputTokens)
	}
	if !slices.Equal(cfg.opts.Models, sim.DefaultModels()) {
		t.Errorf("models %v", cfg.opts.Models)
	}
}

func TestParseConfigFlags(t *testing.T) {
	cfg, err := parseConfig([]string{
		"--listen", "127.0.0.1:0", "--input-tokens", "3", "--output-tokens", "40",
		"--ttft", "150ms", "--token-delay", "20ms", "--models", " a, b ,,c", "--name", "east", "--log-level", "debug",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := sim.Options{InputTokens: 3, OutputTokens: 40, TimeToFirstToken: 150 * time.Millisecond,
		TokenDelay: 20 * time.Millisecond, Models: []string{"a", "b", "c"}, Name: "east"}
	if !reflect.DeepEqual(cfg.opts, want) {
		t.Errorf("options %+v, want %+v", cfg.opts, want)
	}
	if cfg.logLevel.String() != "DEBUG" {
		t.Errorf("log level %v", cfg.logLevel)
	}
}

func TestParseConfigRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--output-tokens", "0"},
		{"--input-tokens", "-2"},
		{"--ttft", "-1s"},
		{"--token-delay", "soon"},
		{"--models", " , "},
		{"--log-level", "loud"},
		{"extra-argument"},
	} {
		_, err := parseConfig(args, io.Discard)
		var usage usageError
		if !errors.As(err, &usage) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var logs testutil.Buffer
	ran := make(chan error, 1)
	go func() { ran <- run(ctx, []string{"--listen", "127.0.0.1:0", "--name", "main-test"}, &logs) }()

	addrPattern := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+)`)
	var addr string
	testutil.Eventually(t, 30*time.Second, "the listening log line", func() bool {
		if m := addrPattern.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})

	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"qwen3","messages":[{"role":"user","content":"Hello from Alice!"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get(sim.HeaderBackend) != "main-test" || !strings.Contains(string(body), `"total_tokens":12`) {
		t.Errorf("unexpected answer: %s %s", resp.Header, body)
	}

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("run returned %v after cancel", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
