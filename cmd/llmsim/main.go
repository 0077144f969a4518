// Command llmsim runs a deterministic OpenAI- and Anthropic-compatible LLM simulator for tests,
// demos and benchmarks. Every answer is the same text with exact, configurable token usage (by
// default 6 input + 6 output tokens, like the seed demo's backend). See package sim for the
// endpoints and the per-request x-llmsim-* knobs.
//
//	llmsim --listen 127.0.0.1:8000 --output-tokens 6 --ttft 200ms --token-delay 20ms
//
// With --require-key K it answers 401 to any request without "Authorization: Bearer K", as a
// hosted API does, so a test can prove a gateway sent the backend's key.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

// shutdownGrace is how long in-flight answers get to finish after SIGINT/SIGTERM before their
// connections are closed.
const shutdownGrace = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	var usage usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &usage):
		if usage.problem != "" {
			fmt.Fprintln(os.Stderr, "llmsim:", usage.problem)
		}
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "llmsim:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line. An empty problem means the flag package has already
// reported it together with the usage text.
type usageError struct{ problem string }

func (e usageError) Error() string {
	if e.problem == "" {
		return "invalid command line"
	}
	return e.problem
}

// config is the parsed command line.
type config struct {
	listen   string
	logLevel slog.Level
	opts     sim.Options
	// requireKey, when set, is the API key every request must carry as a bearer token.
	requireKey string
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var models string
	fs := flag.NewFlagSet("llmsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8000", "address to serve on")
	fs.IntVar(&cfg.opts.InputTokens, "input-tokens", sim.DefaultInputTokens, "prompt tokens reported per request")
	fs.IntVar(&cfg.opts.OutputTokens, "output-tokens", sim.DefaultOutputTokens, "completion tokens generated per request")
	fs.DurationVar(&cfg.opts.TimeToFirstToken, "ttft", 0, "delay before the first byte of each answer")
	fs.DurationVar(&cfg.opts.TokenDelay, "token-delay", 0, "delay between streamed tokens")
	fs.StringVar(&models, "models", strings.Join(sim.DefaultModels(), ","), "comma-separated models listed by GET /v1/models")
	fs.StringVar(&cfg.opts.Name, "name", sim.DefaultName, "backend name reported in the x-llmsim-backend header")
	fs.TextVar(&cfg.logLevel, "log-level", slog.LevelInfo, "log level; debug logs one line per request")
	fs.StringVar(&cfg.requireKey, "require-key", "", "answer 401 unless a request carries 'Authorization: Bearer <this key>', as a hosted API does")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, usageError{}
	}
	if fs.NArg() > 0 {
		return cfg, usageError{fmt.Sprintf("unexpected arguments: %q", fs.Args())}
	}

	var problems []string
	if cfg.opts.InputTokens < 1 {
		problems = append(problems, "--input-tokens must be at least 1")
	}
	if cfg.opts.OutputTokens < 1 {
		problems = append(problems, "--output-tokens must be at least 1")
	}
	if cfg.opts.TimeToFirstToken < 0 {
		problems = append(problems, "--ttft must not be negative")
	}
	if cfg.opts.TokenDelay < 0 {
		problems = append(problems, "--token-delay must not be negative")
	}
	for m := range strings.SplitSeq(models, ",") {
		if m = strings.TrimSpace(m); m != "" {
			cfg.opts.Models = append(cfg.opts.Models, m)
		}
	}
	if len(cfg.opts.Models) == 0 {
		problems = append(problems, "--models must name at least one model")
	}
	if len(problems) > 0 {
		return cfg, usageError{strings.Join(problems, "; ")}
	}
	return cfg, nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           sim.RequireKey(cfg.requireKey, sim.NewHandler(cfg.opts, logger)),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	logger.Info("llmsim listening",
		"addr", listener.Addr().String(),
		"name", cfg.opts.Name,
		"input_tokens", cfg.opts.InputTokens,
		"output_tokens", cfg.opts.OutputTokens,
		"ttft", cfg.opts.TimeToFirstToken,
		"token_delay", cfg.opts.TokenDelay,
		"models", cfg.opts.Models,
		"requires_key", cfg.requireKey != "",
	)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Info("llmsim shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
		// Streams with long token delays may outlive the grace period; drop them.
		_ = server.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
