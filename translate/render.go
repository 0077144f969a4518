package translate

import (
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Render prints the output as YAML in Envoy's own field names: what `tollgate render` shows and
// what the golden files hold.
func Render(o *Output) ([]byte, error) {
	listeners, err := plainList(o.Listeners)
	if err != nil {
		return nil, err
	}
	routes, err := plainList(o.Routes)
	if err != nil {
		return nil, err
	}
	clusters, err := plainList(o.Clusters)
	if err != nil {
		return nil, err
	}
	rateLimit, err := plainList(o.RateLimitConfigs)
	if err != nil {
		return nil, err
	}
	return envoy.YAML(map[string]any{
		"envoy":     map[string]any{"listeners": listeners, "routes": routes, "clusters": clusters},
		"ratelimit": map[string]any{"configs": rateLimit},
	})
}

func plainList[M proto.Message](msgs []M) ([]any, error) {
	out := []any{}
	for _, m := range msgs {
		v, err := envoy.Plain(m)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
