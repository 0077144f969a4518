package extproc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Steering quotas at runtime. The ratelimit service's counters only go up, so an operator's
// changes are made on the counters in Redis, where every gateway on that Redis sees them at
// once: a reset or a set writes the counter of the current window; a grant is extra room on one
// counter for the current window, kept in Redis next to the counter and added to the limit
// (the service's per-descriptor limit override) when a request is checked. Each gateway reads
// the grants in force every GrantSyncInterval.

// CounterStore changes the ratelimit service's counters in Redis (rls.Counters).
type CounterStore interface {
	// Key is the service's key of a counter in the window of unit that contains at.
	Key(domain string, entries []rlsclient.Entry, unit string, at time.Time) (string, error)
	// SetCount sets a counter in the window that contains at and returns what it held.
	SetCount(ctx context.Context, domain string, entries []rlsclient.Entry, unit string, at time.Time, n uint64) (uint64, error)
	// AddGrant adds to the grant on a counter for its window and returns the grant's total.
	AddGrant(ctx context.Context, domain string, entries []rlsclient.Entry, unit string, at time.Time, amount uint64) (uint64, error)
	// Grants reads every grant in force, by counter key.
	Grants(ctx context.Context) (map[string]uint64, error)
}

// GrantSyncInterval is how often a server reads the grants in force.
const GrantSyncInterval = time.Second

// UseCounters gives the server direct access to the counters, for the admin operations and
// grants. Call it before the server serves.
func (s *Server) UseCounters(c CounterStore) { s.counters = c }

// Run does the server's background work until ctx ends: it delivers quota alerts and keeps
// the grants in force up to date.
func (s *Server) Run(ctx context.Context) {
	go s.deliverAlerts(ctx)
	s.syncGrants(ctx)
}

// syncGrants reads the grants in force every GrantSyncInterval until ctx ends, so that grants
// made through any gateway apply here within that interval.
func (s *Server) syncGrants(ctx context.Context) {
	if s.counters == nil {
		return
	}
	tick := time.NewTicker(GrantSyncInterval)
	defer tick.Stop()
	for {
		if grants, err := s.counters.Grants(ctx); err != nil {
			if ctx.Err() == nil {
				s.logger.Debug("reading the grants in force", "error", err)
			}
		} else {
			s.grants.Store(&grants)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// withGrants adds the grants in force to the limits of descriptors (one per quota, for user of
// team), as limit overrides.
func withGrants(grants map[string]uint64, counters CounterStore, domain string, quotas []Quota, descriptors []rlsclient.Descriptor, user, team string) {
	if len(grants) == 0 || counters == nil {
		return
	}
	now := time.Now() // the service's clock names the window
	for i, q := range quotas {
		key, err := counters.Key(domain, descriptors[i].Entries, q.ServiceUnit, now)
		if err != nil {
			continue
		}
		if extra := grants[key]; extra > 0 {
			limit := min(q.limitOf(q.subject(user, team))+extra, math.MaxUint32)
			descriptors[i].Override = &rlsclient.Override{PerWindow: uint32(limit), Unit: q.ServiceUnit}
		}
	}
}

// currentGrants is the grants map last read.
func (s *Server) currentGrants() map[string]uint64 {
	if g := s.grants.Load(); g != nil {
		return *g
	}
	return nil
}

// Report is what user (of team, "" for none) has of every quota that counts their requests.
func (s *Server) Report(ctx context.Context, user, team string) (QuotaReport, error) {
	return report(ctx, s.cfg.Load(), s.rls, s.counters, s.currentGrants(), user, team, s.clock())
}

// Admin actions.
const (
	ActionReset = "reset" // the counter to 0 for the current window
	ActionSet   = "set"   // the counter to an amount for the current window
	ActionGrant = "grant" // extra room for the current window
)

// Change is what an admin action did to one counter, in the quota's unit (QuotaStatus).
type Change struct {
	Action  string `json:"action"`
	Quota   string `json:"quota"`
	Subject string `json:"subject"` // the user, "team <id>" or "everyone"
	Unit    string `json:"unit"`
	// What changed: for reset and set, the counter (used); for grant, the limit of the window.
	What   string `json:"what"`
	Before any    `json:"before"`
	After  any    `json:"after"`
}

// Errors of Apply besides those of Redis.
var (
	// ErrUnknownQuota says no quota of that name counts the caller's requests.
	ErrUnknownQuota = errors.New("no such quota for this caller")
	// ErrInvalidChange says the change asked for cannot be made (an amount out of range, an
	// unknown action).
	ErrInvalidChange = errors.New("invalid change")
)

// Apply makes an admin change to the counter of quota for user (of team) in the current
// window. amount is in the quota's unit: tokens, requests or, for money quotas, units of the
// currency; it is ignored by reset.
func (s *Server) Apply(ctx context.Context, action, quota, user, team string, amount float64) (Change, error) {
	cfg := s.cfg.Load()
	var q Quota
	found := false
	for _, cq := range cfg.callerQuotas(team) {
		if cq.Name == quota {
			q, found = cq, true
		}
	}
	if !found {
		return Change{}, fmt.Errorf("%w: %q (team %q)", ErrUnknownQuota, quota, team)
	}
	units, err := cfg.toUnits(q, amount)
	if err != nil {
		return Change{}, fmt.Errorf("%w: %w", ErrInvalidChange, err)
	}
	if s.counters == nil {
		return Change{}, errors.New("no access to the counters: the process has no Redis (--redis)")
	}
	d := q.Descriptor(user, team, s.clock(), 0)
	now := time.Now() // the service's clock names the window
	unit, _, _, _ := cfg.amounts(q, 0, 0, 0)
	c := Change{Action: action, Quota: q.Name, Subject: SubjectName(q, user, team), Unit: unit, What: "used"}
	show := func(n uint64) any { _, v, _, _ := cfg.amounts(q, n, 0, 0); return v }
	switch action {
	case ActionReset, ActionSet:
		if action == ActionReset {
			units = 0
		}
		before, err := s.counters.SetCount(ctx, cfg.RateLimitDomain, d.Entries, q.ServiceUnit, now, units)
		if err != nil {
			return Change{}, err
		}
		c.Before, c.After = show(before), show(units)
	case ActionGrant:
		if units == 0 {
			return Change{}, fmt.Errorf("%w: a grant needs an amount greater than 0", ErrInvalidChange)
		}
		total, err := s.counters.AddGrant(ctx, cfg.RateLimitDomain, d.Entries, q.ServiceUnit, now, units)
		if err != nil {
			return Change{}, err
		}
		base := q.limitOf(q.subject(user, team))
		c.What = "limit"
		c.Before, c.After = show(base+total-units), show(base+total)
		s.noteGrant(cfg.RateLimitDomain, q, d.Entries, now, total)
	default:
		return Change{}, fmt.Errorf("%w: unknown action %q (reset, set or grant)", ErrInvalidChange, action)
	}
	return c, nil
}

// noteGrant applies a grant made here at once, without waiting for the next sync.
func (s *Server) noteGrant(domain string, q Quota, entries []rlsclient.Entry, at time.Time, total uint64) {
	key, err := s.counters.Key(domain, entries, q.ServiceUnit, at)
	if err != nil {
		return
	}
	grants := map[string]uint64{}
	for k, v := range s.currentGrants() {
		grants[k] = v
	}
	grants[key] = total
	s.grants.Store(&grants)
}

// toUnits converts an amount in the quota's unit to counter units.
func (c *Config) toUnits(q Quota, amount float64) (uint64, error) {
	if amount < 0 || math.IsNaN(amount) || math.IsInf(amount, 0) {
		return 0, fmt.Errorf("the amount must be a number of at least 0, got %v", amount)
	}
	if q.Unit == UnitMoney {
		amount *= math.Pow10(c.Money.Decimals)
	}
	if amount > math.MaxUint32 {
		return 0, fmt.Errorf("the amount is more than a counter holds")
	}
	return uint64(math.Round(amount)), nil
}

// SubjectName says whose counter quota q is for a request by user of team, for people: the
// user, "team <id>" or "everyone".
func SubjectName(q Quota, user, team string) string {
	switch q.Scope {
	case ScopeTeam:
		return "team " + team
	case ScopeGlobal:
		return "everyone"
	default:
		return user
	}
}
