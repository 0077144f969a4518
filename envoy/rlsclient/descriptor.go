package rlsclient

import (
	"errors"
	"fmt"
	"strings"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Entry is one key/value pair of a rate limit descriptor.
type Entry struct{ Key, Value string }

// Descriptor names one counter of the ratelimit service — its entries, in order — and what to
// add to it. Hits 0 only checks: the service reports the counter without changing it.
type Descriptor struct {
	Entries []Entry
	Hits    uint64
	// MustFit (Admit only) admits the request only if its hits fit under the limit: the hits
	// are counted at once, and the status is the counter after them. Otherwise the status is
	// the counter before the request, which may then cross the limit.
	MustFit bool
	// Override, when set, replaces the configured limit for this call (the service's limit
	// override): the counter stays the same, as its key does not depend on the limit.
	Override *Override
}

// Override is a limit given with a descriptor instead of the configured one.
type Override struct {
	PerWindow uint32
	Unit      string // SECOND ... YEAR
}

// String renders the descriptor's entries as "key=value,...", for logs and errors.
func (d Descriptor) String() string {
	var b strings.Builder
	for i, e := range d.Entries {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e.Key + "=" + e.Value)
	}
	return b.String()
}

// proto is the descriptor as the service takes it. The addend is always set per descriptor:
// without one the service would count the call's own hits_addend (1 by default).
func (d Descriptor) proto() *ratelimitv3.RateLimitDescriptor {
	entries := make([]*ratelimitv3.RateLimitDescriptor_Entry, len(d.Entries))
	for i, e := range d.Entries {
		entries[i] = &ratelimitv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value}
	}
	pd := &ratelimitv3.RateLimitDescriptor{Entries: entries, HitsAddend: wrapperspb.UInt64(d.Hits)}
	if d.Override != nil {
		pd.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{
			RequestsPerUnit: d.Override.PerWindow,
			Unit:            typev3.RateLimitUnit(rlsv3.RateLimitResponse_RateLimit_Unit_value[d.Override.Unit]),
		}
	}
	return pd
}

// validate reports a descriptor the service could not count: no entries, or an entry without
// a key or a value.
func (d Descriptor) validate() error {
	if len(d.Entries) == 0 {
		return errors.New("it has no entries")
	}
	for i, e := range d.Entries {
		if e.Key == "" || e.Value == "" {
			return fmt.Errorf("entry %d needs both a key and a value", i)
		}
	}
	return nil
}

// Status is what the service reports for one descriptor's current window.
type Status struct {
	// OverLimit is set once the counter is past its limit (and the limit is not in shadow
	// mode, which the service always answers OK).
	OverLimit bool
	// Limit is the limit the service matched; its zero value means none did: the descriptor
	// is not limited (or the service has not loaded the policy yet), and Remaining means
	// nothing.
	Limit Limit
	// Remaining is what is left of the limit in this window; 0 once over it.
	Remaining uint64
	// ResetIn is the time until the window ends. Windows are fixed and aligned to the Unix
	// epoch, so an hour window resets on the hour.
	ResetIn time.Duration
}

// Limit is one limit as the service applies it.
type Limit struct {
	// Name is the limit's name in the service's config (tollgate: the quota's name).
	Name string
	// PerWindow is the number of units allowed per window (requests_per_unit).
	PerWindow uint64
	// Unit is the window's unit as the service names it: SECOND, MINUTE, HOUR, DAY, WEEK,
	// MONTH or YEAR.
	Unit string
	// Window is the window's length as the service counts it: a month is 30 days, a year 365.
	Window time.Duration
}

// Matched reports whether the service applied a limit at all.
func (l Limit) Matched() bool { return l.PerWindow != 0 || l.Unit != "" }

func statusFromProto(s *rlsv3.RateLimitResponse_DescriptorStatus) Status {
	out := Status{
		OverLimit: s.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT,
		Remaining: uint64(s.GetLimitRemaining()),
		ResetIn:   s.GetDurationUntilReset().AsDuration(),
	}
	if l := s.GetCurrentLimit(); l != nil {
		out.Limit = Limit{
			Name:      l.GetName(),
			PerWindow: uint64(l.GetRequestsPerUnit()),
			Unit:      l.GetUnit().String(),
			Window:    window(l.GetUnit()),
		}
	}
	return out
}

// UnitWindow is the length of the window of a service unit named as the service names it
// (SECOND ... YEAR); 0 for an unknown name.
func UnitWindow(unit string) time.Duration {
	return window(rlsv3.RateLimitResponse_RateLimit_Unit(rlsv3.RateLimitResponse_RateLimit_Unit_value[unit]))
}

// window is the length of a service unit, as the service counts it.
func window(unit rlsv3.RateLimitResponse_RateLimit_Unit) time.Duration {
	const day = 24 * time.Hour
	switch unit {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return time.Second
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return time.Minute
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return time.Hour
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return day
	case rlsv3.RateLimitResponse_RateLimit_WEEK:
		return 7 * day
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 30 * day
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 365 * day
	default:
		return 0
	}
}
