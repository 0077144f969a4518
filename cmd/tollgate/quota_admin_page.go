package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/xds"
)

// The operator's page: a read-only view of the quota admin API, served on its listener with
// the same token. A browser signs in once with the token (a form), and gets a session cookie
// derived from it; the page is rendered on the server, and a few lines of JavaScript reload
// it. No build step, nothing fetched from elsewhere.

// pageStatus is what the page shows of the process: its policy and, in serve, the Envoys.
type pageStatus struct {
	Version string
	Reload  reloadStatus
	XDS     *xds.Status // nil in tollgate extproc
}

// sessionCookie names the page's session cookie.
const sessionCookie = "tollgate_admin"

// session is the cookie value of a signed-in browser: derived from the token, so that it
// changes when the token does and never reveals it.
func (a *quotaAdmin) session() string {
	mac := hmac.New(sha256.New, a.token[:])
	mac.Write([]byte("tollgate admin page session"))
	return hex.EncodeToString(mac.Sum(nil))
}

// signedIn reports whether a browser request carries the session cookie (or the bearer token).
func (a *quotaAdmin) signedIn(r *http.Request) bool {
	if c, err := r.Cookie(sessionCookie); err == nil {
		return subtle.ConstantTimeCompare([]byte(c.Value), []byte(a.session())) == 1
	}
	_, ok := a.isToken(bearerToken(r))
	return ok
}

func (a *quotaAdmin) login(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.isToken(strings.TrimSpace(r.PostFormValue("token"))); !ok {
		a.renderLogin(w, http.StatusForbidden, "That is not the admin token.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: a.session(), Path: "/admin", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

func (a *quotaAdmin) renderLogin(w http.ResponseWriter, status int, problem string) {
	pageHeaders(w)
	w.WriteHeader(status)
	_ = pageTemplates.ExecuteTemplate(w, "login", problem)
}

// pageData is what the page template renders.
type pageData struct {
	Now      time.Time
	Status   pageStatus
	Quotas   []extproc.Quota
	Top      map[string][]extproc.UserUse
	Refusals []extproc.Refusal
	Search   *extproc.QuotaReport
	Query    extproc.Caller
	Problem  string
}

func (a *quotaAdmin) page(w http.ResponseWriter, r *http.Request) {
	if !a.signedIn(r) {
		a.renderLogin(w, http.StatusUnauthorized, "")
		return
	}
	d := pageData{Now: time.Now().UTC(), Quotas: a.server.Quotas()}
	if a.status != nil {
		d.Status = a.status()
	}
	_, d.Refusals = a.server.Activity()
	top, err := a.server.TopUsers(r.Context(), 10)
	if err != nil {
		d.Problem = "The quotas could not be read: " + err.Error()
	}
	d.Top = top
	if user := strings.TrimSpace(r.URL.Query().Get("user")); user != "" {
		d.Query = extproc.Caller{User: user, Team: strings.TrimSpace(r.URL.Query().Get("team"))}
		rep, err := a.server.Report(r.Context(), d.Query.User, d.Query.Team)
		if err != nil {
			d.Problem = "The quotas of " + user + " could not be read: " + err.Error()
		} else {
			d.Search = &rep
		}
	}
	pageHeaders(w)
	_ = pageTemplates.ExecuteTemplate(w, "page", d)
}

// pageHeaders keep the page to itself: nothing loaded from elsewhere, no framing, no caching.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; form-action 'self'")
}

var pageTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"since": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"short": func(typeURL string) string { return typeURL[strings.LastIndex(typeURL, ".")+1:] },
	"model": modelName,
}).Parse(pageHTML))

const pageHTML = `
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tollgate quotas</title>
<link rel="icon" href="data:,">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f4f4f4}.bad{color:#b00}.ok{color:#070}.dim{color:#777}
</style></head><body>{{end}}

{{define "login"}}{{template "head"}}
<h1>tollgate quotas</h1>
<form method="post" action="/admin/login" id="login">
<p>Sign in with the admin token.</p>
{{if .}}<p class="bad">{{.}}</p>{{end}}
<input type="password" name="token" id="token" autocomplete="off" autofocus>
<button type="submit">Sign in</button>
</form></body></html>{{end}}

{{define "page"}}{{template "head"}}
<h1>tollgate quotas <span class="dim">{{.Status.Version}} · {{.Now.Format "2006-01-02 15:04:05 UTC"}}</span></h1>
<label><input type="checkbox" id="refresh"> refresh every 5 s</label>
{{if .Problem}}<p class="bad" id="problem">{{.Problem}}</p>{{end}}

<h2>Policy</h2>
<table id="policy">
<tr><th>file</th><td>{{.Status.Reload.PolicyFile}}</td></tr>
<tr><th>version</th><td>{{.Status.Reload.EnvoyVersion}}</td></tr>
<tr><th>last reload</th><td class="{{if eq .Status.Reload.LastResult "ok"}}ok{{else}}bad{{end}}">{{.Status.Reload.LastResult}}, {{since .Status.Reload.LastAttempt}}</td></tr>
<tr><th>last good</th><td>{{since .Status.Reload.LastGoodAt}}</td></tr>
</table>
{{if .Status.Reload.LastErrors}}<ul class="bad" id="reload-errors">{{range .Status.Reload.LastErrors}}<li>{{.}}</li>{{end}}</ul>
<p class="dim">The last good policy is still served.</p>{{end}}

{{if .Status.XDS}}<h2>Envoys and ratelimit services</h2>
<table id="envoys"><tr><th>node</th><th>kind</th><th>connected</th><th>accepted</th><th>last rejection</th></tr>
{{range .Status.XDS.Clients}}<tr><td>{{.NodeID}}</td><td>{{.Group}}</td><td>{{since .ConnectedAt}}</td>
<td>{{range $t, $v := .Acked}}{{short $t}} {{$v}}<br>{{end}}</td>
<td>{{with .LastNack}}<span class="bad">{{short .TypeURL}} {{.Version}}: {{.Message}}</span>{{else}}<span class="ok">none</span>{{end}}</td></tr>
{{else}}<tr><td colspan="5" class="bad">none connected</td></tr>{{end}}</table>{{end}}

<h2>Quotas</h2>
{{range .Quotas}}{{$name := .Name}}
<h3>{{.Name}} <span class="dim">{{model .Model}}, per {{.Scope}}{{if .Shadow}}, shadow{{end}}</span></h3>
<table class="top" data-quota="{{.Name}}"><tr><th>user</th><th>team</th><th>used</th><th>limit</th><th>remaining</th><th>resets</th></tr>
{{range index $.Top $name}}<tr><td>{{if .User}}{{.User}}{{else if not .Team}}everyone{{end}}</td><td>{{.Team}}</td><td>{{.Quota.Used}}</td><td>{{.Quota.Limit}} {{.Quota.Unit}} per {{.Quota.Window}}</td><td>{{.Quota.Remaining}}</td><td>{{.Quota.ResetsAt.Format "2006-01-02 15:04 UTC"}}</td></tr>
{{else}}<tr><td colspan="6" class="dim">no recent callers</td></tr>{{end}}</table>
{{else}}<p class="dim">The policy has no quotas.</p>{{end}}

<h2>A caller's quotas</h2>
<form method="get" action="/admin/"><input name="user" placeholder="user" value="{{.Query.User}}"> <input name="team" placeholder="team (optional)" value="{{.Query.Team}}"> <button type="submit">Show</button></form>
{{with .Search}}<table id="search"><tr><th>quota</th><th>model</th><th>scope</th><th>used</th><th>limit</th><th>remaining</th><th>resets</th></tr>
{{range .Quotas}}<tr><td>{{.Name}}</td><td>{{model .Model}}</td><td>{{.Scope}}</td><td>{{.Used}}</td><td>{{.Limit}} {{.Unit}} per {{.Window}}</td><td>{{.Remaining}}</td><td>{{.ResetsAt.Format "2006-01-02 15:04 UTC"}}</td></tr>{{end}}</table>{{end}}

<h2>Last refusals</h2>
<table id="refusals"><tr><th>time</th><th>user</th><th>team</th><th>model</th><th>status</th><th>quota</th><th>message</th></tr>
{{range .Refusals}}<tr><td>{{.Time.Format "15:04:05"}}</td><td>{{.User}}</td><td>{{.Team}}</td><td>{{.Model}}</td><td>{{.Status}}</td><td>{{.Quota}}</td><td>{{.Message}}</td></tr>
{{else}}<tr><td colspan="7" class="dim">none</td></tr>{{end}}</table>

<script>
(function () {
  var box = document.getElementById("refresh");
  box.checked = localStorage.getItem("tollgate-refresh") !== "off";
  box.addEventListener("change", function () {
    localStorage.setItem("tollgate-refresh", box.checked ? "on" : "off");
  });
  setInterval(function () { if (box.checked) { location.reload(); } }, 5000);
})();
</script>
</body></html>{{end}}
`
