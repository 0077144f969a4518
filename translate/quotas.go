package translate

import (
	"fmt"
	"sort"
	"strings"
	"time"

	rlsconfv3 "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
)

// Descriptor keys. A quota's counter in the ratelimit service is keyed by
// domain + [model] + quota name + [calendar period] + [user or team] (+ the window), all taken
// from names, so reordering the policy file never moves a caller onto another counter. A quota
// of one model starts with the model; one over every model starts with the quota.
const (
	DescriptorModel  = "model"
	DescriptorQuota  = "quota"
	DescriptorUser   = "user"
	DescriptorTeam   = "team"
	DescriptorPeriod = "period"
)

var units = map[string]rlsconfv3.RateLimitUnit{
	"second": rlsconfv3.RateLimitUnit_SECOND,
	"minute": rlsconfv3.RateLimitUnit_MINUTE,
	"hour":   rlsconfv3.RateLimitUnit_HOUR,
	"day":    rlsconfv3.RateLimitUnit_DAY,
	"week":   rlsconfv3.RateLimitUnit_WEEK,
	"month":  rlsconfv3.RateLimitUnit_MONTH,
	"year":   rlsconfv3.RateLimitUnit_YEAR,
}

// calendarUnits maps the policy's calendar periods to the ext_proc server's.
var calendarUnits = map[string]extproc.CalendarUnit{
	policies.CalendarDay:   extproc.CalendarDay,
	policies.CalendarWeek:  extproc.CalendarWeek,
	policies.CalendarMonth: extproc.CalendarMonth,
}

// serviceUnit is the ratelimit service's unit for quota q. A calendar quota's period is in its
// descriptor, so the service's window only has to outlast it: a year, the longest it has (and
// the ext_proc server carries a counter into the next year where one starts mid-period).
func serviceUnit(q policies.Quota) (rlsconfv3.RateLimitUnit, error) {
	if policies.IsCalendar(q.Per) {
		return rlsconfv3.RateLimitUnit(rlsconfv3.RateLimitUnit_value[extproc.CalendarServiceUnit]), nil
	}
	unit, ok := units[strings.ToLower(q.Per)]
	if !ok {
		return 0, fmt.Errorf("quota %q: unknown unit %q", q.Name, q.Per)
	}
	return unit, nil
}

// rateLimitConfig is the ratelimit service's view of every quota: one descriptor tree in the
// policy's domain. A quota of one model hangs below its model's node, a quota of every model at
// the top; below the quota come the calendar period (any value) and the user or team (any
// value: one counter per distinct caller, with nodes of their own for overrides). A global
// quota's limit sits on its last node.
func rateLimitConfig(p *input) (*rlsconfv3.RateLimitConfig, error) {
	cfg := &rlsconfv3.RateLimitConfig{Name: p.RateLimit.Domain, Domain: p.RateLimit.Domain}
	modelNodes := map[string]*rlsconfv3.RateLimitDescriptor{}
	var models []string
	var pools []*rlsconfv3.RateLimitDescriptor
	for _, q := range p.Quotas {
		quotaNode, err := quotaTree(p, q)
		if err != nil {
			return nil, err
		}
		if q.Model == "" {
			pools = append(pools, quotaNode)
			continue
		}
		node, ok := modelNodes[q.Model]
		if !ok {
			node = &rlsconfv3.RateLimitDescriptor{Key: DescriptorModel, Value: q.Model}
			modelNodes[q.Model] = node
			models = append(models, q.Model)
		}
		node.Descriptors = append(node.Descriptors, quotaNode)
	}
	sort.Strings(models)
	for _, m := range models {
		cfg.Descriptors = append(cfg.Descriptors, modelNodes[m])
	}
	cfg.Descriptors = append(cfg.Descriptors, pools...)
	return cfg, nil
}

// quotaTree is quota q's node and everything below it.
func quotaTree(p *input, q policies.Quota) (*rlsconfv3.RateLimitDescriptor, error) {
	unit, err := serviceUnit(q)
	if err != nil {
		return nil, err
	}
	limit := func(l policies.Limit) *rlsconfv3.RateLimitPolicy {
		n, _ := l.Units(p.Currency) // validation checked it converts and fits uint32
		return &rlsconfv3.RateLimitPolicy{Unit: unit, RequestsPerUnit: uint32(n), Name: q.Name}
	}
	quotaNode := &rlsconfv3.RateLimitDescriptor{Key: DescriptorQuota, Value: q.Name}
	parent := quotaNode
	if policies.IsCalendar(q.Per) {
		period := &rlsconfv3.RateLimitDescriptor{Key: DescriptorPeriod}
		quotaNode.Descriptors = []*rlsconfv3.RateLimitDescriptor{period}
		parent = period
	}
	if q.Scope == policies.ScopeGlobal {
		parent.RateLimit, parent.ShadowMode = limit(q.Limit), q.Shadow
		return quotaNode, nil
	}
	key := subjectKey(q)
	overrides := subjectLimits(p, q)
	subjects := make([]string, 0, len(overrides))
	for s := range overrides {
		subjects = append(subjects, s)
	}
	sort.Strings(subjects)
	// A caller with an override has a descriptor of their own; the service matches a key with
	// a value before the key alone. Either way the counter is keyed by the request's entries,
	// so adding an override never resets what a caller has spent.
	for _, s := range append(subjects, "") {
		l := q.Limit
		if s != "" {
			l = overrides[s]
		}
		parent.Descriptors = append(parent.Descriptors, &rlsconfv3.RateLimitDescriptor{
			Key: key, Value: s, RateLimit: limit(l), ShadowMode: q.Shadow,
		})
	}
	return quotaNode, nil
}

// subjectKey is the descriptor key whose value says whose counter it is: the user's or the
// team's; a global quota has none.
func subjectKey(q policies.Quota) string {
	switch q.Scope {
	case policies.ScopeTeam:
		return DescriptorTeam
	case policies.ScopeGlobal:
		return ""
	default:
		return DescriptorUser
	}
}

// quotaEntries are the descriptor entries of quota q before the period's and the caller's.
func quotaEntries(q policies.Quota) []rlsclient.Entry {
	if q.Model == "" {
		return []rlsclient.Entry{{Key: DescriptorQuota, Value: q.Name}}
	}
	return []rlsclient.Entry{{Key: DescriptorModel, Value: q.Model}, {Key: DescriptorQuota, Value: q.Name}}
}

// extProcQuota is quota q as the ext_proc server checks and charges it.
func extProcQuota(p *input, q policies.Quota) (extproc.Quota, error) {
	unit, err := serviceUnit(q)
	if err != nil {
		return extproc.Quota{}, err
	}
	limit, _ := q.Limit.Units(p.Currency) // validation checked it converts
	eq := extproc.Quota{
		Limit:               limit,
		ServiceUnit:         unit.String(),
		Name:                q.Name,
		Model:               q.Model,
		Cost:                q.Cost,
		Entries:             quotaEntries(q),
		SubjectKey:          subjectKey(q),
		MaxTokensPerRequest: q.MaxTokensPerRequest,
		Shadow:              q.Shadow,
	}
	switch q.Cost {
	case policies.CostRequests:
		eq.Unit = extproc.UnitRequests
	case policies.CostPrice:
		eq.Unit = extproc.UnitMoney
	}
	switch q.Scope {
	case policies.ScopeTeam:
		eq.Scope = extproc.ScopeTeam
	case policies.ScopeGlobal:
		eq.Scope = extproc.ScopeGlobal
	}
	if q.Alerts != nil {
		eq.Alerts = &extproc.Alerts{At: q.Alerts.At, Webhook: q.Alerts.Webhook}
	}
	for subject, l := range subjectLimits(p, q) {
		if eq.Limits == nil {
			eq.Limits = map[string]uint64{}
		}
		eq.Limits[subject], _ = l.Units(p.Currency)
	}
	if policies.IsCalendar(q.Per) {
		loc, err := policies.LoadTimezone(q.Timezone)
		if err != nil {
			return extproc.Quota{}, fmt.Errorf("quota %q: %w", q.Name, err)
		}
		eq.Calendar = &extproc.Calendar{Unit: calendarUnits[q.Per], Location: loc}
		eq.PeriodKey = DescriptorPeriod
	}
	return eq, nil
}

// UserQuota is one quota as it applies to one caller: the descriptor the ext_proc server
// checks and charges for that caller's requests now, which is the counter the ratelimit
// service keeps.
type UserQuota struct {
	Quota policies.Quota
	// Subject says whose counter it is: the user, "team <id>", or "everyone".
	Subject string
	Entries []rlsclient.Entry
	// Calendar is the quota's calendar period; nil for a fixed window.
	Calendar *extproc.Calendar
}

// UserQuotas lists the quotas that apply to user (of team, "" for none), for one model or
// (model "") all of them, sorted by quota name, each with its counter's descriptor entries at
// time now: the counters `tollgate quota` reads, the same the ext_proc server checks and
// charges. A team quota applies only with a team.
func UserQuotas(in *policies.Policy, user, team, model string, now time.Time) []UserQuota {
	p := newInput(in)
	var out []UserQuota
	for _, q := range p.Quotas {
		if model != "" && q.Model != "" && q.Model != model {
			continue
		}
		if q.Scope == policies.ScopeTeam && team == "" {
			continue
		}
		eq, err := extProcQuota(p, q)
		if err != nil {
			continue // validation refused the policy already
		}
		d := eq.Descriptor(user, team, now, 0)
		out = append(out, UserQuota{Quota: q, Subject: extproc.SubjectName(eq, user, team), Entries: d.Entries, Calendar: eq.Calendar})
	}
	return out
}

// subjectLimits returns the callers whose limit on q differs from the default: for a user
// quota, tier members get their tier's override and a user's own override wins over it; for
// a team quota, teams with an override.
func subjectLimits(p *input, q policies.Quota) map[string]policies.Limit {
	limits := map[string]policies.Limit{}
	for _, o := range q.Overrides {
		if o.Tier != "" {
			for _, u := range p.usersOf[o.Tier] {
				limits[u] = o.Limit
			}
		}
	}
	for _, o := range q.Overrides {
		switch {
		case o.User != "":
			limits[o.User] = o.Limit
		case o.Team != "":
			limits[o.Team] = o.Limit
		}
	}
	return limits
}
