package xds

import (
	"errors"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/proto"

	// Linked so Check can open and validate the router filter's packed config too.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
)

// Check runs every check Publish runs, without publishing:
//   - each resource is of the right type, named, unique within its type, and passes
//     protoc-gen-validate's ValidateAll — including every packed (Any) config this binary
//     can decode, such as the HTTP connection manager and its filters;
//   - RateLimitConfigs pass the rules the ratelimit service enforces when loading them;
//   - references resolve: route actions (cluster, weighted clusters, mirrors) name existing
//     clusters, every HTTP connection manager's rds.route_config_name names an existing route
//     config, ext_proc filters name existing clusters, and every route config is
//     used by some listener;
//   - go-control-plane's Snapshot.Consistent() passes.
//
// The error, built with errors.Join, lists every problem found, one per line, sorted.
func Check(r Resources) error {
	_, err := prepare(r)
	return err
}

// Versions runs Check and returns the versions Publish would serve r under, without serving
// anything. A process that applies the policy but serves no xDS (a standalone ext_proc
// server) accepts and rejects exactly what the control plane does, and can report the same
// version.
func Versions(r Resources) (envoyVersion, rateLimitVersion string, err error) {
	p, err := prepare(r)
	if err != nil {
		return "", "", err
	}
	return p.envoyVersion, p.rateLimitVersion, nil
}

// prepared is a checked configuration, ready to install.
type prepared struct {
	envoy, rateLimit               *cachev3.Snapshot
	envoyVersion, rateLimitVersion string
}

// problems collects everything wrong with a configuration so one error can list it all.
type problems []string

func (p *problems) addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	sorted := slices.Clone(p)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	errs := make([]error, len(sorted))
	for i, msg := range sorted {
		errs[i] = errors.New(msg)
	}
	return errors.Join(errs...)
}

func prepare(r Resources) (*prepared, error) {
	return prepareCached(r, nil)
}

// prepareCached is prepare reusing, through cache (which may be nil), what inspecting
// unchanged resources and packed configs found before.
func prepareCached(r Resources, cache *inspectionCache) (*prepared, error) {
	defer cache.rotate()
	var probs problems
	reach := make(anyReach)
	listeners := collect[*listenerv3.Listener](&probs, reach, cache, "listener", "Listeners", r.Listeners)
	routes := collect[*routev3.RouteConfiguration](&probs, reach, cache, "route config", "Routes", r.Routes)
	clusters := collect[*clusterv3.Cluster](&probs, reach, cache, "cluster", "Clusters", r.Clusters)
	rlConfigs := collect[*rlsconfv3.RateLimitConfig](&probs, reach, cache, "ratelimit config", "RateLimitConfigs", r.RateLimitConfigs)

	checkReferences(&probs, listeners, routes, clusters)
	checkRateLimitConfigs(&probs, rlConfigs)
	if err := probs.err(); err != nil {
		return nil, err
	}

	p := &prepared{
		envoyVersion: contentVersion(
			encodedResources(resource.ListenerType, listeners),
			encodedResources(resource.RouteType, routes),
			encodedResources(resource.ClusterType, clusters)),
		rateLimitVersion: contentVersion(encodedResources(resource.RateLimitConfigType, rlConfigs)),
	}
	var err error
	p.envoy, err = cachev3.NewSnapshot(p.envoyVersion, map[resource.Type][]types.Resource{
		resource.ListenerType: served(listeners),
		resource.RouteType:    served(routes),
		resource.ClusterType:  served(clusters),
	})
	if err != nil {
		return nil, fmt.Errorf("building envoy snapshot: %w", err)
	}
	p.rateLimit, err = cachev3.NewSnapshot(p.rateLimitVersion, map[resource.Type][]types.Resource{
		resource.RateLimitConfigType: served(rlConfigs),
	})
	if err != nil {
		return nil, fmt.Errorf("building ratelimit snapshot: %w", err)
	}
	// Our own checks cover what Consistent checks and report it more precisely; it stays as a
	// safety net in case the two ever disagree.
	if err := p.envoy.Consistent(); err != nil {
		return nil, fmt.Errorf("envoy snapshot is inconsistent: %w", err)
	}
	if err := p.rateLimit.Consistent(); err != nil {
		return nil, fmt.Errorf("ratelimit snapshot is inconsistent: %w", err)
	}
	return p, nil
}

// namedMessage is every resource type tollgate serves.
type namedMessage interface {
	proto.Message
	GetName() string
}

// entry is one accepted resource.
type entry[T namedMessage] struct {
	name string
	msg  T
	// packed are the packed configs inside msg that could be decoded.
	packed []proto.Message
	// encoded is msg's deterministic encoding (of a canonical copy if needed), for the version.
	encoded []byte
}

// collect checks one slice of Resources on its own and returns its usable entries: those
// of the right type with a unique, non-empty name. Entries that fail validation are still
// returned so references to them do not cause a second, misleading problem.
func collect[T namedMessage](probs *problems, reach anyReach, cache *inspectionCache, kind, field string, in []types.Resource) []entry[T] {
	var zero T
	want := zero.ProtoReflect().Descriptor().FullName()
	// Only listeners' packed configs are read after this (by checkReferences); keeping the
	// others decoded would only hold memory.
	_, keepPacked := any(zero).(*listenerv3.Listener)
	seen := make(map[string]bool, len(in))
	out := make([]entry[T], 0, len(in))
	for i, res := range in {
		if res == nil {
			probs.addf("%s[%d]: is nil", field, i)
			continue
		}
		msg, ok := res.(T)
		if !ok {
			probs.addf("%s[%d]: is a %s, want %s", field, i, res.ProtoReflect().Descriptor().FullName(), want)
			continue
		}
		if !msg.ProtoReflect().IsValid() {
			probs.addf("%s[%d]: is nil", field, i)
			continue
		}

		name := msg.GetName()
		label := fmt.Sprintf("%s %q", kind, name)
		switch {
		case name == "":
			label = fmt.Sprintf("%s[%d] (%s)", field, i, kind)
			probs.addf("%s: name is empty", label)
		case seen[name]:
			probs.addf("%s: defined more than once", label)
			continue
		}
		seen[name] = true

		// The encoding identifies the content, so an unchanged resource is inspected once.
		encoded, err := marshalDeterministic(msg)
		if err != nil {
			probs.addf("%s: cannot encode: %v", label, err)
		}
		var found *resourceInspection
		if err == nil && cache != nil {
			key := resourceKey(want, encoded)
			if found = cache.resource(key); found == nil {
				found = inspectResource(msg, encoded, reach, cache, keepPacked)
				cache.storeResource(key, found)
			}
		} else {
			found = inspectResource(msg, encoded, reach, cache, keepPacked)
		}
		for _, p := range found.problems {
			probs.addf("%s: %s", label, p)
		}
		if name == "" {
			continue
		}
		out = append(out, entry[T]{name: name, msg: msg, packed: found.packed, encoded: found.encoded})
	}
	return out
}

// served returns the messages of entries as snapshot resources. The snapshot keeps the
// caller's messages rather than copies, so they must not be modified after Publish.
func served[T namedMessage](entries []entry[T]) []types.Resource {
	out := make([]types.Resource, len(entries))
	for i, e := range entries {
		out[i] = e.msg
	}
	return out
}

func names[T namedMessage](entries []entry[T]) map[string]bool {
	set := make(map[string]bool, len(entries))
	for _, e := range entries {
		set[e.name] = true
	}
	return set
}

// checkReferences finds names that point at nothing. Envoy would accept most of these and
// fail only at request time (a 503 for a missing cluster, a listener stuck warming for a
// missing route config), so they are caught here instead.
func checkReferences(probs *problems, listeners []entry[*listenerv3.Listener], routes []entry[*routev3.RouteConfiguration], clusters []entry[*clusterv3.Cluster]) {
	clusterNames := names(clusters)
	routeNames := names(routes)
	usedRoutes := make(map[string]bool, len(routes))

	// where is built only for a problem: a route config can hold tens of thousands of routes.
	requireClusterAt := func(where func() string, what, cluster string) {
		if cluster != "" && !clusterNames[cluster] {
			probs.addf("%s: %s names cluster %q, which does not exist", where(), what, cluster)
		}
	}
	requireCluster := func(where, what, cluster string) {
		requireClusterAt(func() string { return where }, what, cluster)
	}

	for _, rc := range routes {
		checkRouteClusters(fmt.Sprintf("route config %q", rc.name), rc.msg, requireClusterAt)
	}
	for _, l := range listeners {
		where := fmt.Sprintf("listener %q", l.name)
		for _, packed := range l.packed {
			switch cfg := packed.(type) {
			case *hcmv3.HttpConnectionManager:
				if rds := cfg.GetRds(); rds != nil {
					name := rds.GetRouteConfigName()
					usedRoutes[name] = true
					if !routeNames[name] {
						probs.addf("%s: http connection manager %q: rds.route_config_name %q does not exist", where, cfg.GetStatPrefix(), name)
					}
				}
				if inline := cfg.GetRouteConfig(); inline != nil {
					checkRouteClusters(fmt.Sprintf("%s: inline route config %q", where, inline.GetName()), inline, requireClusterAt)
				}
			case *extprocfilterv3.ExternalProcessor:
				requireCluster(where, "ext_proc grpc_service", cfg.GetGrpcService().GetEnvoyGrpc().GetClusterName())
				requireCluster(where, "ext_proc http_service", cfg.GetHttpService().GetHttpService().GetHttpUri().GetCluster())
			}
		}
	}
	for _, rc := range routes {
		if !usedRoutes[rc.name] {
			probs.addf("route config %q: no listener uses it (no rds.route_config_name names it)", rc.name)
		}
	}
}

func checkRouteClusters(where string, rc *routev3.RouteConfiguration, requireCluster func(where func() string, what, cluster string)) {
	for _, vh := range rc.GetVirtualHosts() {
		vhWhere := func() string { return fmt.Sprintf("%s: virtual host %q", where, vh.GetName()) }
		for _, mirror := range vh.GetRequestMirrorPolicies() {
			requireCluster(vhWhere, "request mirror policy", mirror.GetCluster())
		}
		for i, rt := range vh.GetRoutes() {
			rtWhere := func() string {
				if rt.GetName() == "" {
					return fmt.Sprintf("%s routes[%d]", vhWhere(), i)
				}
				return fmt.Sprintf("%s route %q", vhWhere(), rt.GetName())
			}
			action := rt.GetRoute()
			if action == nil {
				continue
			}
			requireCluster(rtWhere, "route action", action.GetCluster())
			for _, wc := range action.GetWeightedClusters().GetClusters() {
				requireCluster(rtWhere, "weighted cluster", wc.GetName())
			}
			for _, mirror := range action.GetRequestMirrorPolicies() {
				requireCluster(rtWhere, "request mirror policy", mirror.GetCluster())
			}
		}
	}
}

// checkRateLimitConfigs applies the rules the ratelimit service enforces when it loads a
// configuration (it rejects the whole update on any of them), since RateLimitConfig has no
// generated validation.
func checkRateLimitConfigs(probs *problems, configs []entry[*rlsconfv3.RateLimitConfig]) {
	domains := make(map[string]string, len(configs))
	for _, c := range configs {
		where := fmt.Sprintf("ratelimit config %q", c.name)
		domain := c.msg.GetDomain()
		if domain == "" {
			probs.addf("%s: domain is empty", where)
		} else if other, dup := domains[domain]; dup {
			probs.addf("%s: domain %q is also used by ratelimit config %q", where, domain, other)
		} else {
			domains[domain] = c.name
		}
		checkDescriptors(probs, where, func() string { return "descriptors" }, c.msg.GetDescriptors())
	}
}

func checkDescriptors(probs *problems, where string, path func() string, descriptors []*rlsconfv3.RateLimitDescriptor) {
	seen := make(map[string]bool, len(descriptors))
	for i, d := range descriptors {
		// Labels are built only for a problem: a large policy has tens of thousands of
		// descriptors and, normally, no problems.
		at := func() string { return fmt.Sprintf("%s: %s[%d]", where, path(), i) }
		if d.GetKey() == "" {
			probs.addf("%s: key is empty", at())
		}
		// The service stores a level's descriptors by key and value joined with "_".
		composite := d.GetKey()
		if d.GetValue() != "" {
			composite += "_" + d.GetValue()
		}
		if seen[composite] {
			probs.addf("%s: key %q value %q repeats an earlier descriptor at this level", at(), d.GetKey(), d.GetValue())
		}
		seen[composite] = true

		if limit := d.GetRateLimit(); limit != nil {
			hasUnit := limit.GetUnit() != rlsconfv3.RateLimitUnit_UNKNOWN
			switch {
			case limit.GetUnlimited() && hasUnit:
				probs.addf("%s: an unlimited rate limit must not set a unit", at())
			case !limit.GetUnlimited() && !hasUnit:
				probs.addf("%s: rate limit unit is not set", at())
			}
			for j, rep := range limit.GetReplaces() {
				switch rep.GetName() {
				case "":
					probs.addf("%s: rate_limit.replaces[%d]: name is empty", at(), j)
				case limit.GetName():
					probs.addf("%s: rate_limit.replaces[%d]: replaces its own rate limit %q", at(), j, rep.GetName())
				}
			}
		}
		if children := d.GetDescriptors(); len(children) > 0 {
			checkDescriptors(probs, where, func() string { return fmt.Sprintf("%s[%d].descriptors", path(), i) }, children)
		}
	}
}
