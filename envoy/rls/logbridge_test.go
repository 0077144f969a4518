package rls

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestLogBridge(t *testing.T) {
	logs := &testutil.Buffer{}
	bridge := installLogBridge(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), logrus.InfoLevel)

	logrus.WithField("domain", "tollgate").Warn("near the limit")
	logrus.Debug("too detailed for info")
	if got := logs.String(); !strings.Contains(got, `level=WARN msg="near the limit" source=envoyproxy/ratelimit domain=tollgate`) {
		t.Errorf("warning not forwarded with its fields:\n%s", got)
	}
	logrus.Warnf("Listening for gRPC on '%s'", "127.0.0.1:8081")
	if got := logs.String(); !strings.Contains(got, `level=INFO msg="Listening for gRPC on '127.0.0.1:8081'"`) {
		t.Errorf("routine start-up warning not logged as info:\n%s", got)
	}
	if strings.Contains(logs.String(), "too detailed") {
		t.Error("debug line passed an info level")
	}
	if bridge.fatalError() != nil {
		t.Fatal("fatal error reported before any Fatal call")
	}

	// Fatal must end only the calling goroutine, not the process, and be reported.
	ended := make(chan struct{})
	reachedAfterFatal := false
	go func() {
		defer close(ended)
		logrus.Fatalf("Failed to listen for gRPC on '%s'", "127.0.0.1:1")
		reachedAfterFatal = true
	}()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("goroutine calling Fatal did not end")
	}
	if reachedAfterFatal {
		t.Error("code after Fatal ran")
	}
	select {
	case <-bridge.failed:
	default:
		t.Error("failed channel not closed by Fatal")
	}
	err := bridge.fatalError()
	if err == nil || !strings.Contains(err.Error(), "Failed to listen for gRPC on '127.0.0.1:1'") {
		t.Errorf("fatalError() = %v", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("Fatal not logged as an error:\n%s", logs.String())
	}
}
