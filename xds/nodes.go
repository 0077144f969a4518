package xds

import (
	"context"
	"fmt"
	"log/slog"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// nodeGroups maps a connecting node to the snapshot it is served. It is the snapshot cache's
// NodeHash: every Envoy shares one snapshot regardless of its node id, so adding an Envoy needs
// no change on the control plane.
type nodeGroups struct {
	rateLimitNodeID string
}

// ID implements the snapshot cache's NodeHash.
func (g nodeGroups) ID(node *corev3.Node) string {
	return g.of(node.GetId())
}

func (g nodeGroups) of(nodeID string) string {
	if nodeID == g.rateLimitNodeID {
		return GroupRateLimit
	}
	return GroupEnvoy
}

// slogAdapter lets go-control-plane log through the caller's slog logger. Its Debugf and Infof
// messages describe every watch and response, which is noise at info level, so both become
// debug records; warnings and errors keep their level.
type slogAdapter struct {
	logger *slog.Logger
}

func (a slogAdapter) Debugf(format string, args ...any) { a.log(slog.LevelDebug, format, args) }
func (a slogAdapter) Infof(format string, args ...any)  { a.log(slog.LevelDebug, format, args) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.log(slog.LevelWarn, format, args) }
func (a slogAdapter) Errorf(format string, args ...any) { a.log(slog.LevelError, format, args) }

func (a slogAdapter) log(level slog.Level, format string, args []any) {
	ctx := context.Background()
	// Formatting is skipped when the level is off: the cache logs on every request.
	if !a.logger.Enabled(ctx, level) {
		return
	}
	a.logger.Log(ctx, level, fmt.Sprintf(format, args...))
}
