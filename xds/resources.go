package xds

import "github.com/envoyproxy/go-control-plane/pkg/cache/types"

// NewResources groups typed resources (for example translate's output) as Publish takes them.
func NewResources[L, R, C, Q types.Resource](listeners []L, routes []R, clusters []C, rateLimitConfigs []Q) Resources {
	return Resources{
		Listeners:        asResources(listeners),
		Routes:           asResources(routes),
		Clusters:         asResources(clusters),
		RateLimitConfigs: asResources(rateLimitConfigs),
	}
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, 0, len(in))
	for _, r := range in {
		out = append(out, r)
	}
	return out
}
