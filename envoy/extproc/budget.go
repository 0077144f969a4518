package extproc

import (
	"math"
	"math/bits"
	"slices"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Quotas as the server applies them. Translate derives every quota's counter shape from the
// policy (which model it covers, whose counter it is, its period); the server only fills in the
// request's own values: the user or team, and the calendar period it falls in.

// Scope says whose requests share a quota's counter.
type Scope int

const (
	// ScopeUser gives every user a counter (the zero value).
	ScopeUser Scope = iota
	// ScopeTeam gives every team a counter; requests without a team are not counted on it.
	ScopeTeam
	// ScopeGlobal is one counter for every caller.
	ScopeGlobal
)

// String names the scope as the policy does.
func (s Scope) String() string {
	switch s {
	case ScopeTeam:
		return "team"
	case ScopeGlobal:
		return "global"
	default:
		return "user"
	}
}

// QuotaUnit is what a quota counts.
type QuotaUnit int

const (
	// UnitTokens counts a cost in tokens (or a CEL cost's units): the zero value.
	UnitTokens QuotaUnit = iota
	// UnitRequests counts requests.
	UnitRequests
	// UnitMoney counts money in Config.Money's units.
	UnitMoney
)

// Quota is one counter the requests for a model are checked against and charged to.
type Quota struct {
	// Name identifies the quota in logs, headers and 429 answers.
	Name string
	// Model is the model the quota counts; "" for every model.
	Model string
	// Cost names the Config.Costs entry whose value is charged.
	Cost string
	// Unit is what the cost counts, for messages.
	Unit QuotaUnit
	// Entries are the descriptor entries before the period's and the subject's.
	Entries []rlsclient.Entry
	// Scope says whose counter a request is counted on: SubjectKey's value is the user or the
	// team; a global quota has no subject entry.
	Scope      Scope
	SubjectKey string
	// Calendar, when set, makes the counter's period a calendar one: an entry PeriodKey with
	// the period's label goes before the subject.
	Calendar  *Calendar
	PeriodKey string
	// Limit is the quota's limit per window, and Limits the subjects (users or teams) with a
	// limit of their own; ServiceUnit is the ratelimit service's unit of the window (HOUR,
	// YEAR, ...). The service holds the same limits; the server needs them to add a grant.
	Limit       uint64
	Limits      map[string]uint64
	ServiceUnit string
	// MaxTokensPerRequest is the most output a request counted on this quota may ask for;
	// 0: no ceiling.
	MaxTokensPerRequest int64
	// Shadow quotas are counted like the others but never refuse a request or show in its
	// headers.
	Shadow bool
	// Alerts, when set, report the counter reaching shares of its limit.
	Alerts *Alerts
}

// appliesTo reports whether the quota counts a request of this user's team: a team quota
// counts only requests whose caller has a team.
func (q Quota) appliesTo(team string) bool { return q.Scope != ScopeTeam || team != "" }

// Descriptor is the counter of quota q for a request by user of team at time now, with hits to
// add: the quota's entries, the calendar period, then the user or team.
func (q Quota) Descriptor(user, team string, now time.Time, hits uint64) rlsclient.Descriptor {
	entries := make([]rlsclient.Entry, 0, len(q.Entries)+2)
	entries = append(entries, q.Entries...)
	if q.Calendar != nil {
		label, _, _ := q.Calendar.Period(now)
		entries = append(entries, rlsclient.Entry{Key: q.PeriodKey, Value: label})
	}
	if q.Scope != ScopeGlobal {
		entries = append(entries, rlsclient.Entry{Key: q.SubjectKey, Value: q.subject(user, team)})
	}
	return rlsclient.Descriptor{Entries: entries, Hits: hits}
}

// limitOf is the quota's limit for subject (a user or a team; "" for a global quota).
func (q Quota) limitOf(subject string) uint64 {
	if l, ok := q.Limits[subject]; ok {
		return l
	}
	return q.Limit
}

// subject is whose counter a request by user of team is counted on.
func (q Quota) subject(user, team string) string {
	switch q.Scope {
	case ScopeTeam:
		return team
	case ScopeGlobal:
		return ""
	default:
		return user
	}
}

// resetIn is how long until the quota's window ends, as the client is told: the calendar
// period's end, else what the service reported for its fixed window.
func (q Quota) resetIn(now time.Time, reported time.Duration) time.Duration {
	if q.Calendar == nil {
		return reported
	}
	_, _, end := q.Calendar.Period(now)
	return end.Sub(now)
}

// window is the length of the quota's current window, for the x-ratelimit-limit header.
func (q Quota) window(now time.Time, reported time.Duration) time.Duration {
	if q.Calendar == nil {
		return reported
	}
	_, start, end := q.Calendar.Period(now)
	return end.Sub(start)
}

// Price is a model's price per token in picounits (10^-12) of the policy's currency.
type Price struct {
	Input, Output, CachedInput uint64
}

// picoUnits is a request's price in 10^-12 of the currency, saturating (a backend that reports
// absurd counts cannot wrap the bill around to a small number).
func (p Price) picoUnits(u llmapi.Usage) uint64 {
	cached := min(max(u.CachedInputTokens, 0), max(u.InputTokens, 0))
	fresh := max(u.InputTokens, 0) - cached
	var total uint64
	for _, part := range [...]struct {
		tokens int64
		price  uint64
	}{{fresh, p.Input}, {cached, p.CachedInput}, {max(u.OutputTokens, 0), p.Output}} {
		hi, lo := bits.Mul64(uint64(part.tokens), part.price)
		sum, carry := bits.Add64(total, lo, 0)
		if hi != 0 || carry != 0 {
			return math.MaxUint64
		}
		total = sum
	}
	return total
}

// Money says how amounts of money are counted: in units of 10^-Decimals of the currency.
type Money struct {
	// Currency is the ISO code, for the spend metric.
	Currency string
	Decimals int
	// Format shows an amount in units ("$1.500000"); nil shows the bare number.
	Format func(units uint64) string
}

// units converts picounits to counter units, rounding up: a request never costs less than its
// price.
func (m Money) units(pico uint64) uint64 {
	perUnit := uint64(math.Pow10(12 - m.Decimals))
	units := pico / perUnit
	if pico%perUnit != 0 {
		units++
	}
	return units
}

// amount is units as a number of currency units, for metrics.
func (m Money) amount(units uint64) float64 { return float64(units) / math.Pow10(m.Decimals) }

// price is the request's price in counter units, and whether its model has prices.
func (ex *exchange) price(usage llmapi.Usage) (uint64, bool) {
	p, ok := ex.cfg.Prices[ex.model]
	if !ok {
		return 0, false
	}
	return ex.cfg.Money.units(p.picoUnits(usage)), true
}

// applicableQuotas are the model's quotas that count this request's caller: team quotas only
// count callers with a team.
func (ex *exchange) applicableQuotas() []Quota {
	all := ex.cfg.Quotas[ex.model]
	if ex.team != "" || !slices.ContainsFunc(all, func(q Quota) bool { return !q.appliesTo("") }) {
		return all
	}
	return slices.DeleteFunc(slices.Clone(all), func(q Quota) bool { return !q.appliesTo("") })
}

// outputCeiling is the most output this request may ask for: the lowest ceiling of the user's
// tier and of the quotas that count the request; 0: none.
func (ex *exchange) outputCeiling(quotas []Quota) int64 {
	ceiling := ex.cfg.MaxTokensPerRequest[ex.user]
	for _, q := range quotas {
		if q.Shadow {
			continue // a shadow quota never refuses a request
		}
		if c := q.MaxTokensPerRequest; c > 0 && (ceiling == 0 || c < ceiling) {
			ceiling = c
		}
	}
	return ceiling
}
