package translate

import (
	"encoding/hex"
	"slices"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Render prints the output as YAML in Envoy's own field names, and the ext_proc server's
// configuration with upstream keys redacted: what `tollgate render` shows and what the golden
// files hold.
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
		"extproc":   extProcPlain(o.ExtProc),
	})
}

// extProcPlain is the ext_proc configuration as plain values. Upstream keys print as
// "[redacted]"; API keys are known by their hashes only, which the policy holds anyway.
func extProcPlain(c *extproc.Config) map[string]any {
	if c == nil {
		return nil
	}
	identity := map[string]any{"mode": c.Identity.String(), "header": c.IdentityHeader, "teamHeader": c.TeamHeader}
	switch c.Identity {
	case extproc.IdentityFromAPIKey:
		keys := make([]any, 0, len(c.APIKeys))
		for h, user := range c.APIKeys {
			key := map[string]any{"sha256": hex.EncodeToString(h[:]), "user": user}
			if team, ok := c.APIKeyTeams[h]; ok {
				key["team"] = team
			}
			keys = append(keys, key)
		}
		sort.Slice(keys, func(i, j int) bool {
			return keys[i].(map[string]any)["sha256"].(string) < keys[j].(map[string]any)["sha256"].(string)
		})
		identity["apiKeys"] = keys
	case extproc.IdentityFromJWT:
		identity["jwtClaim"] = c.JWTClaim
		if c.JWTTeamClaim != "" {
			identity["jwtTeamClaim"] = c.JWTTeamClaim
		}
	}
	backendKeys := map[string]any{}
	for name, key := range c.BackendKeys {
		backendKeys[name] = key.String()
	}
	costs := make([]any, 0, len(c.Costs))
	for _, cost := range c.Costs {
		entry := map[string]any{"name": cost.Name, "kind": cost.Kind.String()}
		if cost.Expression != "" {
			entry["cel"] = cost.Expression
		}
		costs = append(costs, entry)
	}
	quotas := map[string]any{}
	for model, qs := range c.Quotas {
		list := make([]any, 0, len(qs))
		for _, q := range qs {
			list = append(list, quotaPlain(q))
		}
		quotas[model] = list
	}
	models := toAnyMap(c.Models)
	out := map[string]any{
		"modelHeader":     c.ModelHeader,
		"identity":        identity,
		"models":          models,
		"costs":           costs,
		"maxRequestBytes": c.MaxRequestBytes,
		"maxConcurrentRequests": map[string]any{
			"default": c.DefaultMaxConcurrentRequests,
			"byUser":  toAnyMap(c.MaxConcurrentRequests),
		},
		"userLabel": c.UserLabel,
	}
	if len(backendKeys) > 0 {
		out["backendKeys"] = backendKeys
	}
	if len(c.Prices) > 0 {
		prices := map[string]any{}
		for model, p := range c.Prices {
			prices[model] = map[string]any{"input": p.Input, "output": p.Output, "cachedInput": p.CachedInput}
		}
		out["prices"] = map[string]any{"perTokenIn": "1e-12 " + c.Money.Currency, "models": prices}
		out["money"] = map[string]any{"currency": c.Money.Currency, "decimals": c.Money.Decimals}
	}
	if len(c.MaxTokensPerRequest) > 0 {
		out["maxTokensPerRequest"] = toAnyMap(c.MaxTokensPerRequest)
	}
	if c.RateLimitAddress != "" {
		out["rateLimit"] = map[string]any{
			"address":                c.RateLimitAddress,
			"domain":                 c.RateLimitDomain,
			"timeout":                c.QuotaCheckTimeout.String(),
			"failOpen":               c.QuotaFailOpen,
			"defaultMaxOutputTokens": c.DefaultMaxOutputTokens,
			"quotas":                 quotas,
		}
	}
	return out
}

// quotaPlain is one quota of the ext_proc configuration, its counter shown with placeholders
// for the values each request fills in.
func quotaPlain(q extproc.Quota) map[string]any {
	entries := slices.Clone(q.Entries)
	if q.Calendar != nil {
		entries = append(entries, rlsclient.Entry{Key: q.PeriodKey, Value: "<" + q.Calendar.String() + ">"})
	}
	if q.SubjectKey != "" {
		entries = append(entries, rlsclient.Entry{Key: q.SubjectKey, Value: "<" + q.Scope.String() + ">"})
	}
	out := map[string]any{"name": q.Name, "cost": q.Cost, "counter": rlsclient.Descriptor{Entries: entries}.String(), "shadow": q.Shadow}
	if q.MaxTokensPerRequest > 0 {
		out["maxTokensPerRequest"] = q.MaxTokensPerRequest
	}
	if q.Alerts != nil {
		alerts := map[string]any{"at": q.Alerts.At}
		if q.Alerts.Webhook != "" {
			alerts["webhook"] = "[redacted]" // webhook URLs often carry a secret
		}
		out["alerts"] = alerts
	}
	return out
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

// toAnyMap copies m for the YAML encoder, which sorts map keys.
func toAnyMap[V any](m map[string]V) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
