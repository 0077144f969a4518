package extproc

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	"github.com/tollgate-dev/tollgate/policies"
)

func TestPricePicoUnits(t *testing.T) {
	p := Price{Input: 3, CachedInput: 1, Output: 15}
	tests := []struct {
		name  string
		price Price
		usage llmapi.Usage
		want  uint64
	}{
		{"fresh, cached and output priced apart", p, llmapi.Usage{InputTokens: 10, CachedInputTokens: 4, OutputTokens: 5}, 6*3 + 4*1 + 5*15},
		{"no cached tokens", p, llmapi.Usage{InputTokens: 10, OutputTokens: 5}, 10*3 + 5*15},
		{"all input cached", p, llmapi.Usage{InputTokens: 10, CachedInputTokens: 10}, 10 * 1},
		{"cached clamped to the input", p, llmapi.Usage{InputTokens: 3, CachedInputTokens: 10, OutputTokens: 1}, 3*1 + 15},
		{"negative cached counts as 0", p, llmapi.Usage{InputTokens: 10, CachedInputTokens: -4}, 10 * 3},
		{"negative input counts as 0", p, llmapi.Usage{InputTokens: -10, CachedInputTokens: 4, OutputTokens: 2}, 2 * 15},
		{"negative output counts as 0", p, llmapi.Usage{InputTokens: 1, OutputTokens: -7}, 3},
		{"all negative", p, llmapi.Usage{InputTokens: -1, CachedInputTokens: -1, OutputTokens: -1}, 0},
		{"free model", Price{}, llmapi.Usage{InputTokens: 1000, OutputTokens: 1000}, 0},
		{"huge but exact", Price{Input: 1 << 62, Output: 1}, llmapi.Usage{InputTokens: 2, OutputTokens: 5}, 1<<63 + 5},
		{"exactly the maximum", Price{Input: math.MaxUint64 - 1, Output: 1}, llmapi.Usage{InputTokens: 1, OutputTokens: 1}, math.MaxUint64},
		{"product overflows", Price{Input: 1 << 62}, llmapi.Usage{InputTokens: 4}, math.MaxUint64},
		{"huge count", Price{Input: 3, Output: 15}, llmapi.Usage{InputTokens: math.MaxInt64, OutputTokens: math.MaxInt64}, math.MaxUint64},
		{"huge cached count", Price{CachedInput: 3}, llmapi.Usage{InputTokens: math.MaxInt64, CachedInputTokens: math.MaxInt64}, math.MaxUint64},
		{"sum overflows", Price{Input: math.MaxUint64, Output: 1}, llmapi.Usage{InputTokens: 1, OutputTokens: 1}, math.MaxUint64},
		{"sum overflows at the cached part", Price{Input: math.MaxUint64 - 1, CachedInput: 2}, llmapi.Usage{InputTokens: 2, CachedInputTokens: 1}, math.MaxUint64},
	}
	for _, tt := range tests {
		if got := tt.price.picoUnits(tt.usage); got != tt.want {
			t.Errorf("%s: %+v.picoUnits(%+v) = %d, want %d", tt.name, tt.price, tt.usage, got, tt.want)
		}
	}
}

func TestMoneyUnits(t *testing.T) {
	const pico = 1_000_000_000_000 // picounits in one unit of the currency
	tests := []struct {
		decimals int
		pico     uint64
		want     uint64
	}{
		{6, 0, 0},
		{6, 1, 1}, // a request never costs less than its price
		{6, 999_999, 1},
		{6, 1_000_000, 1}, // an exact multiple is not rounded
		{6, 1_000_001, 2},
		{6, 2_500_000, 3},
		{6, 5_000_000, 5},
		{6, pico, 1_000_000},
		{6, math.MaxUint64, math.MaxUint64/1_000_000 + 1},
		{0, 0, 0},
		{0, 1, 1},
		{0, pico - 1, 1},
		{0, pico, 1},
		{0, pico + 1, 2},
		{0, 3 * pico, 3},
		{2, pico / 100, 1},
		{2, pico/100 + 1, 2},
		{12, 7, 7},
	}
	for _, tt := range tests {
		m := Money{Currency: "USD", Decimals: tt.decimals}
		if got := m.units(tt.pico); got != tt.want {
			t.Errorf("decimals %d: units(%d) = %d, want %d", tt.decimals, tt.pico, got, tt.want)
		}
	}
}

func TestMoneyAmount(t *testing.T) {
	tests := []struct {
		decimals int
		units    uint64
		want     float64
	}{
		{6, 1_500_000, 1.5},
		{6, 58, 0.000058},
		{6, 0, 0},
		{0, 7, 7},
		{2, 12345, 123.45},
	}
	for _, tt := range tests {
		if got := (Money{Decimals: tt.decimals}).amount(tt.units); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("decimals %d: amount(%d) = %v, want %v", tt.decimals, tt.units, got, tt.want)
		}
	}
}

func TestScopeString(t *testing.T) {
	for s, want := range map[Scope]string{ScopeUser: "user", ScopeTeam: "team", ScopeGlobal: "global", Scope(42): "user"} {
		if got := s.String(); got != want {
			t.Errorf("Scope(%d).String() = %q, want %q", int(s), got, want)
		}
	}
	var zero Quota
	if zero.Scope != ScopeUser {
		t.Errorf("a quota's zero scope is %v, want user", zero.Scope)
	}
}

func TestQuotaAppliesTo(t *testing.T) {
	tests := []struct {
		scope Scope
		team  string
		want  bool
	}{
		{ScopeUser, "", true},
		{ScopeUser, "eng", true},
		{ScopeTeam, "", false},
		{ScopeTeam, "eng", true},
		{ScopeGlobal, "", true},
		{ScopeGlobal, "eng", true},
	}
	for _, tt := range tests {
		if got := (Quota{Scope: tt.scope}).appliesTo(tt.team); got != tt.want {
			t.Errorf("%v quota, team %q: appliesTo = %v, want %v", tt.scope, tt.team, got, tt.want)
		}
	}
}

// describe renders descriptor entries as rlsclienttest does.
func describe(d rlsclient.Descriptor) string {
	return fmt.Sprintf("%s +%d", d, d.Hits)
}

func TestQuotaDescriptor(t *testing.T) {
	berlin := zone(t, "Europe/Berlin")
	now := instant(t, "2026-12-06T23:30:00Z") // 2026-12-07 00:30 in Berlin: a Monday
	modelEntries := []rlsclient.Entry{{Key: "model", Value: "qwen3"}, {Key: "quota", Value: "q"}}
	tests := []struct {
		name  string
		quota Quota
		want  string
	}{
		{"user", Quota{Entries: modelEntries, SubjectKey: "user"}, "model=qwen3,quota=q,user=alice +7"},
		{"team", Quota{Entries: modelEntries, Scope: ScopeTeam, SubjectKey: "team"}, "model=qwen3,quota=q,team=eng +7"},
		{"global", Quota{Entries: modelEntries, Scope: ScopeGlobal}, "model=qwen3,quota=q +7"},
		{"user, calendar day", Quota{Entries: modelEntries, SubjectKey: "user", Calendar: &Calendar{Unit: CalendarDay, Location: berlin}, PeriodKey: "period"},
			"model=qwen3,quota=q,period=2026-12-07,user=alice +7"},
		{"user, calendar day in UTC", Quota{Entries: modelEntries, SubjectKey: "user", Calendar: &Calendar{Unit: CalendarDay}, PeriodKey: "period"},
			"model=qwen3,quota=q,period=2026-12-06,user=alice +7"},
		{"team, calendar week", Quota{Entries: modelEntries, Scope: ScopeTeam, SubjectKey: "team", Calendar: &Calendar{Unit: CalendarWeek, Location: berlin}, PeriodKey: "period"},
			"model=qwen3,quota=q,period=2026-W50,team=eng +7"},
		{"global, calendar month", Quota{Entries: []rlsclient.Entry{{Key: "quota", Value: "all"}}, Scope: ScopeGlobal, Calendar: &Calendar{Unit: CalendarMonth, Location: berlin}, PeriodKey: "period"},
			"quota=all,period=2026-12 +7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.quota.Descriptor("alice", "eng", now, 7)
			if got := describe(d); got != tt.want {
				t.Errorf("descriptor %q, want %q", got, tt.want)
			}
			if d.MustFit {
				t.Errorf("Descriptor set MustFit; admission decides that")
			}
			// The descriptor has entries of its own: changing them leaves the quota alone.
			d.Entries[0].Value = "changed"
			if tt.quota.Entries[0].Value == "changed" {
				t.Errorf("the descriptor shares the quota's entries")
			}
		})
	}
	// Check-only descriptors carry no hits.
	if d := (Quota{Entries: modelEntries, SubjectKey: "user"}).Descriptor("bob", "", now, 0); describe(d) != "model=qwen3,quota=q,user=bob +0" {
		t.Errorf("check descriptor %q", describe(d))
	}
}

func TestQuotaResetInAndWindow(t *testing.T) {
	const reported, reportedWindow = 90 * time.Second, time.Hour
	tests := []struct {
		name          string
		calendar      *Calendar
		now           string
		reset, window time.Duration
	}{
		{"fixed window: what the service reported", nil, "2026-12-06T22:00:00Z", reported, reportedWindow},
		{"UTC day", &Calendar{Unit: CalendarDay}, "2026-12-06T22:00:00Z", 2 * time.Hour, 24 * time.Hour},
		{"Berlin day, 23 hours", &Calendar{Unit: CalendarDay, Location: zone(t, "Europe/Berlin")}, "2026-03-29T12:00:00Z", 10 * time.Hour, 23 * time.Hour},
		{"Berlin day, 25 hours", &Calendar{Unit: CalendarDay, Location: zone(t, "Europe/Berlin")}, "2026-10-25T12:00:00Z", 11 * time.Hour, 25 * time.Hour},
		{"Kolkata week", &Calendar{Unit: CalendarWeek, Location: zone(t, "Asia/Kolkata")}, "2026-12-06T18:00:00Z", 30 * time.Minute, 7 * 24 * time.Hour},
		{"Chatham month", &Calendar{Unit: CalendarMonth, Location: zone(t, "Pacific/Chatham")}, "2026-12-31T10:14:59Z", time.Second, 31 * 24 * time.Hour},
		{"at the boundary: a whole new period", &Calendar{Unit: CalendarDay}, "2026-12-07T00:00:00Z", 24 * time.Hour, 24 * time.Hour},
	}
	for _, tt := range tests {
		q := Quota{Calendar: tt.calendar}
		now := instant(t, tt.now)
		if got := q.resetIn(now, reported); got != tt.reset {
			t.Errorf("%s: resetIn = %v, want %v", tt.name, got, tt.reset)
		}
		if got := q.window(now, reportedWindow); got != tt.window {
			t.Errorf("%s: window = %v, want %v", tt.name, got, tt.window)
		}
	}
}

// quotaConfig is testConfig charged to the ratelimit service at addr, with quotas on qwen3.
func quotaConfig(t testing.TB, addr string, quotas ...Quota) *Config {
	t.Helper()
	cfg := testConfig(t)
	return withQuotas(cfg, addr, quotas...)
}

// withQuotas sends cfg's checks and charges to addr and gives qwen3 quotas.
func withQuotas(cfg *Config, addr string, quotas ...Quota) *Config {
	cfg.RateLimitAddress = addr
	cfg.RateLimitDomain = "tollgate"
	cfg.Quotas = map[string][]Quota{"qwen3": quotas}
	return cfg
}

// userQuota is a per-user quota named name charged cost, keyed quota=name,user=<user>.
func userQuota(name, cost string) Quota {
	return Quota{Name: name, Cost: cost, SubjectKey: "user", Entries: []rlsclient.Entry{{Key: "quota", Value: name}}}
}

// teamQuota is a per-team quota named name charged cost, keyed quota=name,team=<team>.
func teamQuota(name, cost string) Quota {
	return Quota{Name: name, Cost: cost, Scope: ScopeTeam, SubjectKey: "team", Entries: []rlsclient.Entry{{Key: "quota", Value: name}}}
}

// TestOutputCeiling: a request asking for more output than the lowest ceiling of its user's
// tier and of its quotas is answered 400 before anything is checked or charged; one at the
// ceiling goes on.
func TestOutputCeiling(t *testing.T) {
	capped := func(q Quota, ceiling int64) Quota { q.MaxTokensPerRequest = ceiling; return q }
	shadowed := func(q Quota) Quota { q.Shadow = true; return q }
	tests := []struct {
		name    string
		quotas  []Quota
		tiers   map[string]int64 // Config.MaxTokensPerRequest
		user    string
		team    string
		body    string
		ceiling int64 // 0: admitted
	}{
		{name: "over the quota's ceiling", quotas: []Quota{capped(userQuota("q", "llm_total_token"), 100)},
			body: `{"model":"qwen3","max_tokens":101}`, ceiling: 100},
		{name: "at the quota's ceiling", quotas: []Quota{capped(userQuota("q", "llm_total_token"), 100)},
			body: `{"model":"qwen3","max_tokens":100}`},
		{name: "over, as max_completion_tokens", quotas: []Quota{capped(userQuota("q", "llm_total_token"), 100)},
			body: `{"model":"qwen3","max_completion_tokens":5000}`, ceiling: 100},
		{name: "the lowest quota ceiling counts", quotas: []Quota{capped(userQuota("a", "llm_total_token"), 300), capped(userQuota("b", "llm_input_token"), 100), userQuota("c", "llm_output_token")},
			body: `{"model":"qwen3","max_tokens":101}`, ceiling: 100},
		{name: "over the tier's ceiling", tiers: map[string]int64{"alice": 50}, quotas: []Quota{userQuota("q", "llm_total_token")},
			body: `{"model":"qwen3","max_tokens":51}`, ceiling: 50},
		{name: "at the tier's ceiling", tiers: map[string]int64{"alice": 50}, quotas: []Quota{userQuota("q", "llm_total_token")},
			body: `{"model":"qwen3","max_tokens":50}`},
		{name: "tier below the quota", tiers: map[string]int64{"alice": 50}, quotas: []Quota{capped(userQuota("q", "llm_total_token"), 100)},
			body: `{"model":"qwen3","max_tokens":60}`, ceiling: 50},
		{name: "quota below the tier", tiers: map[string]int64{"alice": 500}, quotas: []Quota{capped(userQuota("q", "llm_total_token"), 100)},
			body: `{"model":"qwen3","max_tokens":101}`, ceiling: 100},
		{name: "another tier's ceiling", tiers: map[string]int64{"alice": 50}, quotas: []Quota{userQuota("q", "llm_total_token")},
			user: "bob", body: `{"model":"qwen3","max_tokens":5000}`},
		{name: "the tier's ceiling on a model without quotas", tiers: map[string]int64{"alice": 50},
			body: `{"model":"qwen3","max_tokens":51}`, ceiling: 50},
		{name: "a team quota's ceiling without a team", quotas: []Quota{capped(teamQuota("t", "llm_total_token"), 10), userQuota("q", "llm_total_token")},
			body: `{"model":"qwen3","max_tokens":500}`},
		{name: "a team quota's ceiling with a team", quotas: []Quota{capped(teamQuota("t", "llm_total_token"), 10), userQuota("q", "llm_total_token")},
			team: "eng", body: `{"model":"qwen3","max_tokens":11}`, ceiling: 10},
		{name: "no max_tokens", quotas: []Quota{capped(userQuota("q", "llm_total_token"), 10)}, tiers: map[string]int64{"alice": 5},
			body: `{"model":"qwen3"}`},
		{name: "a shadow quota's ceiling never refuses", quotas: []Quota{userQuota("q", "llm_total_token"), shadowed(capped(userQuota("s", "llm_output_token"), 100))},
			body: `{"model":"qwen3","max_tokens":500}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			cfg := quotaConfig(t, fake.Addr, tt.quotas...)
			if tt.quotas == nil {
				cfg.Quotas = nil
			}
			cfg.MaxTokensPerRequest = tt.tiers
			cfg.TeamHeader = policies.DefaultTeamHeader
			h := newHarness(t, cfg)
			user := "alice"
			if tt.user != "" {
				user = tt.user
			}
			headers := []string{policies.DefaultIdentityHeader, user}
			if tt.team != "" {
				headers = append(headers, policies.DefaultTeamHeader, tt.team)
			}
			c := h.open(t)
			if resp := c.send(apiKeyHeaders(len(tt.body), headers...)); resp.GetRequestHeaders() == nil {
				t.Fatalf("headers refused: %v", resp)
			}
			resp := c.send(requestBody(tt.body))
			if tt.ceiling == 0 {
				if resp.GetRequestBody() == nil {
					t.Fatalf("a request within its ceiling was refused: %v", resp.GetImmediateResponse())
				}
				if tt.quotas != nil && len(fake.CheckCalls()) != 1 {
					t.Errorf("%d checks for an admitted request, want 1", len(fake.CheckCalls()))
				}
				return
			}
			got := immediate(t, resp, 400)
			if got.Error.Type != errorTypeInvalidRequest || got.Error.Code == nil || *got.Error.Code != "max_tokens_exceeded" {
				t.Errorf("error %+v, want invalid_request_error / max_tokens_exceeded", got.Error)
			}
			if want := fmt.Sprintf("at most %d are allowed per request", tt.ceiling); !strings.Contains(got.Error.Message, want) {
				t.Errorf("message %q does not say %q", got.Error.Message, want)
			}
			if d := resp.GetImmediateResponse().GetDetails(); d != "tollgate_max_tokens_exceeded" {
				t.Errorf("details %q", d)
			}
			if m := metadataFields(resp); m[metadataModel] != "qwen3" {
				t.Errorf("the refusal does not name the model for the access log: %v", m)
			}
			c.end()
			if err := h.srv.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if checks, charges := fake.Checks(), fake.Charges(); len(checks) != 0 || len(charges) != 0 {
				t.Errorf("a refused request was checked %q or charged %q", checks, charges)
			}
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeRejected400)); n != 1 {
				t.Errorf("400 outcomes = %v, want 1", n)
			}
		})
	}
}

// refundNothing is a Refunder that takes every refund and does nothing: with one, admission
// reserves a request's worst case, as tollgate does with its Redis counters.
type refundNothing struct{}

func (refundNothing) Refund(context.Context, []rlsclient.Refund) error { return nil }

// TestUnnamedOutputReservesTheCeiling: a request that names no max_tokens reserves the lowest
// output ceiling that applies to it, not DefaultMaxOutputTokens; one that names it reserves
// what it names. The harness's client cannot refund and so reserves nothing; this runs the
// exchange on a client that can, and reads the reservation off the admission call the fake
// received: a check (+0) followed by the reservation.
func TestUnnamedOutputReservesTheCeiling(t *testing.T) {
	tests := []struct {
		name    string
		ceiling int64            // the quota's
		tiers   map[string]int64 // Config.MaxTokensPerRequest
		body    string
		want    int64
	}{
		{name: "quota ceiling below the default", ceiling: 300, body: `{"model":"qwen3"}`, want: 300},
		{name: "quota ceiling above the default", ceiling: 8000, body: `{"model":"qwen3"}`, want: 8000},
		{name: "tier ceiling", tiers: map[string]int64{"alice": 200}, body: `{"model":"qwen3"}`, want: 200},
		{name: "tier below the quota", ceiling: 300, tiers: map[string]int64{"alice": 200}, body: `{"model":"qwen3"}`, want: 200},
		{name: "no ceiling: the default", body: `{"model":"qwen3"}`, want: policies.DefaultMaxOutputTokens},
		{name: "max_tokens named", ceiling: 300, body: `{"model":"qwen3","max_tokens":50}`, want: 50},
		{name: "max_tokens 0 names none", ceiling: 300, body: `{"model":"qwen3","max_tokens":0}`, want: 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			q := userQuota("out", "llm_output_token") // reserves the output exactly
			q.MaxTokensPerRequest = tt.ceiling
			cfg := quotaConfig(t, fake.Addr, q)
			cfg.MaxTokensPerRequest = tt.tiers
			if cfg.DefaultMaxOutputTokens != policies.DefaultMaxOutputTokens {
				t.Fatalf("testConfig's DefaultMaxOutputTokens is %d", cfg.DefaultMaxOutputTokens)
			}
			client, err := rlsclient.New(rlsclient.Options{Refunder: refundNothing{}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = client.Close(context.Background()) })
			ex := newExchange(context.Background(), withDefaults(cfg), slog.New(slog.DiscardHandler), NewMetrics(nil), client, nil)
			defer ex.close()
			if resp := ex.handle(chatHeaders(len(tt.body))); resp.GetRequestHeaders() == nil {
				t.Fatalf("headers refused: %v", resp)
			}
			if resp := ex.handle(requestBody(tt.body)); resp.GetRequestBody() == nil {
				t.Fatalf("request refused: %v", resp.GetImmediateResponse())
			}
			checks := fake.CheckCalls()
			if len(checks) != 1 {
				t.Fatalf("%d admission calls, want 1", len(checks))
			}
			want := []string{"quota=out,user=alice +0", fmt.Sprintf("quota=out,user=alice +%d", tt.want)}
			if got := rlsclienttest.Describe(checks[0]); !slices.Equal(got, want) {
				t.Errorf("admission call %q, want %q", got, want)
			}
		})
	}
}

// TestUnnamedOutputIsChargedTheCeiling: through the server, a request that names no max_tokens
// and whose client leaves before any answer is charged the quota's ceiling as its output, not
// DefaultMaxOutputTokens.
func TestUnnamedOutputIsChargedTheCeiling(t *testing.T) {
	fake := rlsclienttest.Start(t)
	q := userQuota("out", "llm_output_token")
	q.MaxTokensPerRequest = 300
	h := newHarness(t, quotaConfig(t, fake.Addr, q))
	c := h.open(t)
	if resp := sendChat(t, c, `{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}`); resp.GetRequestBody() == nil {
		t.Fatalf("request refused: %v", resp.GetImmediateResponse())
	}
	c.cancel()
	waitForCharges(t, fake, "quota=out,user=alice +300")
}

// TestTeamFromHeader: in header mode the team header names the caller's team, whose counter
// the team quotas use; a request without one is not counted on them.
func TestTeamFromHeader(t *testing.T) {
	const teamHeader = policies.DefaultTeamHeader
	tests := []struct {
		name    string
		teams   []string // the team header's values
		checked []string // the admission call's descriptors
		status  int      // of the request headers answer; 0: accepted
		code    string
	}{
		{name: "team", teams: []string{"eng"}, checked: []string{"quota=team-daily,team=eng +0", "quota=user-daily,user=alice +0"}},
		{name: "no team", checked: []string{"quota=user-daily,user=alice +0"}},
		{name: "blank team", teams: []string{"  "}, checked: []string{"quota=user-daily,user=alice +0"}},
		{name: "two teams", teams: []string{"eng", "ops"}, status: 400, code: "ambiguous_team"},
		{name: "the same team twice", teams: []string{"eng", "eng"}, status: 400, code: "ambiguous_team"},
		{name: "space inside", teams: []string{"eng-7q team"}, status: 400, code: "invalid_team"},
		{name: "leading space", teams: []string{" eng-7q"}, status: 400, code: "invalid_team"},
		{name: "tab", teams: []string{"eng-7q\tops"}, status: 400, code: "invalid_team"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			cfg := quotaConfig(t, fake.Addr, teamQuota("team-daily", "llm_total_token"), userQuota("user-daily", "llm_total_token"))
			cfg.TeamHeader = "X-Team-ID" // header names are matched lowercased
			h := newHarness(t, cfg)
			c := h.open(t)
			var extra []string
			for _, team := range tt.teams {
				extra = append(extra, teamHeader, team)
			}
			resp := c.send(chatHeaders(len(chatBody), extra...))
			if tt.status != 0 {
				got := immediate(t, resp, tt.status)
				if got.Error.Type != errorTypeInvalidRequest || got.Error.Code == nil || *got.Error.Code != tt.code {
					t.Fatalf("error %+v, want invalid_request_error / %s", got.Error, tt.code)
				}
				if tt.code == "invalid_team" && strings.Contains(got.Error.Message, strings.TrimSpace(tt.teams[0])) {
					t.Errorf("message %q repeats the team id", got.Error.Message)
				}
				c.end()
				if checks := fake.Checks(); len(checks) != 0 {
					t.Errorf("a refused request was checked: %q", checks)
				}
				return
			}
			m := headerMutation(t, resp)
			if _, set := setValue(t, m, teamHeader); set || slices.Contains(m.GetRemoveHeaders(), teamHeader) {
				t.Errorf("header mode changed the team header: %v", m)
			}
			if body := c.send(requestBody(chatBody)); body.GetRequestBody() == nil {
				t.Fatalf("request refused: %v", body.GetImmediateResponse())
			}
			if got := fake.Checks(); !slices.Equal(got, tt.checked) {
				t.Errorf("checked %q, want %q", got, tt.checked)
			}
		})
	}
}

// TestTeamFromAPIKey: in API key mode the key names the team; the client's own team header is
// overwritten with it, or removed when the key has no team.
func TestTeamFromAPIKey(t *testing.T) {
	const teamHeader = policies.DefaultTeamHeader
	tests := []struct {
		name    string
		key     string
		team    string // "": the header is removed
		checked []string
	}{
		{"key with a team", aliceKey, "eng", []string{"quota=team-daily,team=eng +0", "quota=user-daily,user=alice +0"}},
		{"key without a team", bobKey, "", []string{"quota=user-daily,user=bob +0"}},
	}
	for _, tt := range tests {
		for _, forged := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, forged header %v", tt.name, forged), func(t *testing.T) {
				fake := rlsclienttest.Start(t)
				cfg := withQuotas(apiKeyConfig(t), fake.Addr, teamQuota("team-daily", "llm_total_token"), userQuota("user-daily", "llm_total_token"))
				cfg.TeamHeader = teamHeader
				cfg.APIKeyTeams = map[KeyHash]string{HashKey(aliceKey): "eng"}
				h := newHarness(t, cfg)
				c := h.open(t)
				headers := []string{"authorization", "Bearer " + tt.key}
				if forged {
					headers = append(headers, teamHeader, "forged")
				}
				m := headerMutation(t, c.send(apiKeyHeaders(len(chatBody), headers...)))
				got, set := setValue(t, m, teamHeader)
				removed := slices.Contains(m.GetRemoveHeaders(), teamHeader)
				if tt.team != "" && (!set || got != tt.team || removed) {
					t.Errorf("team header set to %q (set: %v, removed: %v), want %q", got, set, removed, tt.team)
				}
				if tt.team == "" && (set || !removed) {
					t.Errorf("team header set to %q (set: %v, removed: %v), want it removed", got, set, removed)
				}
				if body := c.send(requestBody(chatBody)); body.GetRequestBody() == nil {
					t.Fatalf("request refused: %v", body.GetImmediateResponse())
				}
				if got := fake.Checks(); !slices.Equal(got, tt.checked) {
					t.Errorf("checked %q, want %q", got, tt.checked)
				}
			})
		}
	}
}

// TestPriceQuotaIsChargedMoney: a quota on the price cost is charged the response's price in
// Config.Money's units, rounded up: chat_completion.json reports 6 prompt tokens, 2 of them
// cached, and 6 completion tokens.
func TestPriceQuotaIsChargedMoney(t *testing.T) {
	price := Price{Input: 2_000_001, CachedInput: 500_000, Output: 8_000_000}
	// 4 fresh input tokens, 2 cached, 6 output.
	const pico = 4*2_000_001 + 2*500_000 + 6*8_000_000 // 57_000_004
	tests := []struct {
		money Money
		units uint64
	}{
		{Money{Currency: "USD", Decimals: 6}, 58},             // 57.000004 millionths, rounded up
		{Money{Currency: "EUR", Decimals: 2}, 1},              // a fraction of a cent is a cent
		{Money{Currency: "JPY", Decimals: 0}, 1},              // a fraction of a yen is a yen
		{Money{Currency: "PICO", Decimals: 12}, uint64(pico)}, // exact
	}
	for _, tt := range tests {
		t.Run(tt.money.Currency, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			q := userQuota("spend", "price")
			q.Unit = UnitMoney
			cfg := quotaConfig(t, fake.Addr, q)
			cfg.Costs = append(cfg.Costs, Cost{Name: "price", Kind: CostPrice})
			cfg.Prices = map[string]Price{"qwen3": price}
			cfg.Money = tt.money
			h := newHarness(t, cfg)
			c := h.open(t)
			sendChat(t, c, chatBody)
			c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
			final := c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
			c.end()
			if got := metadataFields(final)["price"]; got != float64(tt.units) {
				t.Errorf("price metadata %v, want %d", got, tt.units)
			}
			if got := fake.Checks(); !slices.Equal(got, []string{"quota=spend,user=alice +0"}) {
				t.Errorf("checked %q", got)
			}
			waitForCharges(t, fake, fmt.Sprintf("quota=spend,user=alice +%d", tt.units))
			spent := testutil.ToFloat64(h.srv.metrics.spend.WithLabelValues("qwen3", tt.money.Currency, ""))
			if want := float64(tt.units) / math.Pow10(tt.money.Decimals); math.Abs(spent-want) > 1e-15 {
				t.Errorf("spend metric %v, want %v", spent, want)
			}
		})
	}
}

// TestRequestQuotaMustFit: a quota counting requests is counted at admission, one hit that
// must fit under its limit, with no check of its own before it; the request is not counted
// again when it ends.
func TestRequestQuotaMustFit(t *testing.T) {
	rpm := userQuota("rpm", "requests")
	rpm.Unit = UnitRequests
	run := func(t *testing.T, quotas ...Quota) *rlsclienttest.Fake {
		t.Helper()
		fake := rlsclienttest.Start(t)
		cfg := quotaConfig(t, fake.Addr, quotas...)
		cfg.Costs = append(cfg.Costs, Cost{Name: "requests", Kind: CostRequests})
		h := newHarness(t, cfg)
		c := h.open(t)
		if resp := sendChat(t, c, chatBody); resp.GetRequestBody() == nil {
			t.Fatalf("request refused: %v", resp.GetImmediateResponse())
		}
		c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
		c.end()
		if err := h.srv.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		return fake
	}

	t.Run("with a token quota", func(t *testing.T) {
		fake := run(t, userQuota("hourly", "llm_total_token"), rpm)
		checks := fake.CheckCalls()
		if len(checks) != 1 {
			t.Fatalf("%d admission calls, want 1", len(checks))
		}
		// The token quota is checked (+0); the request quota is counted at once (+1), unchecked.
		want := []string{"quota=hourly,user=alice +0", "quota=rpm,user=alice +1"}
		if got := rlsclienttest.Describe(checks[0]); !slices.Equal(got, want) {
			t.Errorf("admission call %q, want %q", got, want)
		}
		// The end charges the tokens; the request was counted already.
		if got := fake.Charges(); !slices.Equal(got, []string{"quota=hourly,user=alice +12"}) {
			t.Errorf("charges %q, want the tokens only", got)
		}
	})

	t.Run("alone", func(t *testing.T) {
		fake := run(t, rpm)
		// The fake files a call by its first descriptor: one that adds hits is a "charge", so
		// the admission call of a request quota alone shows among the charges.
		if checks := fake.CheckCalls(); len(checks) != 0 {
			t.Errorf("calls with a +0 check: %q", fake.Checks())
		}
		calls := fake.ChargeCalls()
		if len(calls) != 1 {
			t.Fatalf("%d calls with hits, want 1 (the admission; nothing more at the end): %q", len(calls), fake.Charges())
		}
		if got := rlsclienttest.Describe(calls[0]); !slices.Equal(got, []string{"quota=rpm,user=alice +1"}) {
			t.Errorf("admission call %q", got)
		}
	})
}
