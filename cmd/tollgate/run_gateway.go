// `tollgate run`, the gateway's lifecycle: its parts started in order, watched, and stopped in
// the reverse order.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/envoy/rls"
)

const (
	// partStartTimeout bounds the wait for the ratelimit service and the control plane to
	// answer; each bounds its own start as well, this only guards against a hang.
	partStartTimeout = 60 * time.Second
	// envoyReadyTimeout bounds the wait for Envoy's first complete configuration.
	envoyReadyTimeout = 60 * time.Second
)

// runGateway runs the whole gateway until ctx ends or a part fails: counters, ratelimit
// service, control plane and Envoy, started in that order and stopped in the reverse one, so
// Envoy never runs without the services it calls. It returns nil after a stop asked for by
// ctx; an unexpected exit of any part is an error.
func runGateway(ctx context.Context, o runOptions, logger *slog.Logger, stdout io.Writer, reclaimSignals func()) error {
	plan, err := planRun(o)
	if err != nil {
		return err
	}
	g := &gateway{logger: logger}
	ready, startErr := g.start(ctx, plan, reclaimSignals)
	if ready {
		printBanner(stdout, plan, g)
		g.supervise(ctx)
	}
	stopErr := g.stop()
	return errors.Join(startErr, g.failures(), stopErr)
}

// gateway is the running parts of `tollgate run`.
type gateway struct {
	logger       *slog.Logger
	counters     *counters
	rateLimit    *task
	controlPlane *task
	envoy        *launch.Process
	stateDir     string
}

// start starts every part and waits for each to serve. It reports false without an error when
// ctx ended or a part exited while starting (failures reports which).
func (g *gateway) start(ctx context.Context, plan *runPlan, reclaimSignals func()) (bool, error) {
	var err error
	g.counters, err = startCounters(g.logger, plan.redisURL)
	if err != nil {
		return false, err
	}
	rlOpts := plan.rateLimit
	rlOpts.RedisURL = g.counters.url
	// The ext_proc server below runs in this process too: its quota checks call the service
	// directly rather than over loopback gRPC.
	local := rls.NewLocal(rlOpts.GRPCAddr)
	rlOpts.Local = local
	rlLogger := g.logger.With("component", "ratelimit")
	g.rateLimit = startTask("ratelimit service", func(ctx context.Context) error {
		return rls.Run(ctx, rlLogger, rlOpts)
	})
	health := "http://" + launch.DialAddr(rlOpts.HTTPAddr) + "/healthcheck"
	if ok, err := g.await(ctx, "ratelimit service", partStartTimeout, polling(func(ctx context.Context) error {
		// Any answer will do: the service is up; its limits are awaited below.
		_, err := httpGet(ctx, health)
		return err
	})); !ok {
		return false, err
	}
	// The upstream service has installed its signal handlers by the time it answers HTTP.
	reclaimSignals()

	so := serveOptions{
		policyFile:    plan.opts.policyFile,
		xdsAddr:       plan.opts.xdsAddr,
		extProcAddr:   plan.opts.extProcAddr,
		metricsAddr:   plan.opts.metricsAddr,
		rateLimitNode: envoy.DefaultRateLimitNode,
		debounce:      100 * time.Millisecond,
		charges:       chargeOptions{redisURL: g.counters.url, spool: plan.opts.charges.spool, local: local},
		quotaAdmin:    plan.opts.quotaAdmin,
	}
	cpLogger := g.logger
	g.controlPlane = startTask("control plane", func(ctx context.Context) error {
		return serve(ctx, so, cpLogger)
	})
	healthz := "http://" + launch.DialAddr(plan.opts.metricsAddr) + "/healthz"
	if ok, err := g.await(ctx, "control plane", partStartTimeout, polling(func(ctx context.Context) error {
		status, err := httpGet(ctx, healthz)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("/healthz answered %d", status)
		}
		return err
	})); !ok {
		return false, err
	}

	// Envoy fails open while the ratelimit service has no limits, so it starts only once the
	// service answers for the policy's quotas (its xDS client retries about once a second).
	if probe := limitsProbe(plan.policy, rlOpts.GRPCAddr); probe != nil {
		if ok, err := g.await(ctx, "ratelimit service (loading the policy's limits)", partStartTimeout, polling(probe)); !ok {
			return false, err
		}
	}

	boot, err := bootstrap.YAML(bootstrap.Options{XDSAddress: launch.DialAddr(plan.opts.xdsAddr), AdminAddress: plan.opts.adminAddr, Overload: plan.opts.overload})
	if err != nil {
		return false, err
	}
	g.stateDir, err = os.MkdirTemp("", "tollgate-run-")
	if err != nil {
		return false, fmt.Errorf("state directory for the Envoy bootstrap: %w", err)
	}
	g.envoy, err = launch.Start(launch.Options{
		Binary:       plan.envoyBin,
		Bootstrap:    boot,
		ConfigDir:    g.stateDir,
		LogDir:       plan.logDir,
		AdminAddress: plan.opts.adminAddr,
		// Envoy flushes its log files every 10s by default; a second keeps `tail -f` live.
		Args: append([]string{"--log-level", plan.opts.envoyLogLevel, "--file-flush-interval-msec", "1000"},
			quietExtProcArgs(plan.opts.envoyLogLevel)...),
	})
	if err != nil {
		return false, err
	}
	g.logger.Info("envoy started; its access log and its own log go to files, not here",
		"pid", g.envoy.Pid(), "binary", plan.envoyBin, "access_log", g.envoy.AccessLogPath(), "log", g.envoy.LogPath())
	return g.await(ctx, "Envoy", envoyReadyTimeout, func(ctx context.Context) error {
		err := g.envoy.WaitReady(ctx)
		if err != nil && g.envoy.Err() != nil {
			return nil // the exit is reported by failures
		}
		return err
	})
}

// await runs wait until it returns, bounded by timeout, ctx and the life of every part started
// so far. It returns true only when wait succeeded with everything still running.
func (g *gateway) await(ctx context.Context, what string, timeout time.Duration, wait func(context.Context) error) (bool, error) {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rl, cp, ev := g.doneChannels()
	go func() {
		select {
		case <-rl:
		case <-cp:
		case <-ev:
		case <-waitCtx.Done():
			return
		}
		cancel()
	}()
	err := wait(waitCtx)
	switch {
	case ctx.Err() != nil || g.exited():
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%s did not start: %w", what, err)
	}
	return true, nil
}

// doneChannels returns the channels closed when each part exits; a part not started yet has a
// nil channel, which never fires in a select.
func (g *gateway) doneChannels() (rateLimit, controlPlane, envoy <-chan struct{}) {
	if g.rateLimit != nil {
		rateLimit = g.rateLimit.done
	}
	if g.controlPlane != nil {
		controlPlane = g.controlPlane.done
	}
	if g.envoy != nil {
		envoy = g.envoy.Done()
	}
	return rateLimit, controlPlane, envoy
}

// exited reports whether any started part has exited.
func (g *gateway) exited() bool {
	rl, cp, ev := g.doneChannels()
	return launch.Closed(rl) || launch.Closed(cp) || launch.Closed(ev)
}

// supervise blocks until ctx ends or a part exits on its own; a part's exit is logged at once,
// loudly, because the gateway is then down.
func (g *gateway) supervise(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-g.envoy.Done():
		g.logger.Error("Envoy exited unexpectedly: no data plane; stopping everything", "pid", g.envoy.Pid())
	case <-g.rateLimit.done:
		g.logger.Error("the ratelimit service stopped unexpectedly; stopping everything", "error", g.rateLimit.err)
	case <-g.controlPlane.done:
		g.logger.Error("the control plane stopped unexpectedly; stopping everything", "error", g.controlPlane.err)
	}
}

// stop stops what was started, Envoy first so no request reaches a stopped service, then the
// ratelimit service, the control plane and the counters. It returns errors that happened while
// stopping; parts that had already exited on their own are reported by failures.
func (g *gateway) stop() error {
	var errs []error
	if g.envoy != nil && g.envoy.Err() == nil {
		g.logger.Info("stopping Envoy", "pid", g.envoy.Pid())
		if err := g.envoy.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []*task{g.rateLimit, g.controlPlane} {
		if t == nil || t.finished() {
			continue
		}
		g.logger.Info("stopping the " + t.name)
		if err := t.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the %s: %w", t.name, err))
		}
	}
	if g.counters != nil {
		g.counters.close()
	}
	if g.stateDir != "" {
		_ = os.RemoveAll(g.stateDir)
	}
	if len(errs) == 0 {
		g.logger.Info("stopped")
	}
	return errors.Join(errs...)
}

// failures describes every part that exited without being asked to.
func (g *gateway) failures() error {
	var errs []error
	if g.envoy != nil {
		if err := g.envoy.Err(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []*task{g.rateLimit, g.controlPlane} {
		if t != nil && t.finished() && t.unexpected {
			if t.err != nil {
				errs = append(errs, fmt.Errorf("the %s stopped: %w", t.name, t.err))
			} else {
				errs = append(errs, fmt.Errorf("the %s stopped unexpectedly", t.name))
			}
		}
	}
	return errors.Join(errs...)
}

// quietExtProcArgs keeps Envoy's ext_proc filter to errors unless Envoy logs in detail (debug,
// trace): it writes a warning for every request it cannot open a stream for, which is every
// request refused by the in-flight bound. During a spike that is thousands of lines a second,
// disk and CPU spent on what the usage log and Envoy's stats already record per request.
func quietExtProcArgs(envoyLogLevel string) []string {
	switch envoyLogLevel {
	case "trace", "debug":
		return nil
	}
	return []string{"--component-log-level", "ext_proc:error"}
}
