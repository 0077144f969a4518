package main

import (
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/xds"
)

// testAdmin is the quota admin API of a server without quotas, with token "secret", behind an
// httptest server.
func testAdmin(t *testing.T) *httptest.Server {
	t.Helper()
	server, err := extproc.NewServer(nil, nil, &extproc.Config{}, rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := &quotaAdmin{server: server, token: sha256.Sum256([]byte("secret")), audit: slog.New(slog.DiscardHandler),
		status: func() pageStatus {
			return pageStatus{Version: "v-test", Reload: reloadStatus{LastResult: "failed", LastErrors: []string{"policy.yaml:3: quotas[0].limit: must be greater than 0"}, LastAttempt: time.Now()},
				XDS: &xds.Status{Clients: []xds.ClientStatus{{NodeID: "envoy-1", Group: "envoy", LastNack: &xds.Nack{TypeURL: "type.googleapis.com/envoy.config.listener.v3.Listener", Message: "bad listener"}}}}}
		}}
	srv := httptest.NewServer(a.routes())
	t.Cleanup(srv.Close)
	return srv
}

// TestAdminPageNeedsTheToken: the page answers a login form (401) without a session, refuses a
// wrong token (403), and after signing in shows the reload errors and each Envoy's rejection,
// escaped.
func TestAdminPageNeedsTheToken(t *testing.T) {
	srv := testAdmin(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(cookie *http.Cookie) (int, http.Header, string) {
		req, _ := http.NewRequest("GET", srv.URL+"/admin/", nil)
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header, string(b)
	}
	status, _, body := get(nil)
	if status != 401 || !strings.Contains(body, `name="token"`) || strings.Contains(body, "envoy-1") {
		t.Fatalf("without a session: %d\n%s", status, body)
	}
	wrong, err := noRedirect.PostForm(srv.URL+"/admin/login", url.Values{"token": {"guess"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = wrong.Body.Close()
	if wrong.StatusCode != 403 || len(wrong.Cookies()) != 0 {
		t.Errorf("a wrong token: %d, cookies %v", wrong.StatusCode, wrong.Cookies())
	}
	ok, err := noRedirect.PostForm(srv.URL+"/admin/login", url.Values{"token": {"secret"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = ok.Body.Close()
	if ok.StatusCode != 303 || len(ok.Cookies()) != 1 || !ok.Cookies()[0].HttpOnly || strings.Contains(ok.Cookies()[0].Value, "secret") {
		t.Fatalf("signing in: %d, cookies %v", ok.StatusCode, ok.Cookies())
	}
	status, header, body := get(ok.Cookies()[0])
	for _, want := range []string{"quotas[0].limit: must be greater than 0", "envoy-1", "Listener", "bad listener", "The policy has no quotas"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if status != 200 || header.Get("Content-Security-Policy") == "" {
		t.Errorf("page: %d, CSP %q", status, header.Get("Content-Security-Policy"))
	}
	if status, _, _ := get(&http.Cookie{Name: sessionCookie, Value: "forged"}); status != 401 {
		t.Errorf("a forged session: %d", status)
	}
}

// TestAdminAPIErrors: every refusal of the admin API is JSON with the right status: no token
// 401, another 403, a malformed body 400, an unknown path or quota 404.
func TestAdminAPIErrors(t *testing.T) {
	srv := testAdmin(t)
	for _, c := range []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no token", "POST", "/admin/v1/quotas/reset", "", `{"user":"alice","quota":"q"}`, 401},
		{"wrong token", "GET", "/admin/v1/quotas?user=alice", "nope", "", 403},
		{"no user", "GET", "/admin/v1/quotas", "secret", "", 400},
		{"not JSON", "POST", "/admin/v1/quotas/grant", "secret", `user=alice`, 400},
		{"unknown field", "POST", "/admin/v1/quotas/grant", "secret", `{"user":"alice","quota":"q","amount":1,"extra":true}`, 400},
		{"no quota", "POST", "/admin/v1/quotas/set", "secret", `{"user":"alice"}`, 400},
		{"unknown quota", "POST", "/admin/v1/quotas/reset", "secret", `{"user":"alice","quota":"nope"}`, 404},
		{"unknown path", "GET", "/admin/v1/other", "secret", "", 404},
		{"wrong method", "GET", "/admin/v1/quotas/reset", "secret", "", 404},
	} {
		req, err := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != c.want || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || !strings.Contains(string(body), `"error"`) {
			t.Errorf("%s: %d %s %s, want %d with a JSON error", c.name, resp.StatusCode, resp.Header.Get("Content-Type"), body, c.want)
		}
	}
}
