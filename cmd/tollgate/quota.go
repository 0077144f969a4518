package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
)

// quotaCommand answers "how much does this user have left?" from the ratelimit service's own
// counters: one check-only call (hits 0) per quota window that applies to the user, their
// team's pools and the global ones.
func quotaCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case extproc.ActionReset, extproc.ActionSet, extproc.ActionGrant:
			return quotaChangeCommand(args[0], args[1:], stdout, stderr)
		}
	}
	fs := newFlags("quota", stderr)
	file := fs.String("f", "policy.yaml", "policy file (says which quotas apply)")
	user := fs.String("user", "", "user id, as sent in the identity header (required)")
	team := fs.String("team", "", "the user's team, for team quotas (default: the team of the user's API keys in the policy)")
	model := fs.String("model", "", "only this model's quotas (and those of every model)")
	addr := fs.String("ratelimit", "", "the ratelimit service's gRPC address (default: the policy's rateLimit address)")
	redisURL := fs.String("redis", os.Getenv("REDIS_URL"), "the ratelimit service's Redis (env REDIS_URL): read the counters there, so USED is exact also past the limit")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *user == "" {
		_, _ = fmt.Fprintln(stderr, "tollgate quota: --user is required")
		return 2
	}
	p, _, err := policies.Load(*file, os.LookupEnv)
	if err != nil {
		printErrors(stderr, err)
		return 1
	}
	if *team == "" {
		*team = keyTeam(p, *user)
	}
	now := time.Now()
	quotas := translate.UserQuotas(p, *user, *team, *model, now)
	if len(quotas) == 0 {
		if *model != "" {
			_, _ = fmt.Fprintf(stderr, "tollgate quota: no quota in %s applies to model %q\n", *file, *model)
		} else {
			_, _ = fmt.Fprintf(stderr, "tollgate quota: %s has no quotas\n", *file)
		}
		return 1
	}
	target := *addr
	if target == "" {
		target = net.JoinHostPort(p.RateLimit.Address, strconv.Itoa(p.RateLimit.Port))
	}
	ds := make([]rlsclient.Descriptor, len(quotas))
	for i, q := range quotas {
		ds[i] = rlsclient.Descriptor{Entries: q.Entries} // hits 0: read only
	}
	client, err := rlsclient.New(rlsclient.Options{})
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota: %v\n", err)
		return 1
	}
	defer func() { _ = client.Close(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	statuses, err := client.Check(ctx, target, p.RateLimit.Domain, ds, 5*time.Second)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota: asking the ratelimit service at %s: %v\n", target, err)
		return 1
	}
	exact := exactCounts(ctx, *redisURL, p.RateLimit.Domain, ds, statuses, stderr)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "USER\tMODEL\tQUOTA\tCOST\tLIMIT\tUSED\tREMAINING\tRESETS\n")
	for i, st := range statuses {
		uq := quotas[i]
		q := uq.Quota
		amount := func(n uint64) string { return strconv.FormatUint(n, 10) }
		if q.Limit.IsMoney() {
			amount = p.Currency.Format
		}
		model := q.Model
		if model == "" {
			model = "*"
		}
		if !st.Limit.Matched() {
			// The service has no limit for this descriptor yet: it has not received the policy.
			_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s/%s\t?\t?\tnot loaded by the ratelimit service yet\n",
				uq.Subject, model, q.Name, q.Cost, q.Limit, q.Per)
			continue
		}
		used := amount(st.Limit.PerWindow - st.Remaining)
		resetIn := st.ResetIn
		if uq.Calendar != nil {
			_, _, end := uq.Calendar.Period(now)
			resetIn = end.Sub(now)
		}
		reset := now.Add(resetIn).Truncate(time.Second)
		state := ""
		// The service reports 0 remaining, not by how much the last charge overshot: without
		// the counter itself, "used" is only known to be at least the limit.
		spent := ">=" + amount(st.Limit.PerWindow)
		if n, ok := exact[i]; ok {
			used, spent = amount(n), amount(n)
		}
		switch {
		case !q.Shadow && (st.OverLimit || st.Remaining == 0):
			used, state = spent, "  (over limit: requests get 429)"
		case q.Shadow && st.Remaining == 0:
			// In shadow mode the service answers OK even when the window is spent.
			used, state = spent, "  (shadow: over limit, not enforced)"
		case q.Shadow:
			state = "  (shadow: not enforced)"
		}
		resets := reset.Format(time.RFC3339)
		if uq.Calendar != nil {
			resets = reset.In(uq.Calendar.Location).Format(time.RFC3339)
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s (in %s)%s\n",
			uq.Subject, model, q.Name, q.Cost, amount(st.Limit.PerWindow), q.Per, used, amount(st.Remaining),
			resets, resetIn.Round(time.Second), state)
	}
	_ = tw.Flush()
	return 0
}

// exactCounts reads, when redisURL is set, each limited counter as it is in Redis, by its index
// in ds; a failure is reported on stderr and leaves the service's numbers alone.
func exactCounts(ctx context.Context, redisURL, domain string, ds []rlsclient.Descriptor, statuses []rlsclient.Status, stderr io.Writer) map[int]uint64 {
	if redisURL == "" {
		return nil
	}
	counters, err := rls.NewCounters(redisURL)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota: --redis: %v\n", err)
		return nil
	}
	defer func() { _ = counters.Close() }()
	read, index := rlsclient.LimitedCounters(ds, statuses)
	counts, err := counters.Counts(ctx, domain, read, time.Now())
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota: reading the counters in Redis: %v\n", err)
		return nil
	}
	out := make(map[int]uint64, len(index))
	for j, i := range index {
		out[i] = counts[j]
	}
	return out
}

// keyTeam is the team of user's API keys in the policy, when they name exactly one.
func keyTeam(p *policies.Policy, user string) string {
	team := ""
	for _, k := range p.Identity.ResolvedAPIKeys {
		if k.User != user || k.Team == "" {
			continue
		}
		if team != "" && team != k.Team {
			return ""
		}
		team = k.Team
	}
	return team
}

// quotaChangeCommand resets, sets or grants a user's quota for the current window through the
// quota admin API of a running tollgate.
func quotaChangeCommand(action string, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("quota "+action, stderr)
	file := fs.String("f", "policy.yaml", "policy file (the team of the user's API keys, when --team is not given)")
	user := fs.String("user", "", "user id (required)")
	team := fs.String("team", "", "the user's team, for team quotas")
	quota := fs.String("quota", "", "quota name, as tollgate quota --user lists it (required)")
	amount := fs.Float64("amount", 0, "set: the count; grant: extra for this window (tokens, requests, or money in the currency)")
	admin := fs.String("admin", "http://"+defaultQuotaAdminAddr, "URL of the quota admin API")
	tokenFile := fs.String("token-file", "", "file holding the admin token (default: the "+adminTokenEnv+" environment variable)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *user == "" || *quota == "" {
		_, _ = fmt.Fprintf(stderr, "tollgate quota %s: --user and --quota are required\n", action)
		return 2
	}
	token, err := quotaAdminOptions{tokenFile: *tokenFile}.token()
	if err == nil && token == "" {
		err = fmt.Errorf("set %s or --token-file to the admin token", adminTokenEnv)
	}
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota %s: %v\n", action, err)
		return 2
	}
	if *team == "" {
		if p, _, err := policies.Load(*file, os.LookupEnv); err == nil {
			*team = keyTeam(p, *user)
		}
	}
	body, _ := json.Marshal(adminChange{User: *user, Team: *team, Quota: *quota, Amount: *amount})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(*admin, "/")+"/admin/v1/quotas/"+action, bytes.NewReader(body))
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota %s: %v\n", action, err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate quota %s: %v\n", action, err)
		return 1
	}
	defer func() { _ = resp.Body.Close() }()
	var answer struct {
		extproc.Change
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK {
		msg := answer.Error.Message
		if msg == "" {
			msg = fmt.Sprintf("%s (%v)", resp.Status, err)
		}
		_, _ = fmt.Fprintf(stderr, "tollgate quota %s: %s\n", action, msg)
		return 1
	}
	c := answer.Change
	_, _ = fmt.Fprintf(stdout, "%s: %s of %s's %s: %v -> %v %s (this window)\n", c.Action, c.What, c.Subject, c.Quota, c.Before, c.After, c.Unit)
	return 0
}
