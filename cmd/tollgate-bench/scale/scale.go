// Package scale measures the control plane in process as policies grow: parse, translate and
// publish times, the size of what is published, the heap a published snapshot keeps, and how
// long the ratelimit service takes to start answering with the limits of a large policy.
package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// PolicyYAML is a policy with n models, n quotas (one per model) and n user overrides (one per
// quota). limit is every quota's default limit; overrides get twice as much.
func PolicyYAML(n int, limit uint64) []byte {
	var b strings.Builder
	b.WriteString("backends:\n  - {name: sim, url: \"http://127.0.0.1:8000\"}\nmodels:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: model-%d, backend: sim}\n", i)
	}
	b.WriteString("costs:\n  - {name: tokens, type: TotalToken}\nquotas:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {model: model-%d, cost: tokens, limit: %d, per: hour, overrides: [{user: user-%d, limit: %d}]}\n",
			i, limit, i, 2*limit)
	}
	return []byte(b.String())
}

// Size is what one policy size costs the control plane.
type Size struct {
	N int
	// Medians over the repetitions. Publish is into a fresh server; Republish is the next
	// publish into the same server with every limit changed, as a reload does.
	Parse, Translate, Publish, Republish time.Duration
	// Resources counts published resources; EnvoyBytes and RateLimitBytes are their
	// marshalled sizes (what a client downloads).
	Resources                  int
	EnvoyBytes, RateLimitBytes int
	// RetainedHeap is the live heap that publishing the policy added (after GC): what the
	// control plane keeps for it.
	RetainedHeap int64
	// Allocated is what one parse + translate + publish allocates in total.
	Allocated uint64
}

// TranslatePublish is the target metric: the time from a parsed policy to a published snapshot.
func (s Size) TranslatePublish() time.Duration { return s.Translate + s.Publish }

// Measure parses, translates and publishes PolicyYAML(n) reps times, each into a fresh xDS
// server, and reports medians. One untimed round first pays for one-time set-up (type
// registries, caches) that a running control plane has already paid.
func Measure(ctx context.Context, n, reps int) (Size, error) {
	reps = max(reps, 1) + 1
	data := PolicyYAML(n, 1000)
	changed, err := policies.Parse("scale.yaml", PolicyYAML(n, 1001), nil)
	if err != nil {
		return Size{}, err
	}
	changedOut, err := translate.Translate(changed)
	if err != nil {
		return Size{}, err
	}
	s := Size{N: n}
	var parse, trans, pub, republish []time.Duration
	for rep := range reps {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		t0 := time.Now()
		p, err := policies.Parse("scale.yaml", data, nil)
		if err != nil {
			return s, err
		}
		t1 := time.Now()
		out, err := translate.Translate(p)
		if err != nil {
			return s, err
		}
		t2 := time.Now()
		server := xds.NewServer(nil, nil, xds.Options{})
		if _, err := server.Publish(ctx, xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)); err != nil {
			return s, err
		}
		t3 := time.Now()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if _, err := server.Publish(ctx, xds.NewResources(changedOut.Listeners, changedOut.Routes, changedOut.Clusters, changedOut.RateLimitConfigs)); err != nil {
			return s, err
		}
		t4 := time.Now()
		if rep == 0 {
			continue
		}
		parse, trans, pub = append(parse, t1.Sub(t0)), append(trans, t2.Sub(t1)), append(pub, t3.Sub(t2))
		republish = append(republish, t4.Sub(t3))
		s.Allocated = after.TotalAlloc - before.TotalAlloc
		s.Resources, s.EnvoyBytes, s.RateLimitBytes = sizes(out)
	}
	s.Parse, s.Translate, s.Publish, s.Republish = median(parse), median(trans), median(pub), median(republish)
	heap, err := retainedHeap(ctx, data)
	if err != nil {
		return s, err
	}
	s.RetainedHeap = heap
	return s, nil
}

// retainedHeap publishes the policy into a fresh server, drops everything else, and returns
// how much the live heap grew.
func retainedHeap(ctx context.Context, data []byte) (int64, error) {
	base := liveHeap()
	server := xds.NewServer(nil, nil, xds.Options{})
	err := func() error {
		p, err := policies.Parse("scale.yaml", data, nil)
		if err != nil {
			return err
		}
		out, err := translate.Translate(p)
		if err != nil {
			return err
		}
		_, err = server.Publish(ctx, xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs))
		return err
	}()
	if err != nil {
		return 0, err
	}
	held := liveHeap()
	runtime.KeepAlive(server)
	return held - base, nil
}

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func sizes(out *translate.Output) (count, envoyBytes, rateLimitBytes int) {
	for _, l := range out.Listeners {
		envoyBytes += proto.Size(l)
	}
	for _, r := range out.Routes {
		envoyBytes += proto.Size(r)
	}
	for _, c := range out.Clusters {
		envoyBytes += proto.Size(c)
	}
	for _, c := range out.RateLimitConfigs {
		rateLimitBytes += proto.Size(c)
	}
	count = len(out.Listeners) + len(out.Routes) + len(out.Clusters) + len(out.RateLimitConfigs)
	return count, envoyBytes, rateLimitBytes
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// PublishLoop parses, translates and publishes PolicyYAML(n) into one server for at least d
// (and at least twice), alternating two limits so every publish is a real change, and returns
// how many rounds it ran. It is the control-plane workload the benchmark profiles.
func PublishLoop(ctx context.Context, n int, d time.Duration) (int, error) {
	data := [2][]byte{PolicyYAML(n, 1000), PolicyYAML(n, 1001)}
	server := xds.NewServer(nil, nil, xds.Options{})
	start := time.Now()
	rounds := 0
	for ; rounds < 2 || time.Since(start) < d; rounds++ {
		if err := ctx.Err(); err != nil {
			return rounds, err
		}
		if _, _, err := publish(ctx, server, data[rounds%2]); err != nil {
			return rounds, err
		}
	}
	return rounds, nil
}

// RateLimitStarter starts a ratelimit service that takes its configuration from xdsAddr and
// returns its gRPC address once it has loaded one.
type RateLimitStarter func(ctx context.Context, xdsAddr string) (string, error)

// RateLimitLoad is how long the ratelimit service took to answer with a large policy's limits.
type RateLimitLoad struct {
	N int
	// Publish is the xds.Publish call with the service connected.
	Publish time.Duration
	// Loaded is from the start of Publish to the first check answering with the new limit.
	Loaded time.Duration
}

// MeasureRateLimitLoad serves a small policy over an in-process ADS server, starts the
// ratelimit service on it, then publishes PolicyYAML(n) with new limits and polls the service
// (check only) until it answers with the new limit of the policy's last quota.
func MeasureRateLimitLoad(ctx context.Context, n int, start RateLimitStarter) (RateLimitLoad, error) {
	res := RateLimitLoad{N: n}
	server := xds.NewServer(nil, nil, xds.Options{})
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	g := grpc.NewServer()
	server.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	const small, smallLimit, bigLimit = 10, 1000, 1500
	if _, _, err := publish(ctx, server, PolicyYAML(small, smallLimit)); err != nil {
		return res, err
	}
	addr, err := start(ctx, lis.Addr().String())
	if err != nil {
		return res, err
	}
	client, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		return res, err
	}
	defer func() { _ = client.Close(context.Background()) }()
	if err := awaitLimit(ctx, client, addr, PolicyYAML(small, smallLimit), small-1, smallLimit, 30*time.Second); err != nil {
		return res, err
	}

	big := PolicyYAML(n, bigLimit)
	p, err := policies.Parse("scale.yaml", big, nil)
	if err != nil {
		return res, err
	}
	out, err := translate.Translate(p)
	if err != nil {
		return res, err
	}
	started := time.Now()
	if _, err := server.Publish(ctx, xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)); err != nil {
		return res, err
	}
	res.Publish = time.Since(started)
	if err := awaitLimit(ctx, client, addr, big, n-1, bigLimit, 2*time.Minute); err != nil {
		return res, err
	}
	res.Loaded = time.Since(started)
	return res, nil
}

func publish(ctx context.Context, server *xds.Server, data []byte) (*policies.Policy, xds.PublishResult, error) {
	p, err := policies.Parse("scale.yaml", data, nil)
	if err != nil {
		return nil, xds.PublishResult{}, err
	}
	out, err := translate.Translate(p)
	if err != nil {
		return nil, xds.PublishResult{}, err
	}
	r, err := server.Publish(ctx, xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs))
	return p, r, err
}

// awaitLimit polls the service until the quota of model-<model> (for a user without an
// override) reports limit.
func awaitLimit(ctx context.Context, client *rlsclient.Client, target string, data []byte, model int, limit uint64, timeout time.Duration) error {
	p, err := policies.Parse("scale.yaml", data, nil)
	if err != nil {
		return err
	}
	quotas := translate.UserQuotas(p, "bench-user", "", fmt.Sprintf("model-%d", model), time.Now())
	if len(quotas) == 0 {
		return errors.New("no quota for the probed model")
	}
	d := rlsclient.Descriptor{Entries: quotas[0].Entries}
	return proc.Poll(ctx, timeout, 2*time.Millisecond, fmt.Sprintf("ratelimit service answering with limit %d", limit), func() error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := client.Check(cctx, target, p.RateLimit.Domain, []rlsclient.Descriptor{d}, 2*time.Second)
		if err != nil {
			return err
		}
		if st[0].Limit.PerWindow != limit {
			return fmt.Errorf("limit %d", st[0].Limit.PerWindow)
		}
		return nil
	})
}
