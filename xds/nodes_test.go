package xds

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestSlogAdapterLevels(t *testing.T) {
	var buf bytes.Buffer
	a := slogAdapter{logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	a.Debugf("debug %d", 1)
	a.Infof("chatter %d", 2)
	a.Warnf("warning %d", 3)
	a.Errorf("failure %d", 4)

	out := buf.String()
	if strings.Contains(out, "debug 1") || strings.Contains(out, "chatter 2") {
		t.Errorf("debug and info chatter should be debug records:\n%s", out)
	}
	if !strings.Contains(out, "level=WARN msg=\"warning 3\"") || !strings.Contains(out, "level=ERROR msg=\"failure 4\"") {
		t.Errorf("warnings and errors should keep their level:\n%s", out)
	}
}
