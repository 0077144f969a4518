package extproc

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Recent activity, for the operator's page: who has been sending requests, and the last
// requests that were refused. Both are small and bounded, kept in memory per gateway.

// Bounds of what is kept.
const (
	maxRecentCallers = 50
	maxRefusals      = 20
)

// Caller is a user, with their team when they have one.
type Caller struct {
	User string `json:"user"`
	Team string `json:"team,omitempty"`
}

// Refusal is a request the gateway answered with an error of its own.
type Refusal struct {
	Time    time.Time `json:"time"`
	User    string    `json:"user"`
	Team    string    `json:"team,omitempty"`
	Model   string    `json:"model,omitempty"`
	Status  int       `json:"status"`
	Quota   string    `json:"quota,omitempty"` // the quota that refused it (429)
	Message string    `json:"message"`
}

// TrackActivity makes the server record recent callers and refusals (Activity, TopUsers). Call
// it before the server serves.
func (s *Server) TrackActivity() { s.trackActivity = true }

// activity records recent callers and refusals.
type activity struct {
	mu       sync.Mutex
	callers  []Caller // most recent last, each once
	refusals []Refusal
}

func (a *activity) sawCaller(c Caller) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i := slices.Index(a.callers, c); i >= 0 {
		a.callers = slices.Delete(a.callers, i, i+1)
	} else if len(a.callers) == maxRecentCallers {
		a.callers = a.callers[1:]
	}
	a.callers = append(a.callers, c)
}

func (a *activity) refused(r Refusal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.refusals) == maxRefusals {
		a.refusals = a.refusals[1:]
	}
	a.refusals = append(a.refusals, r)
}

// Activity is a copy of what the server recorded: recent callers and refusals, most recent
// first.
func (s *Server) Activity() (callers []Caller, refusals []Refusal) {
	s.activity.mu.Lock()
	defer s.activity.mu.Unlock()
	callers = slices.Clone(s.activity.callers)
	refusals = slices.Clone(s.activity.refusals)
	slices.Reverse(callers)
	slices.Reverse(refusals)
	return callers, refusals
}

// UserUse is one counter's use of one quota, for a ranking: a user's, a team's (User is
// empty) or everyone's (both are).
type UserUse struct {
	Caller
	Quota QuotaStatus `json:"quota"`
}

// TopUsers ranks, on each quota, the counters of the recent callers (their own, their team's,
// the global one, each once) by the share of their limit used, at most n per quota, from the
// callers' quota reports.
func (s *Server) TopUsers(ctx context.Context, n int) (map[string][]UserUse, error) {
	callers, _ := s.Activity()
	out := map[string][]UserUse{}
	seen := map[[2]string]bool{} // quota, subject
	for _, c := range callers {
		rep, err := s.Report(ctx, c.User, c.Team)
		if err != nil {
			return nil, err
		}
		for _, q := range rep.Quotas {
			subject := c
			switch q.Scope {
			case ScopeTeam.String():
				subject = Caller{Team: c.Team}
			case ScopeGlobal.String():
				subject = Caller{}
			}
			key := [2]string{q.Name, subject.User + "\x00" + subject.Team}
			if seen[key] {
				continue
			}
			seen[key] = true
			out[q.Name] = append(out[q.Name], UserUse{Caller: subject, Quota: q})
		}
	}
	for name, uses := range out {
		slices.SortStableFunc(uses, func(a, b UserUse) int {
			sa, sb := usedShare(a.Quota), usedShare(b.Quota)
			switch {
			case sa > sb:
				return -1
			case sa < sb:
				return 1
			}
			return 0
		})
		out[name] = uses[:min(n, len(uses))]
	}
	return out, nil
}

// usedShare is the share of its limit a quota status has used.
func usedShare(q QuotaStatus) float64 {
	used, limit := number(q.Used), number(q.Limit)
	if limit == 0 {
		return 0
	}
	return used / limit
}

// number reads an amount of a report (a count or an amount of money).
func number(v any) float64 {
	switch n := v.(type) {
	case uint64:
		return float64(n)
	case float64:
		return n
	}
	return 0
}

// Quotas are the configured quotas, each once, in name order.
func (s *Server) Quotas() []Quota {
	// A team is named so that team quotas are included too.
	return s.cfg.Load().callerQuotas("any team")
}
