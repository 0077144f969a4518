package policies

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Budgets: quotas counted in money, shared by a team or by everyone, counted in requests, and
// reset on calendar boundaries.

// Built-in costs a quota can name besides the policy's own costs.
const (
	// CostRequests counts requests: 1 per request, charged when it is admitted.
	CostRequests = "requests"
	// CostPrice is what a request costs in money, from its model's prices and its usage.
	CostPrice = "price"
)

// BuiltinCosts lists the cost names the policy's costs may not take.
func BuiltinCosts() []string { return []string{CostRequests, CostPrice} }

// Quota scopes: whose requests share one counter.
const (
	// ScopeUser gives every user a counter of their own (the default).
	ScopeUser = "user"
	// ScopeTeam gives every team one counter its members share.
	ScopeTeam = "team"
	// ScopeGlobal is one counter for every caller.
	ScopeGlobal = "global"
)

// Scopes lists the valid scopes.
func Scopes() []string { return []string{ScopeUser, ScopeTeam, ScopeGlobal} }

// Calendar periods: windows that start at local midnight, on Monday, or on the 1st.
const (
	CalendarDay   = "calendar-day"
	CalendarWeek  = "calendar-week"
	CalendarMonth = "calendar-month"
)

// CalendarPeriods lists the calendar periods a quota's per can name.
func CalendarPeriods() []string { return []string{CalendarDay, CalendarWeek, CalendarMonth} }

// IsCalendar reports whether per names a calendar period rather than a fixed window.
func IsCalendar(per string) bool { return strings.HasPrefix(per, "calendar-") }

// Currency says what money amounts are in and how finely they are counted.
type Currency struct {
	// Code is the ISO 4217 code, such as USD or EUR. Default USD.
	Code string `yaml:"code"`
	// Decimals is how many decimal places of the currency a money counter keeps: 6 (the
	// default) counts millionths, so one counter holds at most 4294.967295. Fewer decimals
	// allow larger budgets; every request's price is rounded up to this precision.
	Decimals int `yaml:"decimals"`
}

// Default currency settings.
const (
	DefaultCurrencyCode     = "USD"
	DefaultCurrencyDecimals = 6
	// MaxCurrencyDecimals is the finest precision: prices are held in millionths of a
	// currency unit per million tokens, so a finer counter would only count rounding.
	MaxCurrencyDecimals = 6
)

// currencySymbols are the symbols a money limit may start with instead of naming the code.
var currencySymbols = map[string]string{"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}

// Symbol is how amounts in this currency are shown: its symbol when it has a common one,
// else its code and a space.
func (c Currency) Symbol() string {
	for symbol, code := range currencySymbols {
		if code == c.Code {
			return symbol
		}
	}
	return c.Code + " "
}

// Format shows an amount counted in units of this currency's decimals, with two decimals or
// as many as it needs: "$12.50", "$0.000018".
func (c Currency) Format(units uint64) string {
	if c.Decimals == 0 {
		return c.Symbol() + strconv.FormatUint(units, 10)
	}
	scale := uint64(math.Pow10(c.Decimals))
	frac := fmt.Sprintf("%0*d", c.Decimals, units%scale)
	keep := min(2, c.Decimals)
	for len(frac) > keep && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	return fmt.Sprintf("%s%d.%s", c.Symbol(), units/scale, frac)
}

// Prices are what a model costs per million tokens, in the policy's currency.
type Prices struct {
	Input  *float64 `yaml:"input"`
	Output *float64 `yaml:"output"`
	// CachedInput is the price of prompt tokens served from the provider's cache; default the
	// input price.
	CachedInput *float64 `yaml:"cachedInput"`
}

// maxPricePerMillion bounds a price: far above any model's. (The ext_proc server saturates a
// price that would not fit 64 bits rather than wrap it.)
const maxPricePerMillion = 1_000_000

// PerToken is a model's prices as the ext_proc server charges them: in 10^-12 of a currency
// unit per token (a price per million tokens times 10^6), exact for prices of up to six
// decimals.
type PerToken struct {
	Input, Output, CachedInput uint64
}

// PerToken converts valid prices (see validation) to 10^-12 currency units per token.
func (p *Prices) PerToken() PerToken {
	conv := func(f *float64) uint64 {
		if f == nil {
			return 0
		}
		return uint64(math.Round(*f * 1e6))
	}
	out := PerToken{Input: conv(p.Input), Output: conv(p.Output), CachedInput: conv(p.CachedInput)}
	if p.CachedInput == nil {
		out.CachedInput = out.Input
	}
	return out
}

// checkPrice returns what is wrong with a price per million tokens, or "".
func checkPrice(f float64) string {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0) || f < 0:
		return fmt.Sprintf("must be a number from 0 to %d, got %v", maxPricePerMillion, f)
	case f > maxPricePerMillion:
		return fmt.Sprintf("must be at most %d per million tokens, got %v", maxPricePerMillion, f)
	case math.Abs(f*1e6-math.Round(f*1e6)) > 1e-3:
		// The tolerance is far above float64's error at a million per million tokens (about
		// 1e-4 micro-units) and far below the 0.1 a seventh decimal would leave.
		return fmt.Sprintf("at most 6 decimal places, got %v", f)
	}
	return ""
}

// Limit is a quota's limit: a count (tokens or requests), written as a number, or an amount of
// money, written as a string with the currency: "$100", "0.50 EUR", "100 USD".
type Limit struct {
	// Count is the limit written as a number.
	Count uint64
	// Money is the amount written with a currency, as a decimal ("100.50"); empty for a count.
	Money string
	// Currency is the code the amount was written in (a symbol is turned into its code).
	Currency string
}

// IsMoney reports whether the limit is an amount of money.
func (l Limit) IsMoney() bool { return l.Money != "" }

// String shows the limit as written.
func (l Limit) String() string {
	if l.IsMoney() {
		return l.Money + " " + l.Currency
	}
	return strconv.FormatUint(l.Count, 10)
}

// Units is the limit in counter units: the count, or the amount in units of the currency's
// decimals. It fails when the amount has more decimals than the counter keeps.
func (l Limit) Units(c Currency) (uint64, error) {
	if !l.IsMoney() {
		return l.Count, nil
	}
	amount, ok := new(big.Rat).SetString(l.Money)
	if !ok {
		return 0, fmt.Errorf("%q is not an amount", l.Money)
	}
	amount.Mul(amount, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(c.Decimals)), nil)))
	if !amount.IsInt() {
		return 0, fmt.Errorf("%s has more decimal places than currency.decimals (%d) keeps", l, c.Decimals)
	}
	if !amount.Num().IsUint64() {
		return 0, fmt.Errorf("%s is too large", l)
	}
	return amount.Num().Uint64(), nil
}

// UnmarshalYAML reads a count (an integer) or an amount of money (a string with a currency).
func (l *Limit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a number or an amount such as \"$100\", got %s", describe(n))
	}
	if n.ShortTag() == "!!int" {
		count, err := strconv.ParseUint(n.Value, 10, 64)
		if err != nil {
			return fmt.Errorf("must be a whole number greater than 0, got %s", n.Value)
		}
		*l = Limit{Count: count}
		return nil
	}
	if n.ShortTag() == "!!float" {
		return fmt.Errorf("must be a whole number, or an amount with its currency such as \"$%s\", got %s", n.Value, n.Value)
	}
	amount, currency, err := parseMoney(n.Value)
	if err != nil {
		return err
	}
	*l = Limit{Money: amount, Currency: currency}
	return nil
}

// parseMoney splits "$100", "100 USD" or "USD 100" into a plain decimal amount and a code.
func parseMoney(s string) (amount, code string, err error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("must be a number, or an amount with its currency such as \"$100\" or \"100 EUR\", got %q", s)
	for symbol, c := range currencySymbols {
		if rest, ok := strings.CutPrefix(s, symbol); ok {
			s, code = strings.TrimSpace(rest), c
			break
		}
	}
	if code == "" {
		fields := strings.Fields(s)
		if len(fields) != 2 {
			return "", "", bad
		}
		switch {
		case isCurrencyCode(fields[1]):
			s, code = fields[0], fields[1]
		case isCurrencyCode(fields[0]):
			s, code = fields[1], fields[0]
		default:
			return "", "", bad
		}
	}
	s = strings.ReplaceAll(s, ",", "") // "$1,000"
	if !isAmount(s) {
		return "", "", bad
	}
	return s, code, nil
}

// isCurrencyCode reports whether s looks like an ISO 4217 code: three capital letters.
func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// isAmount reports whether s is a plain non-negative decimal: digits, optionally a point and
// more digits.
func isAmount(s string) bool {
	whole, frac, hasPoint := strings.Cut(s, ".")
	if whole == "" || !isDigits(whole) || (hasPoint && (frac == "" || !isDigits(frac))) {
		return false
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// LoadTimezone resolves a quota's timezone (an IANA name; "" is UTC).
func LoadTimezone(name string) (*time.Location, error) {
	if name == "" {
		return time.UTC, nil
	}
	if name == "Local" {
		// The host's zone would make the policy mean different things on different hosts.
		return nil, fmt.Errorf("name the zone (such as Europe/Berlin); Local depends on the host")
	}
	return time.LoadLocation(name)
}

// Describe says what the quota allows in words: "50 llm_total_token per hour per user",
// "100 USD of price per calendar-month in Europe/Berlin per team".
func (q Quota) Describe() string {
	what := q.Limit.String() + " " + q.Cost
	if q.Limit.IsMoney() {
		what = q.Limit.String() + " of " + q.Cost
	}
	per := q.Per
	if IsCalendar(q.Per) && q.Timezone != "" {
		per += " in " + q.Timezone
	}
	whose := "per user"
	switch q.Scope {
	case ScopeTeam:
		whose = "per team"
	case ScopeGlobal:
		whose = "shared by everyone"
	}
	return fmt.Sprintf("%s per %s %s", what, per, whose)
}
