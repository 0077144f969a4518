package translate

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/policies"
)

// extProcConfig is the ext_proc server's share of the policy: how it knows users, routes by
// model, what it publishes and charges, and to which counters of which ratelimit service. The
// backends' upstream keys are part of it, in memory only: they are never published over xDS,
// and Render redacts them.
func extProcConfig(p *input) (*extproc.Config, error) {
	cfg := &extproc.Config{
		ModelHeader:     p.Listener.ModelHeader,
		IdentityHeader:  p.Identity.Header,
		TeamHeader:      p.Identity.TeamHeader,
		Models:          make(map[string]string, len(p.Models)),
		MaxRequestBytes: p.Listener.MaxRequestBytes,
		UserLabel:       p.Metrics.UserLabel,
		CheckUserID:     checkUserID,
		// The listener and routes read the same policy field (envoyReadsStreams).
		EnvoyReadsStreams: envoyReadsStreams(p),
	}
	for _, m := range p.Models {
		cfg.Models[m.Name] = m.Backend
	}
	cfg.DefaultMaxConcurrentRequests = p.RateLimit.MaxConcurrentRequests
	cfg.MaxConcurrentRequests = byTierMember(p.Tiers, func(t policies.Tier) int { return t.MaxConcurrentRequests })
	if err := identityConfig(p, cfg); err != nil {
		return nil, err
	}
	for _, b := range p.Backends {
		if b.APIKey.IsSet() {
			if cfg.BackendKeys == nil {
				cfg.BackendKeys = map[string]extproc.Credential{}
			}
			cfg.BackendKeys[b.Name] = extproc.Credential(b.APIKey.Value())
		}
	}
	for _, c := range p.Costs {
		cost, err := extProcCost(c)
		if err != nil {
			return nil, fmt.Errorf("cost %q: %w", c.Name, err)
		}
		cfg.Costs = append(cfg.Costs, cost)
	}
	cfg.Costs = append(cfg.Costs, builtinCosts(p)...)
	moneyConfig(p, cfg)
	cfg.MaxTokensPerRequest = byTierMember(p.Tiers, func(t policies.Tier) int64 { return t.MaxTokensPerRequest })
	if len(p.modelsWithQuotas) > 0 {
		cfg.RateLimitAddress = net.JoinHostPort(p.RateLimit.Address, strconv.Itoa(p.RateLimit.Port))
		cfg.RateLimitDomain = p.RateLimit.Domain
		cfg.QuotaCheckTimeout = p.RateLimit.Timeout.Duration
		cfg.QuotaFailOpen = p.RateLimit.FailureMode != policies.FailureModeClosed
		cfg.DefaultMaxOutputTokens = p.RateLimit.DefaultMaxOutputTokens
		cfg.Quotas = make(map[string][]extproc.Quota, len(p.modelsWithQuotas))
		for _, m := range p.modelsWithQuotas {
			for _, q := range p.quotasByModel[m] {
				eq, err := extProcQuota(p, q)
				if err != nil {
					return nil, err
				}
				cfg.Quotas[m] = append(cfg.Quotas[m], eq)
			}
		}
	}
	return cfg, nil
}

// byTierMember maps every member of a tier that sets a value (not zero) to it; nil when no
// tier does.
func byTierMember[V comparable](tiers []policies.Tier, value func(policies.Tier) V) map[string]V {
	var zero V
	var out map[string]V
	for _, t := range tiers {
		v := value(t)
		if v == zero {
			continue
		}
		if out == nil {
			out = map[string]V{}
		}
		for _, u := range t.Users {
			out[u] = v
		}
	}
	return out
}

// builtinCosts are the built-in costs the policy's quotas use, in name order.
func builtinCosts(p *input) []extproc.Cost {
	used := map[string]bool{}
	for _, q := range p.Quotas {
		used[q.Cost] = true
	}
	var out []extproc.Cost
	if used[policies.CostPrice] {
		out = append(out, extproc.Cost{Name: policies.CostPrice, Kind: extproc.CostPrice})
	}
	if used[policies.CostRequests] {
		out = append(out, extproc.Cost{Name: policies.CostRequests, Kind: extproc.CostRequests})
	}
	return out
}

// moneyConfig sets the models' prices and how money is counted.
func moneyConfig(p *input, cfg *extproc.Config) {
	currency := p.Currency
	cfg.Money = extproc.Money{Currency: currency.Code, Decimals: currency.Decimals, Format: currency.Format}
	for _, m := range p.Models {
		if m.Prices == nil {
			continue
		}
		if cfg.Prices == nil {
			cfg.Prices = map[string]extproc.Price{}
		}
		per := m.Prices.PerToken()
		cfg.Prices[m.Name] = extproc.Price{Input: per.Input, Output: per.Output, CachedInput: per.CachedInput}
	}
}

// checkUserID is the policy's user id rule, with the rule spelled out for the client.
func checkUserID(id string) error {
	if err := policies.CheckUserID(id); err != nil {
		return fmt.Errorf("%w; a user id is %s", err, policies.UserIDRule)
	}
	return nil
}

// identityConfig sets how the ext_proc server identifies users.
func identityConfig(p *input, cfg *extproc.Config) error {
	switch p.Identity.Mode {
	case policies.IdentityHeader:
		cfg.Identity = extproc.IdentityFromHeader
	case policies.IdentityAPIKeys:
		cfg.Identity = extproc.IdentityFromAPIKey
		cfg.APIKeys = make(map[extproc.KeyHash]string, len(p.Identity.ResolvedAPIKeys))
		for _, k := range p.Identity.ResolvedAPIKeys {
			var h extproc.KeyHash
			if n, err := hex.Decode(h[:], []byte(k.SHA256)); err != nil || n != len(h) {
				return fmt.Errorf("API key of user %q: bad sha256", k.User)
			}
			cfg.APIKeys[h] = k.User
			if k.Team != "" {
				if cfg.APIKeyTeams == nil {
					cfg.APIKeyTeams = map[extproc.KeyHash]string{}
				}
				cfg.APIKeyTeams[h] = k.Team
			}
		}
	case policies.IdentityJWT:
		cfg.Identity = extproc.IdentityFromJWT
		cfg.JWTClaim = p.Identity.JWT.UserClaim
		cfg.JWTTeamClaim = p.Identity.JWT.TeamClaim
	default:
		return fmt.Errorf("unknown identity mode %q", p.Identity.Mode)
	}
	return nil
}

// extProcCost is one cost as the ext_proc server computes it; a CEL cost is evaluated by the
// policy's own CEL code.
func extProcCost(c policies.Cost) (extproc.Cost, error) {
	cost := extproc.Cost{Name: c.Name}
	switch c.Type {
	case policies.CostInputToken:
		cost.Kind = extproc.CostInput
	case policies.CostOutputToken:
		cost.Kind = extproc.CostOutput
	case policies.CostTotalToken:
		cost.Kind = extproc.CostTotal
	case policies.CostCEL:
		prog, err := policies.CompileCost(c.CEL)
		if err != nil {
			return extproc.Cost{}, err
		}
		cost.Kind, cost.Expression = extproc.CostCEL, c.CEL
		cost.Eval = func(ctx context.Context, v extproc.CostVars) (int64, error) {
			return prog.Eval(ctx, policies.CostVars(v))
		}
	default:
		return extproc.Cost{}, fmt.Errorf("unknown type %q", c.Type)
	}
	return cost, nil
}
