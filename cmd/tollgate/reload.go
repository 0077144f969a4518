package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// reloader applies policy file contents: parse, translate, publish over xDS, hand the ext_proc
// server its new config. Any failure keeps everything that is served as it was.
type reloader struct {
	path   string
	env    policies.LookupEnv
	logger *slog.Logger
	xds    publisher
	// extProc is nil when the ext_proc server runs in another process.
	extProc *extproc.Server

	reloads       *prometheus.CounterVec
	lastSuccess   prometheus.Gauge
	policyVersion *prometheus.GaugeVec

	// retirement and requestTimeout (the served policy's listener.requestTimeout) are only
	// used by apply, which runs one call at a time.
	retirement     quotaRetirement
	requestTimeout time.Duration

	mu     sync.Mutex
	status reloadStatus
}

// reloadStatus is what `tollgate status` shows about reloads.
type reloadStatus struct {
	LastAttempt   time.Time    `json:"last_attempt"`
	LastResult    string       `json:"last_result"` // "ok" or "failed"
	LastErrors    []string     `json:"last_errors,omitempty"`
	LastGoodAt    time.Time    `json:"last_good_at"`
	EnvoyVersion  string       `json:"envoy_version"`
	RateLimitVer  string       `json:"ratelimit_version"`
	Models        []string     `json:"models"`
	Quotas        []string     `json:"quotas"`
	RetiredQuotas []string     `json:"retired_quotas,omitempty"`
	FailureMode   string       `json:"ratelimit_failure_mode"`
	StreamUsage   string       `json:"stream_usage"` // extProc.streamUsage: who reads streams' usage
	ListenerURL   string       `json:"listener_url"`
	PolicyFile    string       `json:"policy_file"`
	Limits        limitsStatus `json:"limits"`
	AppliedChange bool         `json:"-"`
}

// publisher serves translated resources: *xds.Server in the control plane, or checkOnly in a
// process that serves no xDS but must accept and reject the same policies.
type publisher interface {
	Publish(ctx context.Context, r xds.Resources) (xds.PublishResult, error)
}

func newReloader(path string, env policies.LookupEnv, logger *slog.Logger, reg prometheus.Registerer, x publisher, ep *extproc.Server) *reloader {
	r := &reloader{
		path: path, env: env, logger: logger, xds: x, extProc: ep,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_policy_reloads_total",
			Help: "Policy loads by result (ok, failed).",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_policy_last_success_timestamp_seconds",
			Help: "Unix time of the last policy load that was applied.",
		}),
		policyVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_policy_info",
			Help: "1 for the policy version being served (the Envoy snapshot version).",
		}, []string{"version"}),
	}
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("failed")
	reg.MustRegister(r.reloads, r.lastSuccess, r.policyVersion)
	r.status.PolicyFile = path
	return r
}

// apply parses and serves one version of the policy file's content.
func (r *reloader) apply(ctx context.Context, content []byte) error {
	now := time.Now()
	p, err := policies.Parse(r.path, content, r.env)
	var out *translate.Output
	if err == nil {
		out, err = translate.Translate(p)
	}
	var res xds.PublishResult
	var retirement quotaRetirement
	if err == nil {
		var rateLimitConfigs []*rlsconfv3.RateLimitConfig
		rateLimitConfigs, retirement = r.retirement.plan(now, r.requestTimeout, out.RateLimitConfigs)
		res, err = r.xds.Publish(ctx, xds.NewResources(out.Listeners, out.Routes, out.Clusters, rateLimitConfigs))
	}
	if err != nil {
		r.fail(now, err)
		return err
	}
	r.retirement, r.requestTimeout = retirement, p.Listener.RequestTimeout.Duration
	if r.extProc != nil {
		r.extProc.Update(out.ExtProc)
	}

	r.reloads.WithLabelValues("ok").Inc()
	r.lastSuccess.Set(float64(now.Unix()))
	r.mu.Lock()
	if r.status.EnvoyVersion != res.EnvoyVersion {
		r.policyVersion.DeleteLabelValues(r.status.EnvoyVersion)
	}
	r.policyVersion.WithLabelValues(res.EnvoyVersion).Set(1)
	r.status.LastAttempt, r.status.LastResult, r.status.LastErrors = now, "ok", nil
	r.status.LastGoodAt = now
	r.status.EnvoyVersion, r.status.RateLimitVer = res.EnvoyVersion, res.RateLimitVersion
	r.status.Models, r.status.Quotas = modelNames(p), quotaSummaries(p)
	r.status.RetiredQuotas = retirement.summary()
	r.status.FailureMode = p.RateLimit.FailureMode
	r.status.StreamUsage = p.ExtProc.StreamUsage
	r.status.ListenerURL = fmt.Sprintf("http://%s:%d", p.Listener.Address, p.Listener.Port)
	r.status.Limits = policyLimits(p)
	r.mu.Unlock()

	if res.EnvoyChanged || res.RateLimitChanged {
		r.logger.Info("policy applied", "file", r.path, "envoy_version", res.EnvoyVersion,
			"ratelimit_version", res.RateLimitVersion, "models", len(p.Models), "quotas", len(p.Quotas))
	} else {
		r.logger.Info("policy unchanged; nothing to push", "file", r.path, "envoy_version", res.EnvoyVersion)
	}
	return nil
}

func (r *reloader) fail(at time.Time, err error) {
	r.reloads.WithLabelValues("failed").Inc()
	lines := errorLines(err)
	for _, l := range lines {
		r.logger.Error("policy rejected; still serving the last good version", "error", l)
	}
	r.mu.Lock()
	r.status.LastAttempt, r.status.LastResult, r.status.LastErrors = at, "failed", lines
	r.mu.Unlock()
}

func (r *reloader) snapshot() reloadStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.LastErrors = append([]string(nil), s.LastErrors...)
	s.RetiredQuotas = append([]string(nil), s.RetiredQuotas...)
	s.Limits.Backends = append([]backendLimits(nil), s.Limits.Backends...)
	if r.extProc != nil {
		s.Limits.InFlight = r.extProc.StreamsInFlight()
	}
	return s
}

func errorLines(err error) []string {
	var list *policies.Errors
	if errors.As(err, &list) {
		lines := make([]string, 0, len(list.List))
		for _, e := range list.List {
			lines = append(lines, e.Error())
		}
		return lines
	}
	return []string{err.Error()}
}

// resources groups translated output as the xDS server publishes it.
func resources(out *translate.Output) xds.Resources {
	return xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)
}

func modelNames(p *policies.Policy) []string {
	names := make([]string, 0, len(p.Models))
	for _, m := range p.Models {
		names = append(names, m.Name)
	}
	sort.Strings(names)
	return names
}

func quotaSummaries(p *policies.Policy) []string {
	out := make([]string, 0, len(p.Quotas))
	for _, q := range p.Quotas {
		out = append(out, fmt.Sprintf("%s: %s on %s", q.Name, q.Describe(), modelName(q.Model)))
	}
	sort.Strings(out)
	return out
}
