package policies

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// budgetPolicy uses every budget feature: a currency, prices, money quotas over one model with
// user and team scope, a global request quota, calendar periods with a timezone, per-request
// output ceilings and overrides of each kind. Line numbers matter: tests point at them.
const budgetPolicy = `currency: {code: USD, decimals: 6}
identity: {header: x-user-id}
backends:
  - name: sim
    url: http://127.0.0.1:8000
models:
  - {name: qwen3, backend: sim, prices: {input: 0.15, output: 0.6}}
  - {name: gpt-4, backend: sim, prices: {input: 2.5, output: 10, cachedInput: 1.25}}
  - {name: local, backend: sim}
costs:
  - {name: tokens, type: TotalToken}
tiers:
  - {name: gold, users: [alice], maxTokensPerRequest: 8192}
quotas:
  - {model: gpt-4, limit: "$100", per: calendar-month, timezone: Europe/Berlin}
  - {model: qwen3, scope: team, limit: "$50", per: calendar-day, overrides: [{team: research, limit: "$80"}]}
  - {model: qwen3, scope: global, cost: requests, limit: 1000, per: minute}
  - {model: local, cost: tokens, limit: 5000, per: hour, maxTokensPerRequest: 2048, overrides: [{user: bob, limit: 10000}, {tier: gold, limit: 20000}]}
  - {cost: requests, limit: 100, per: day}
`

// budgetNextQuotaLine is the line a quota appended by budgetWithQuota lands on; it is quotas[5].
const budgetNextQuotaLine = 20

// budgetWith returns budgetPolicy with edits applied: pairs of old and new text, each old
// occurring exactly once when its pair is applied.
func budgetWith(t *testing.T, edits ...string) string {
	t.Helper()
	if len(edits)%2 != 0 {
		t.Fatalf("budgetWith: odd number of edit strings")
	}
	src := budgetPolicy
	for i := 0; i < len(edits); i += 2 {
		if n := strings.Count(src, edits[i]); n != 1 {
			t.Fatalf("policy contains %q %d times, want 1", edits[i], n)
		}
		src = strings.Replace(src, edits[i], edits[i+1], 1)
	}
	return src
}

// budgetWithQuota returns budgetPolicy (after edits) with one more quota at its end: quotas[5],
// on line budgetNextQuotaLine.
func budgetWithQuota(t *testing.T, quota string, edits ...string) string {
	t.Helper()
	return budgetWith(t, edits...) + "  - " + quota + "\n"
}

// budgetCountOnly turns the money quotas of budgetPolicy into request quotas, for checks
// that a money limit would blur (a currency that is not the limits' own).
var budgetCountOnly = []string{
	`limit: "$100", per: calendar-month`, `cost: requests, limit: 100, per: calendar-month`,
	`limit: "$50", per: calendar-day, overrides: [{team: research, limit: "$80"}]`,
	`cost: requests, limit: 50, per: calendar-day, overrides: [{team: research, limit: 80}]`,
}

func budgetFloat(f float64) *float64 { return &f }

func TestBudgetPolicyParsesWithDefaults(t *testing.T) {
	p := mustParse(t, budgetPolicy)
	checks := []struct {
		name      string
		got, want any
	}{
		{"currency", p.Currency, Currency{Code: "USD", Decimals: 6}},
		{"identity.teamHeader", p.Identity.TeamHeader, DefaultTeamHeader},
		{"models[0].prices", p.Models[0].Prices.PerToken(), PerToken{Input: 150000, Output: 600000, CachedInput: 150000}},
		{"models[1].prices", p.Models[1].Prices.PerToken(), PerToken{Input: 2500000, Output: 10000000, CachedInput: 1250000}},
		{"models[0].prices.cachedInput", p.Models[0].Prices.CachedInput == nil, true},
		{"models[2].prices", p.Models[2].Prices == nil, true},
		{"tiers[0].maxTokensPerRequest", p.Tiers[0].MaxTokensPerRequest, int64(8192)},

		{"quotas[0].name", p.Quotas[0].Name, "gpt-4-price-per-calendar-month"},
		{"quotas[0].scope", p.Quotas[0].Scope, ScopeUser},
		{"quotas[0].cost", p.Quotas[0].Cost, CostPrice},
		{"quotas[0].limit", p.Quotas[0].Limit, Limit{Money: "100", Currency: "USD"}},
		{"quotas[0].per", p.Quotas[0].Per, CalendarMonth},
		{"quotas[0].timezone", p.Quotas[0].Timezone, "Europe/Berlin"},
		{"quotas[0].maxTokensPerRequest", p.Quotas[0].MaxTokensPerRequest, int64(0)},

		{"quotas[1].name", p.Quotas[1].Name, "team-qwen3-price-per-calendar-day"},
		{"quotas[1].scope", p.Quotas[1].Scope, ScopeTeam},
		{"quotas[1].cost", p.Quotas[1].Cost, CostPrice},
		{"quotas[1].timezone", p.Quotas[1].Timezone, ""},
		{"quotas[1].overrides", p.Quotas[1].Overrides, []Override{{Team: "research", Limit: Limit{Money: "80", Currency: "USD"}}}},

		{"quotas[2].name", p.Quotas[2].Name, "global-qwen3-requests-per-minute"},
		{"quotas[2].scope", p.Quotas[2].Scope, ScopeGlobal},
		{"quotas[2].cost", p.Quotas[2].Cost, CostRequests},
		{"quotas[2].limit", p.Quotas[2].Limit, Limit{Count: 1000}},

		{"quotas[3].name", p.Quotas[3].Name, "local-tokens-per-hour"},
		{"quotas[3].scope", p.Quotas[3].Scope, ScopeUser},
		{"quotas[3].maxTokensPerRequest", p.Quotas[3].MaxTokensPerRequest, int64(2048)},
		{"quotas[3].overrides", p.Quotas[3].Overrides, []Override{{User: "bob", Limit: Limit{Count: 10000}}, {Tier: "gold", Limit: Limit{Count: 20000}}}},

		{"quotas[4].name", p.Quotas[4].Name, "all-models-requests-per-day"},
		{"quotas[4].model", p.Quotas[4].Model, ""},
		{"quotas[4].scope", p.Quotas[4].Scope, ScopeUser},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %+v, want %+v", c.name, c.got, c.want)
		}
	}
	units := []struct {
		name  string
		limit Limit
		want  uint64
	}{
		{"quotas[0].limit", p.Quotas[0].Limit, 100_000_000},
		{"quotas[1].limit", p.Quotas[1].Limit, 50_000_000},
		{"quotas[1].overrides[0].limit", p.Quotas[1].Overrides[0].Limit, 80_000_000},
		{"quotas[2].limit", p.Quotas[2].Limit, 1000},
	}
	for _, u := range units {
		got, err := u.limit.Units(p.Currency)
		if err != nil || got != u.want {
			t.Errorf("%s units = %d, %v; want %d", u.name, got, err, u.want)
		}
	}
	if !p.Quotas[0].Limit.IsMoney() || p.Quotas[2].Limit.IsMoney() {
		t.Errorf("IsMoney: quotas[0] %v, quotas[2] %v; want true, false", p.Quotas[0].Limit.IsMoney(), p.Quotas[2].Limit.IsMoney())
	}
}

// TestBudgetValidVariants: budget policies that must parse, each checked for what it sets.
func TestBudgetValidVariants(t *testing.T) {
	tests := []struct {
		name  string
		src   func(t *testing.T) string
		check func(p *Policy) string // "" when the policy is as expected
	}{
		{
			"currency omitted defaults to USD with 6 decimals",
			func(t *testing.T) string { return budgetWith(t, "currency: {code: USD, decimals: 6}\n", "") },
			func(p *Policy) string {
				if p.Currency != (Currency{Code: DefaultCurrencyCode, Decimals: DefaultCurrencyDecimals}) || p.Currency.Code != "USD" || p.Currency.Decimals != 6 {
					return fmt.Sprintf("currency %+v", p.Currency)
				}
				return ""
			},
		},
		{
			"currency with only a code keeps 6 decimals",
			func(t *testing.T) string { return budgetWith(t, "decimals: 6", "") },
			func(p *Policy) string {
				if p.Currency.Decimals != 6 {
					return fmt.Sprintf("decimals %d", p.Currency.Decimals)
				}
				return ""
			},
		},
		{
			"explicit decimals 0 is kept",
			func(t *testing.T) string { return budgetWith(t, "decimals: 6", "decimals: 0") },
			func(p *Policy) string {
				if u, err := p.Quotas[0].Limit.Units(p.Currency); p.Currency.Decimals != 0 || u != 100 || err != nil {
					return fmt.Sprintf("decimals %d, $100 is %d units (%v)", p.Currency.Decimals, u, err)
				}
				return ""
			},
		},
		{
			"currency code is upper-cased",
			func(t *testing.T) string { return budgetWith(t, "code: USD", "code: usd") },
			func(p *Policy) string {
				if p.Currency.Code != "USD" {
					return fmt.Sprintf("code %q", p.Currency.Code)
				}
				return ""
			},
		},
		{
			"large budget with 2 decimals",
			func(t *testing.T) string {
				return budgetWithQuota(t, `{model: gpt-4, limit: "$5000", per: day}`, "decimals: 6", "decimals: 2")
			},
			func(p *Policy) string {
				if u, err := p.Quotas[5].Limit.Units(p.Currency); u != 500000 || err != nil {
					return fmt.Sprintf("$5000 is %d units (%v), want 500000", u, err)
				}
				return ""
			},
		},
		{
			"money limit at the counter's maximum",
			func(t *testing.T) string {
				return budgetWithQuota(t, `{model: gpt-4, limit: "$4294.967295", per: day}`)
			},
			func(p *Policy) string {
				if u, err := p.Quotas[5].Limit.Units(p.Currency); u != 4294967295 || err != nil {
					return fmt.Sprintf("units %d (%v)", u, err)
				}
				return ""
			},
		},
		{
			"euro policy",
			func(t *testing.T) string {
				return budgetWith(t, "code: USD", "code: EUR", `"$100"`, `"€100"`, `"$50"`, `"50 EUR"`, `"$80"`, `"EUR 80.5"`)
			},
			func(p *Policy) string {
				want := []Limit{{Money: "100", Currency: "EUR"}, {Money: "50", Currency: "EUR"}, {Money: "80.5", Currency: "EUR"}}
				got := []Limit{p.Quotas[0].Limit, p.Quotas[1].Limit, p.Quotas[1].Overrides[0].Limit}
				if !reflect.DeepEqual(got, want) {
					return fmt.Sprintf("limits %+v, want %+v", got, want)
				}
				if s := p.Currency.Format(80_500_000); s != "€80.50" {
					return fmt.Sprintf("Format = %q", s)
				}
				return ""
			},
		},
		{
			"explicit cost price with a money limit",
			func(t *testing.T) string {
				return budgetWith(t, `{model: gpt-4, limit: "$100"`, `{model: gpt-4, cost: price, limit: "$100"`)
			},
			func(p *Policy) string {
				if q := p.Quotas[0]; q.Cost != CostPrice || q.Name != "gpt-4-price-per-calendar-month" {
					return fmt.Sprintf("quota %+v", q)
				}
				return ""
			},
		},
		{
			"scope and calendar period are case-insensitive",
			func(t *testing.T) string {
				return budgetWith(t, "scope: team, limit", "scope: TEAM, limit", "per: calendar-day", "per: Calendar-Day")
			},
			func(p *Policy) string {
				if q := p.Quotas[1]; q.Scope != ScopeTeam || q.Per != CalendarDay || q.Name != "team-qwen3-price-per-calendar-day" {
					return fmt.Sprintf("quota %+v", q)
				}
				return ""
			},
		},
		{
			"team money quota over all models when all are priced",
			func(t *testing.T) string {
				return budgetWithQuota(t, `{scope: team, limit: "$500", per: calendar-week, timezone: America/New_York}`,
					"{name: local, backend: sim}", "{name: local, backend: sim, prices: {input: 0, output: 0}}")
			},
			func(p *Policy) string {
				q := p.Quotas[5]
				if q.Name != "team-all-models-price-per-calendar-week" || q.Cost != CostPrice || q.Model != "" {
					return fmt.Sprintf("quota %+v", q)
				}
				if pt := p.Models[2].Prices.PerToken(); pt != (PerToken{}) {
					return fmt.Sprintf("free model per token %+v", pt)
				}
				return ""
			},
		},
		{
			"global quota over all models",
			func(t *testing.T) string {
				return budgetWithQuota(t, `{scope: global, cost: tokens, limit: 1000000, per: calendar-month}`)
			},
			func(p *Policy) string {
				if q := p.Quotas[5]; q.Name != "global-all-models-tokens-per-calendar-month" || q.Scope != ScopeGlobal {
					return fmt.Sprintf("quota %+v", q)
				}
				return ""
			},
		},
		{
			"same model, cost and per in another scope",
			func(t *testing.T) string { return budgetWithQuota(t, `{model: qwen3, limit: "$5", per: calendar-day}`) },
			func(p *Policy) string {
				if p.Quotas[5].Name != "qwen3-price-per-calendar-day" || p.Quotas[1].Name != "team-qwen3-price-per-calendar-day" {
					return fmt.Sprintf("names %q, %q", p.Quotas[5].Name, p.Quotas[1].Name)
				}
				return ""
			},
		},
		{
			"same window in another timezone with its own name",
			func(t *testing.T) string {
				return budgetWithQuota(t, `{name: gpt-4-ny, model: gpt-4, limit: "$100", per: calendar-month, timezone: America/New_York}`)
			},
			func(p *Policy) string {
				if p.Quotas[5].Name != "gpt-4-ny" || p.Quotas[5].Timezone != "America/New_York" {
					return fmt.Sprintf("quota %+v", p.Quotas[5])
				}
				return ""
			},
		},
		{
			"output ceilings at their bounds",
			func(t *testing.T) string {
				return budgetWith(t, "maxTokensPerRequest: 2048", "maxTokensPerRequest: 10000000", "maxTokensPerRequest: 8192", "maxTokensPerRequest: 0")
			},
			func(p *Policy) string {
				if p.Quotas[3].MaxTokensPerRequest != MaxOutputTokensCeiling || p.Tiers[0].MaxTokensPerRequest != 0 {
					return fmt.Sprintf("quota %d, tier %d", p.Quotas[3].MaxTokensPerRequest, p.Tiers[0].MaxTokensPerRequest)
				}
				return ""
			},
		},
		{
			"prices at their bounds",
			func(t *testing.T) string {
				return budgetWith(t, "prices: {input: 0.15, output: 0.6}", "prices: {input: 0.000001, output: 1000000, cachedInput: 0}")
			},
			func(p *Policy) string {
				if pt := p.Models[0].Prices.PerToken(); pt != (PerToken{Input: 1, Output: 1_000_000_000_000, CachedInput: 0}) {
					return fmt.Sprintf("per token %+v", pt)
				}
				return ""
			},
		},
		{
			"custom team header",
			func(t *testing.T) string {
				return budgetWith(t, "identity: {header: x-user-id}", "identity: {header: x-user-id, teamHeader: X-Org}")
			},
			func(p *Policy) string {
				if p.Identity.TeamHeader != "x-org" {
					return fmt.Sprintf("teamHeader %q", p.Identity.TeamHeader)
				}
				return ""
			},
		},
		{
			"api keys with teams",
			func(t *testing.T) string {
				return budgetWith(t, "identity: {header: x-user-id}", `identity: {mode: apiKeys, apiKeys: [{user: alice, sha256: `+hashOf("k1")+`, team: research}, {user: bob, sha256: `+hashOf("k2")+`}]}`)
			},
			func(p *Policy) string {
				keys := p.Identity.ResolvedAPIKeys
				if len(keys) != 2 || keys[0].Team != "research" || keys[1].Team != "" || p.Identity.TeamHeader != DefaultTeamHeader {
					return fmt.Sprintf("keys %+v, teamHeader %q", keys, p.Identity.TeamHeader)
				}
				return ""
			},
		},
		{
			"jwt team claim",
			func(t *testing.T) string {
				return budgetWith(t, "identity: {header: x-user-id}", `identity: {mode: jwt, jwt: {issuer: "https://issuer.example", jwksURI: "https://issuer.example/jwks.json", teamClaim: org}}`)
			},
			func(p *Policy) string {
				if p.Identity.JWT.TeamClaim != "org" || p.Identity.JWT.UserClaim != DefaultJWTUserClaim {
					return fmt.Sprintf("jwt %+v", p.Identity.JWT)
				}
				return ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.src(t))
			if msg := tt.check(p); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// limitPolicy is a policy with one money quota whose limit and currency each test sets.
func limitPolicy(code string, decimals int, limit string) string {
	return fmt.Sprintf(`currency: {code: %s, decimals: %d}
backends: [{name: sim, url: "http://127.0.0.1:8000"}]
models: [{name: m, backend: sim, prices: {input: 1, output: 2}}]
quotas:
  - {model: m, cost: price, limit: %s, per: day}
`, code, decimals, limit)
}

// limitLine is the line of the quota in limitPolicy.
const limitLine = 5

// TestLimitParsingAndUnits: each way of writing a money limit, read from a policy and converted
// to counter units in the policy's currency.
func TestLimitParsingAndUnits(t *testing.T) {
	tests := []struct {
		yaml     string
		code     string
		decimals int
		want     Limit
		units    uint64
	}{
		{`"$100"`, "USD", 6, Limit{Money: "100", Currency: "USD"}, 100_000_000},
		{`"$0.000001"`, "USD", 6, Limit{Money: "0.000001", Currency: "USD"}, 1},
		{`"$1,000.50"`, "USD", 6, Limit{Money: "1000.50", Currency: "USD"}, 1_000_500_000},
		{`"$1,000.50"`, "USD", 2, Limit{Money: "1000.50", Currency: "USD"}, 100_050},
		{`"100 EUR"`, "EUR", 6, Limit{Money: "100", Currency: "EUR"}, 100_000_000},
		{`"USD 12.5"`, "USD", 6, Limit{Money: "12.5", Currency: "USD"}, 12_500_000},
		{`"100 USD"`, "USD", 6, Limit{Money: "100", Currency: "USD"}, 100_000_000},
		{`"€0.50"`, "EUR", 6, Limit{Money: "0.50", Currency: "EUR"}, 500_000},
		{`"£3"`, "GBP", 2, Limit{Money: "3", Currency: "GBP"}, 300},
		{`"¥500"`, "JPY", 0, Limit{Money: "500", Currency: "JPY"}, 500},
		{`"$ 7"`, "USD", 6, Limit{Money: "7", Currency: "USD"}, 7_000_000},
		{`"  2.25 CHF "`, "CHF", 2, Limit{Money: "2.25", Currency: "CHF"}, 225},
		{`"$4294.967295"`, "USD", 6, Limit{Money: "4294.967295", Currency: "USD"}, 4_294_967_295},
		{`"$42949672.95"`, "USD", 2, Limit{Money: "42949672.95", Currency: "USD"}, 4_294_967_295},
	}
	for _, tt := range tests {
		t.Run(tt.yaml+" "+tt.code, func(t *testing.T) {
			p := mustParse(t, limitPolicy(tt.code, tt.decimals, tt.yaml))
			got := p.Quotas[0].Limit
			if got != tt.want {
				t.Errorf("limit = %+v, want %+v", got, tt.want)
			}
			units, err := got.Units(p.Currency)
			if err != nil || units != tt.units {
				t.Errorf("Units = %d, %v; want %d", units, err, tt.units)
			}
			if !got.IsMoney() || got.String() != tt.want.Money+" "+tt.want.Currency {
				t.Errorf("IsMoney %v, String %q", got.IsMoney(), got.String())
			}
		})
	}
}

func TestLimitErrors(t *testing.T) {
	tests := []struct {
		yaml     string
		decimals int
		msg      string
	}{
		{`"$"`, 6, `such as "$100" or "100 EUR", got "$"`},
		{`"100"`, 6, `got "100"`},
		{`"1e3 USD"`, 6, `got "1e3 USD"`},
		{`"$-5"`, 6, `got "$-5"`},
		{`"100 usd"`, 6, `got "100 usd"`},
		{`"USD"`, 6, `got "USD"`},
		{`"$1."`, 6, `got "$1."`},
		{`"$.5"`, 6, `got "$.5"`},
		{`"100USD"`, 6, `got "100USD"`},
		{`"$100 USD"`, 6, `got "$100 USD"`},
		{`"USD 100 EUR"`, 6, `got "USD 100 EUR"`},
		{`1.5`, 6, `must be a whole number, or an amount with its currency such as "$1.5"`},
		{`-5`, 6, "must be a whole number greater than 0, got -5"},
		{`[1]`, 6, "must be a number or an amount"},
		{`"$1.0000001"`, 6, "1.0000001 USD has more decimal places than currency.decimals (6) keeps"},
		{`"$0.001"`, 2, "0.001 USD has more decimal places than currency.decimals (2) keeps"},
		{`"$0.5"`, 0, "0.5 USD has more decimal places than currency.decimals (0) keeps"},
		{`"$0"`, 6, "must be greater than 0"},
		{`"$0.0000"`, 6, "must be greater than 0"},
		{`"$99999999999999999999999"`, 6, "99999999999999999999999 USD is too large"},
		{`"$5000"`, 6, "5000 USD is 5000000000 counter units of 10^-6 USD, more than the ratelimit service's maximum 4294967295; lower currency.decimals"},
		{`"$4294.967296"`, 6, "more than the ratelimit service's maximum 4294967295"},
		{`"100 EUR"`, 6, "100 EUR is not in the policy's currency USD (currency.code)"},
		{`"€100"`, 6, "100 EUR is not in the policy's currency USD"},
		{`100`, 6, `the price cost counts money: write the limit with its currency, such as "$100"`},
	}
	for _, tt := range tests {
		t.Run(tt.yaml, func(t *testing.T) {
			list := parseErrors(t, limitPolicy("USD", tt.decimals, tt.yaml))
			if len(list) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(list), (&Errors{List: list}).Error())
			}
			fe := list[0]
			if fe.Path != "quotas[0].limit" || fe.Line != limitLine || !strings.Contains(fe.Message, tt.msg) {
				t.Errorf("error = %v\nwant policy.yaml:%d: quotas[0].limit: ...%s...", fe, limitLine, tt.msg)
			}
		})
	}
}

// TestLimitUnmarshalYAML reads limits on their own, without a policy around them.
func TestLimitUnmarshalYAML(t *testing.T) {
	tests := []struct {
		src     string
		want    Limit
		wantErr string
	}{
		{"42", Limit{Count: 42}, ""},
		{"0", Limit{Count: 0}, ""},
		{"18446744073709551615", Limit{Count: 18446744073709551615}, ""},
		{`"$100"`, Limit{Money: "100", Currency: "USD"}, ""},
		{`"12,345 GBP"`, Limit{Money: "12345", Currency: "GBP"}, ""},
		{`"SEK 99.90"`, Limit{Money: "99.90", Currency: "SEK"}, ""},
		{`"$-1"`, Limit{}, "must be a number, or an amount with its currency"},
		{"{a: 1}", Limit{}, "got a mapping"},
	}
	for _, tt := range tests {
		var l Limit
		err := yaml.Unmarshal([]byte(tt.src), &l)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: error %v, want one containing %q", tt.src, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || l != tt.want):
			t.Errorf("%s: %+v, %v; want %+v", tt.src, l, err, tt.want)
		}
	}
}

// TestLimitUnitsDirect covers Units on hand-made limits: counts ignore the currency.
func TestLimitUnitsDirect(t *testing.T) {
	usd6 := Currency{Code: "USD", Decimals: 6}
	if u, err := (Limit{Count: 5000}).Units(usd6); u != 5000 || err != nil {
		t.Errorf("count 5000 = %d, %v", u, err)
	}
	if u, err := (Limit{Count: 5000}).Units(Currency{Code: "USD", Decimals: 0}); u != 5000 || err != nil {
		t.Errorf("count 5000 with 0 decimals = %d, %v", u, err)
	}
	if u, err := (Limit{Money: "1.5", Currency: "USD"}).Units(Currency{Code: "USD", Decimals: 1}); u != 15 || err != nil {
		t.Errorf("1.5 with 1 decimal = %d, %v", u, err)
	}
	if _, err := (Limit{Money: "x", Currency: "USD"}).Units(usd6); err == nil || !strings.Contains(err.Error(), `"x" is not an amount`) {
		t.Errorf("bad amount: %v", err)
	}
	if s := (Limit{Count: 7}).String(); s != "7" {
		t.Errorf("String = %q", s)
	}
}

// TestBudgetValidationErrors checks each budget rule on its own: budgetPolicy with one change
// must yield exactly one error, at the expected line and path.
func TestBudgetValidationErrors(t *testing.T) {
	const nq = budgetNextQuotaLine
	type tc struct {
		name string
		src  func(t *testing.T) string
		line int
		path string
		msg  string
	}
	edit := func(name string, line int, path, msg string, edits ...string) tc {
		return tc{name, func(t *testing.T) string { return budgetWith(t, edits...) }, line, path, msg}
	}
	quota := func(name, q, path, msg string, edits ...string) tc {
		return tc{name, func(t *testing.T) string { return budgetWithQuota(t, q, edits...) }, nq, path, msg}
	}
	apiKeys := func(key string) string {
		return `identity: {mode: apiKeys, apiKeys: [{user: alice, sha256: ` + hashOf("k1") + `, ` + key + `}]}`
	}
	tests := []tc{
		// money limits and costs
		quota("money limit with a token cost", `{model: local, cost: tokens, limit: "$5", per: day}`,
			"quotas[5].limit", `5 USD is an amount of money; a limit in money needs cost price (this quota's cost is "tokens")`),
		quota("money limit with the requests cost", `{model: gpt-4, cost: requests, limit: "$5", per: day}`,
			"quotas[5].limit", `a limit in money needs cost price (this quota's cost is "requests")`),
		quota("price cost with a count limit", `{model: gpt-4, cost: price, limit: 100, per: day}`,
			"quotas[5].limit", `the price cost counts money: write the limit with its currency, such as "$100"`),
		quota("price cost with a count limit in euros", `{model: gpt-4, cost: price, limit: 100, per: day}`,
			"quotas[5].limit", `such as "€100"`, "code: USD", "code: EUR", `"$100"`, `"€100"`, `"$50"`, `"€50"`, `"$80"`, `"€80"`),
		quota("money quota over an unpriced model", `{model: local, limit: "$5", per: day}`,
			"quotas[5].model", `model "local" has no prices; a quota in money needs models[].prices`),
		quota("money quota over all models, one unpriced", `{limit: "$5", per: day}`,
			"quotas[5].cost", "a quota in money over all models needs prices for each; without: local"),
		quota("money quota over all models, two unpriced", `{scope: global, limit: "$5", per: day}`,
			"quotas[5].cost", "without: qwen3, local",
			"{name: qwen3, backend: sim, prices: {input: 0.15, output: 0.6}}", "{name: qwen3, backend: sim}",
			`{model: qwen3, scope: team, limit: "$50", per: calendar-day, overrides: [{team: research, limit: "$80"}]}`,
			`{model: qwen3, scope: team, cost: requests, limit: 50, per: calendar-day}`),
		quota("limit beyond the counter in micro-units", `{model: gpt-4, limit: "$5000", per: day}`,
			"quotas[5].limit", "5000 USD is 5000000000 counter units of 10^-6 USD, more than the ratelimit service's maximum 4294967295; lower currency.decimals"),
		quota("override beyond the counter", `{model: gpt-4, limit: "$5", per: day, overrides: [{user: bob, limit: "$4295"}]}`,
			"quotas[5].overrides[0].limit", "lower currency.decimals"),
		quota("limit finer than the currency's decimals", `{model: gpt-4, limit: "$0.001", per: day}`,
			"quotas[5].limit", "0.001 USD has more decimal places than currency.decimals (2) keeps", "decimals: 6", "decimals: 2"),
		quota("limit in another currency", `{model: gpt-4, limit: "100 EUR", per: day}`,
			"quotas[5].limit", "100 EUR is not in the policy's currency USD (currency.code)"),
		quota("money limit of zero", `{model: gpt-4, limit: "$0", per: day}`,
			"quotas[5].limit", "must be greater than 0"),
		edit("override in another currency", 16, "quotas[1].overrides[0].limit", "80 EUR is not in the policy's currency USD",
			`limit: "$80"`, `limit: "80 EUR"`),
		edit("count override on a money quota", 16, "quotas[1].overrides[0].limit", "the price cost counts money",
			`limit: "$80"`, `limit: 80`),
		edit("money override on a token quota", 18, "quotas[3].overrides[0].limit", "needs cost price",
			"{user: bob, limit: 10000}", `{user: bob, limit: "$10"}`),

		// currency
		edit("currency code too short", 1, "currency.code", `must be an ISO 4217 code such as USD or EUR, got "US"`,
			append([]string{"code: USD", "code: US"}, budgetCountOnly...)...),
		edit("currency code not letters", 1, "currency.code", `got "US1"`,
			append([]string{"code: USD", "code: US1"}, budgetCountOnly...)...),
		edit("currency code a symbol", 1, "currency.code", `got "$"`,
			append([]string{"code: USD", `code: "$"`}, budgetCountOnly...)...),
		edit("currency code empty", 1, "currency.code", `got ""`,
			append([]string{"code: USD", `code: ""`}, budgetCountOnly...)...),
		edit("currency decimals 7", 1, "currency.decimals", "must be from 0 to 6, got 7", "decimals: 6", "decimals: 7"),
		edit("currency decimals negative", 1, "currency.decimals", "must be from 0 to 6, got -1", "decimals: 6", "decimals: -1"),

		// prices
		edit("price negative", 7, "models[0].prices.input", "must be a number from 0 to 1000000, got -0.15",
			"input: 0.15", "input: -0.15"),
		edit("price with 7 decimals", 7, "models[0].prices.input", "at most 6 decimal places, got 0.1234567",
			"input: 0.15", "input: 0.1234567"),
		edit("cached price with 7 decimals", 8, "models[1].prices.cachedInput", "at most 6 decimal places",
			"cachedInput: 1.25", "cachedInput: 1.0000001"),
		edit("price too high", 8, "models[1].prices.output", "must be at most 1000000 per million tokens, got 1.000001e+06",
			"output: 10,", "output: 1000001,"),
		edit("price not a number", 8, "models[1].prices.output", "not-a-price",
			"output: 10,", "output: not-a-price,"),
		edit("price NaN", 7, "models[0].prices.output", "must be a number from 0 to 1000000, got NaN",
			"output: 0.6", "output: .nan"),
		edit("price missing output", 7, "models[0].prices.output", "required: the price per million output tokens",
			"prices: {input: 0.15, output: 0.6}", "prices: {input: 0.15}"),
		edit("price missing input", 7, "models[0].prices.input", "required: the price per million input tokens",
			"prices: {input: 0.15, output: 0.6}", "prices: {output: 0.6, cachedInput: 0.1}"),

		// costs
		edit("cost named requests", 12, "costs[1].name", `"requests" is a built-in cost; quotas can name it without defining it`,
			"  - {name: tokens, type: TotalToken}\n", "  - {name: tokens, type: TotalToken}\n  - {name: requests, type: InputToken}\n"),
		edit("cost named price", 12, "costs[1].name", `"price" is a built-in cost`,
			"  - {name: tokens, type: TotalToken}\n", "  - {name: tokens, type: TotalToken}\n  - {name: price, cel: \"total_tokens\"}\n"),
		quota("unknown cost lists the built-in ones", `{model: gpt-4, cost: dollars, limit: 5, per: day}`,
			"quotas[5].cost", `unknown cost "dollars" (have: tokens, requests, price)`),

		// scopes and overrides
		edit("unknown scope", 17, "quotas[2].scope", `must be one of user, team, global, got "org"`, "scope: global", "scope: org"),
		quota("team override on a user quota", `{model: gpt-4, limit: "$5", per: day, overrides: [{team: research, limit: "$6"}]}`,
			"quotas[5].overrides[0].team", "only for quotas with scope team"),
		edit("user override on a team quota", 16, "quotas[1].overrides[0]", "a team quota's overrides name teams; give users their own limits with a user quota",
			`{team: research, limit: "$80"}`, `{user: bob, limit: "$80"}`),
		edit("tier override on a team quota", 16, "quotas[1].overrides[0]", "a team quota's overrides name teams",
			`{team: research, limit: "$80"}`, `{tier: gold, limit: "$80"}`),
		edit("team and user override on a team quota", 16, "quotas[1].overrides[0]", "set exactly one of user, tier and team",
			`{team: research, limit: "$80"}`, `{team: research, user: bob, limit: "$80"}`),
		edit("empty override on a team quota", 16, "quotas[1].overrides[0]", "set exactly one of user, tier and team",
			`{team: research, limit: "$80"}`, `{limit: "$80"}`),
		edit("invalid team id", 16, "quotas[1].overrides[0].team", `"a b" is not a valid team id: contains whitespace (U+0020)`,
			`{team: research, limit: "$80"}`, `{team: "a b", limit: "$80"}`),
		edit("second override for a team", 16, "quotas[1].overrides[1]", "second override for team research (also quotas[1].overrides[0])",
			`{team: research, limit: "$80"}`, `{team: research, limit: "$80"}, {team: research, limit: "$90"}`),
		edit("user override on a global quota", 17, "quotas[2].overrides[0]", "a global quota has one counter for everyone; change its limit instead",
			"limit: 1000, per: minute}", "limit: 1000, per: minute, overrides: [{user: bob, limit: 5}]}"),
		edit("tier override on a global quota", 17, "quotas[2].overrides[0]", "a global quota has one counter for everyone",
			"limit: 1000, per: minute}", "limit: 1000, per: minute, overrides: [{tier: gold, limit: 5}]}"),
		edit("team override on a global quota", 17, "quotas[2].overrides[0]", "a global quota has one counter for everyone",
			"limit: 1000, per: minute}", "limit: 1000, per: minute, overrides: [{team: research, limit: 5}]}"),

		// periods and timezones
		edit("timezone on a fixed window", 17, "quotas[2].timezone", "only for calendar periods (calendar-day, calendar-week, calendar-month); fixed windows are aligned to the Unix epoch",
			"per: minute}", "per: minute, timezone: Europe/Berlin}"),
		edit("unknown timezone", 15, "quotas[0].timezone", `unknown timezone "Mars/Olympus_Mons"`,
			"timezone: Europe/Berlin", "timezone: Mars/Olympus_Mons"),
		edit("timezone Local", 15, "quotas[0].timezone", `unknown timezone "Local": name the zone (such as Europe/Berlin); Local depends on the host`,
			"timezone: Europe/Berlin", "timezone: Local"),
		edit("unknown calendar period", 15, "quotas[0].per", "must be one of second, minute, hour, day, week, month, year, calendar-day, calendar-week, calendar-month, got \"calendar-year\"",
			"per: calendar-month", "per: calendar-year"),

		// output ceilings
		edit("quota ceiling negative", 18, "quotas[3].maxTokensPerRequest", "must be from 1 to 10000000 (or 0 for none), got -1",
			"maxTokensPerRequest: 2048", "maxTokensPerRequest: -1"),
		edit("quota ceiling too large", 18, "quotas[3].maxTokensPerRequest", "must be from 1 to 10000000 (or 0 for none), got 10000001",
			"maxTokensPerRequest: 2048", "maxTokensPerRequest: 10000001"),
		edit("tier ceiling negative", 13, "tiers[0].maxTokensPerRequest", "must be from 1 to 10000000 (or 0 for none), got -1",
			"maxTokensPerRequest: 8192", "maxTokensPerRequest: -1"),
		edit("tier ceiling too large", 13, "tiers[0].maxTokensPerRequest", "got 10000001",
			"maxTokensPerRequest: 8192", "maxTokensPerRequest: 10000001"),

		// identity
		edit("api key with an invalid team", 2, "identity.apiKeys[0].team", `"a b" is not a valid team id (`+UserIDRule+`)`,
			"identity: {header: x-user-id}", apiKeys(`team: "a b"`)),
		edit("api key with a team too long", 2, "identity.apiKeys[0].team", "is not a valid team id",
			"identity: {header: x-user-id}", apiKeys("team: "+strings.Repeat("t", MaxUserIDBytes+1))),
		edit("jwt team claim with whitespace", 2, "identity.jwt.teamClaim", "must be printable and contain no whitespace",
			"identity: {header: x-user-id}", `identity: {mode: jwt, jwt: {issuer: "https://issuer.example", jwksURI: "https://issuer.example/jwks.json", teamClaim: "team id"}}`),
		edit("team header same as identity header", 2, "identity.teamHeader", `must differ from listener.modelHeader and identity.header ("x-user-id")`,
			"identity: {header: x-user-id}", "identity: {header: x-user-id, teamHeader: X-User-ID}"),
		edit("team header invalid", 2, "identity.teamHeader", `"x team" is not a valid HTTP header name`,
			"identity: {header: x-user-id}", `identity: {header: x-user-id, teamHeader: "x team"}`),

		// duplicates
		quota("duplicate quota with its own name", `{name: other, model: gpt-4, cost: price, limit: "$5", per: calendar-month, timezone: Europe/Berlin}`,
			"quotas[5]", "same model, scope, cost and per as quotas[0]"),
		quota("duplicate quota spelt differently", `{model: qwen3, scope: GLOBAL, cost: requests, limit: 5, per: Minute}`,
			"quotas[5]", "same model, scope, cost and per as quotas[2]"),
		quota("duplicate all-models quota", `{name: daily, cost: requests, limit: 7, per: day}`,
			"quotas[5]", "same model, scope, cost and per as quotas[4]"),
		// Another timezone is another window, but the default name is the same.
		quota("same default name in another timezone", `{model: gpt-4, limit: "$5", per: calendar-month, timezone: Asia/Tokyo}`,
			"quotas[5].name", `duplicate quota name "gpt-4-price-per-calendar-month" (also quotas[0])`),
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list := parseErrors(t, tt.src(t))
			if len(list) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(list), (&Errors{List: list}).Error())
			}
			fe := list[0]
			if fe.Path != tt.path || !strings.Contains(fe.Message, tt.msg) {
				t.Errorf("error = %v\nwant path %s, message containing %q", fe, tt.path, tt.msg)
			}
			if fe.Line != tt.line {
				t.Errorf("error at line %d, want %d: %v", fe.Line, tt.line, fe)
			}
			if prefix := fmt.Sprintf("policy.yaml:%d: %s: ", tt.line, tt.path); !strings.HasPrefix(fe.Error(), prefix) {
				t.Errorf("Error() = %q, want prefix %q", fe.Error(), prefix)
			}
		})
	}
}

// TestBudgetErrorsAllReported: several budget mistakes in one file are all reported, sorted by
// line, each with its own path.
func TestBudgetErrorsAllReported(t *testing.T) {
	src := budgetWith(t,
		"decimals: 6", "decimals: 7",
		"input: 0.15", "input: -1",
		"timezone: Europe/Berlin", "timezone: Local",
		"scope: global", "scope: world",
		"maxTokensPerRequest: 2048", "maxTokensPerRequest: -5",
	)
	list := parseErrors(t, src)
	want := []struct {
		line int
		path string
	}{
		{1, "currency.decimals"},
		{7, "models[0].prices.input"},
		{15, "quotas[0].timezone"},
		{17, "quotas[2].scope"},
		{18, "quotas[3].maxTokensPerRequest"},
	}
	if len(list) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(list), len(want), (&Errors{List: list}).Error())
	}
	for i, w := range want {
		if list[i].Line != w.line || list[i].Path != w.path {
			t.Errorf("error %d = %v, want line %d at %s", i, list[i], w.line, w.path)
		}
	}
}

func TestPricesPerToken(t *testing.T) {
	f := budgetFloat
	tests := []struct {
		name   string
		prices Prices
		want   PerToken
	}{
		{"cheap model", Prices{Input: f(0.15), Output: f(0.6)}, PerToken{150000, 600000, 150000}},
		{"cached input defaults to input", Prices{Input: f(2.5), Output: f(10)}, PerToken{2500000, 10000000, 2500000}},
		{"cached input of its own", Prices{Input: f(2.5), Output: f(10), CachedInput: f(1.25)}, PerToken{2500000, 10000000, 1250000}},
		{"free cached input", Prices{Input: f(3), Output: f(15), CachedInput: f(0)}, PerToken{3000000, 15000000, 0}},
		{"finest price", Prices{Input: f(0.000001), Output: f(0.000002)}, PerToken{1, 2, 1}},
		{"inexact binary fractions", Prices{Input: f(0.29), Output: f(1.1), CachedInput: f(0.07)}, PerToken{290000, 1100000, 70000}},
		{"six decimals", Prices{Input: f(0.123456), Output: f(987.654321)}, PerToken{123456, 987654321, 123456}},
		{"highest price", Prices{Input: f(1_000_000), Output: f(1_000_000)}, PerToken{1e12, 1e12, 1e12}},
		{"nothing set", Prices{}, PerToken{}},
	}
	for _, tt := range tests {
		if got := tt.prices.PerToken(); got != tt.want {
			t.Errorf("%s: PerToken = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// TestPricesWithSixDecimalsAccepted: any price from 0 to 1000000 with at most six decimals is
// valid, at every magnitude.
func TestPricesWithSixDecimalsAccepted(t *testing.T) {
	tests := []struct {
		price string
		want  uint64
	}{
		{"0.000001", 1},
		{"0.29", 290000},
		{"15.000001", 15000001},
		{"600.123456", 600123456},
		{"9999.999999", 9999999999},
		{"16383.999999", 16383999999},
		{"999999.999999", 999999999999},
		{"16384.037209", 16384037209},
		{"540051.34397", 540051343970},
	}
	for _, tt := range tests {
		t.Run(tt.price, func(t *testing.T) {
			p := mustParse(t, budgetWith(t, "input: 0.15", "input: "+tt.price))
			if got := p.Models[0].Prices.PerToken().Input; got != tt.want {
				t.Errorf("PerToken().Input = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCurrencyFormat(t *testing.T) {
	tests := []struct {
		currency Currency
		units    uint64
		want     string
	}{
		{Currency{"USD", 6}, 12_500_000, "$12.50"},
		{Currency{"EUR", 6}, 12_500_000, "€12.50"},
		{Currency{"GBP", 6}, 1, "£0.000001"},
		{Currency{"USD", 6}, 0, "$0.00"},
		{Currency{"USD", 6}, 18_000, "$0.018"},
		{Currency{"USD", 6}, 4_294_967_295, "$4294.967295"},
		{Currency{"CHF", 2}, 150, "CHF 1.50"},
		{Currency{"CHF", 2}, 5, "CHF 0.05"},
		{Currency{"SEK", 3}, 1001, "SEK 1.001"},
		{Currency{"USD", 2}, 100_050, "$1000.50"},
		{Currency{"USD", 1}, 15, "$1.5"},
		{Currency{"USD", 0}, 42, "$42"},
		{Currency{"JPY", 0}, 1500, "¥1500"},
		{Currency{"CHF", 0}, 0, "CHF 0"},
	}
	for _, tt := range tests {
		if got := tt.currency.Format(tt.units); got != tt.want {
			t.Errorf("%+v.Format(%d) = %q, want %q", tt.currency, tt.units, got, tt.want)
		}
	}
	symbols := map[string]string{"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CHF": "CHF ", "SEK": "SEK "}
	for code, want := range symbols {
		if got := (Currency{Code: code}).Symbol(); got != want {
			t.Errorf("Symbol(%s) = %q, want %q", code, got, want)
		}
	}
}

// TestCurrencyFormatRoundTrip: a limit as parsed, converted to units and formatted shows the
// amount that was written.
func TestCurrencyFormatRoundTrip(t *testing.T) {
	tests := []struct {
		code     string
		decimals int
		limit    string
		want     string
	}{
		{"USD", 6, `"$1,000.50"`, "$1000.50"},
		{"USD", 2, `"$1,000.50"`, "$1000.50"},
		{"EUR", 6, `"12.5 EUR"`, "€12.50"},
		{"CHF", 2, `"CHF 1.5"`, "CHF 1.50"},
		{"JPY", 0, `"¥500"`, "¥500"},
	}
	for _, tt := range tests {
		p := mustParse(t, limitPolicy(tt.code, tt.decimals, tt.limit))
		units, err := p.Quotas[0].Limit.Units(p.Currency)
		if err != nil {
			t.Errorf("%s: Units: %v", tt.limit, err)
			continue
		}
		if got := p.Currency.Format(units); got != tt.want {
			t.Errorf("%s in %+v formats as %q, want %q", tt.limit, p.Currency, got, tt.want)
		}
	}
}

func TestBudgetTimezones(t *testing.T) {
	if loc, err := LoadTimezone(""); err != nil || loc != time.UTC {
		t.Errorf(`LoadTimezone("") = %v, %v; want UTC`, loc, err)
	}
	if loc, err := LoadTimezone("Europe/Berlin"); err != nil || loc.String() != "Europe/Berlin" {
		t.Errorf("LoadTimezone(Europe/Berlin) = %v, %v", loc, err)
	}
	for _, name := range []string{"Local", "Mars/Olympus_Mons", "../etc/passwd"} {
		if loc, err := LoadTimezone(name); err == nil {
			t.Errorf("LoadTimezone(%q) = %v, want an error", name, loc)
		}
	}
	for per, want := range map[string]bool{CalendarDay: true, CalendarWeek: true, CalendarMonth: true, "day": false, "month": false, "": false} {
		if IsCalendar(per) != want {
			t.Errorf("IsCalendar(%q) = %v, want %v", per, !want, want)
		}
	}
}

// TestAlertDefaults: an alerts block without thresholds alerts at 80, 90 and 100 %.
func TestAlertDefaults(t *testing.T) {
	p := mustParse(t, budgetWith(t, "  - {cost: requests, limit: 100, per: day}",
		`  - {cost: requests, limit: 100, per: day, alerts: {webhook: "https://hooks.example.com/x"}}`))
	q := p.Quotas[len(p.Quotas)-1]
	if q.Alerts == nil || fmt.Sprint(q.Alerts.At) != "[80 90 100]" || q.Alerts.Webhook != "https://hooks.example.com/x" {
		t.Fatalf("alerts %+v", q.Alerts)
	}
}
