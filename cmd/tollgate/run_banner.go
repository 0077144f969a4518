// `tollgate run`: the banner that says, once Envoy is live, what runs where.

package main

import (
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/policies"
)

// printBanner tells the user, once Envoy is live, what runs where.
func printBanner(w io.Writer, plan *runPlan, g *gateway) {
	p := plan.policy
	listener := fmt.Sprintf("http://%s", net.JoinHostPort(p.Listener.Address, strconv.Itoa(p.Listener.Port)))
	metrics := "http://" + launch.DialAddr(plan.opts.metricsAddr)
	models := make([]string, 0, len(p.Models))
	for _, m := range p.Models {
		models = append(models, m.Name)
	}
	sort.Strings(models)

	_, _ = fmt.Fprintf(w, "\ntollgate is running %s; Envoy (pid %d) is live.\n\n", plan.opts.policyFile, g.envoy.Pid())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(label, value string) { _, _ = fmt.Fprintf(tw, "  %s\t%s\n", label, value) }
	row("listener", fmt.Sprintf("%s/v1/chat/completions  (%s)", listener, identityHint(p.Identity)))
	row("models", strings.Join(models, ", "))
	quotas := quotaLines(p)
	if len(quotas) == 0 {
		row("quotas", "none: requests are routed, not limited")
	}
	for i, q := range quotas {
		label := ""
		if i == 0 {
			label = "quotas"
		}
		row(label, q)
	}
	heap := plan.opts.overload.MaxHeapBytes
	if heap == 0 {
		heap = bootstrap.DefaultMaxHeapBytes()
	}
	row("limits", fmt.Sprintf("%d requests in flight (listener.maxConcurrentRequests), Envoy heap %s (--envoy-max-heap); beyond: JSON 503 + Retry-After",
		p.Listener.MaxConcurrentRequests, formatBytes(heap)))
	row("metrics", metrics+"/metrics")
	row("status", metrics+"/status")
	row("envoy admin", "http://"+launch.DialAddr(plan.opts.adminAddr))
	row("quota admin", quotaAdminHint(plan.opts.quotaAdmin))
	row("counters", g.counters.describe())
	row("logs", g.envoy.AccessLogPath()+"  (access log: one JSON line per request)")
	row("", g.envoy.LogPath()+"  (Envoy's own log)")
	_ = tw.Flush()
	if len(p.Models) > 0 {
		credential := p.Identity.Header + ": alice"
		switch p.Identity.Mode {
		case policies.IdentityAPIKeys:
			credential = "Authorization: Bearer <your API key>"
		case policies.IdentityJWT:
			credential = "Authorization: Bearer <a token from " + p.Identity.JWT.Issuer + ">"
		}
		_, _ = fmt.Fprintf(w, "\n  try: curl -s %s/v1/chat/completions -H '%s' -H 'content-type: application/json' \\\n"+
			"         -d '{\"model\":%q,\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n",
			listener, credential, p.Models[0].Name)
	}
	_, _ = fmt.Fprint(w, "\nCtrl-C to stop.\n")
}

// quotaAdminHint says where the quota admin API and the operator's page are, or how to turn
// them on.
func quotaAdminHint(o quotaAdminOptions) string {
	token, err := o.token()
	switch {
	case o.addr == "":
		return "off (--quota-admin \"\")"
	case err != nil || token == "":
		return "off: set " + adminTokenEnv + " to serve it on " + o.addr
	default:
		return "http://" + launch.DialAddr(o.addr) + "/admin/  (the page; the API under /admin/v1/)"
	}
}

// identityHint says how a client identifies itself.
func identityHint(id policies.Identity) string {
	switch id.Mode {
	case policies.IdentityAPIKeys:
		return "users by API key"
	case policies.IdentityJWT:
		return "users by JWT claim " + id.JWT.UserClaim
	default:
		return "user header: " + id.Header
	}
}

// quotaLines summarise each quota as model: limit cost per window, with its overrides.
func quotaLines(p *policies.Policy) []string {
	lines := make([]string, 0, len(p.Quotas))
	for _, q := range p.Quotas {
		l := modelName(q.Model) + ": " + q.Describe()
		if len(q.Overrides) > 0 {
			l += fmt.Sprintf(" (%d override(s))", len(q.Overrides))
		}
		if q.Shadow {
			l += " (shadow: counted, not enforced)"
		}
		lines = append(lines, l)
	}
	sort.Strings(lines)
	return lines
}
