package rls

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// logBridge sends the upstream service's log lines, which it writes to logrus' process-wide
// standard logger, to tollgate's slog logger (marked source=envoyproxy/ratelimit), and turns
// its log.Fatal calls into errors.
type logBridge struct {
	logger *slog.Logger
	// failed is closed by the first Fatal log call, whose message fatalMsg keeps.
	failed   chan struct{}
	mu       sync.Mutex
	hasFatal bool
	fatalMsg string
}

// installLogBridge takes over logrus' standard logger: output, level, hooks and exit
// function. That logger is process-wide state the upstream service offers no way around, so
// the last Run in a process wins.
//
// The exit function is the important part. The upstream code answers some failures (a
// listener it cannot open, a bad setting) with logrus' Fatal, which calls os.Exit from
// inside a library. Here the calling goroutine ends instead (runtime.Goexit runs its
// deferred calls) and Run reports the message as an error.
func installLogBridge(logger *slog.Logger, level logrus.Level) *logBridge {
	b := &logBridge{logger: logger.With("source", "envoyproxy/ratelimit"), failed: make(chan struct{})}
	std := logrus.StandardLogger()
	hooks := make(logrus.LevelHooks)
	hooks.Add(b)
	std.ReplaceHooks(hooks)
	std.SetOutput(io.Discard)
	std.SetLevel(level)
	std.ExitFunc = func(int) { runtime.Goexit() }
	return b
}

// Levels implements logrus.Hook.
func (b *logBridge) Levels() []logrus.Level { return logrus.AllLevels }

// Fire implements logrus.Hook.
func (b *logBridge) Fire(e *logrus.Entry) error {
	msg := strings.TrimSpace(e.Message)
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, slog.Any(k, v))
	}
	level := slogLevel(e.Level)
	if level == slog.LevelWarn && isStartupNotice(msg) {
		level = slog.LevelInfo
	}
	b.logger.LogAttrs(context.Background(), level, msg, attrs...)
	if e.Level <= logrus.FatalLevel {
		b.mu.Lock()
		if !b.hasFatal {
			b.hasFatal, b.fatalMsg = true, msg
			close(b.failed)
		}
		b.mu.Unlock()
	}
	return nil
}

// fatalError returns the first Fatal message as an error, or nil if there was none.
func (b *logBridge) fatalError() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.hasFatal {
		return nil
	}
	return fmt.Errorf("ratelimit service failed: %s", b.fatalMsg)
}

func slogLevel(l logrus.Level) slog.Level {
	switch {
	case l <= logrus.ErrorLevel:
		return slog.LevelError
	case l == logrus.WarnLevel:
		return slog.LevelWarn
	case l == logrus.InfoLevel:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

// isStartupNotice reports the upstream service's routine start-up lines, which it logs as
// warnings so that they show at its default level (WARN). In tollgate's logs a warning should
// mean something needs a look, so these become info.
func isStartupNotice(msg string) bool {
	for _, prefix := range []string{
		"Listening for ",
		"connecting to redis on ",
		"Redis pool ",
		"Creating single with urls ",
		"enabling authentication to redis ",
		"enabling TLS to redis ",
	} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}
