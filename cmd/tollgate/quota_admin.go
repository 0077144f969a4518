package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tollgate-dev/tollgate/envoy/extproc"
)

// The quota admin API: read any caller's quotas, and reset, set or grant a counter for the
// current window. It listens on its own address, on this machine only unless told otherwise,
// and every call needs the admin token as a bearer token. Each change writes one audit line.

// adminTokenEnv names the environment variable holding the admin token.
const adminTokenEnv = "TOLLGATE_ADMIN_TOKEN"

// defaultQuotaAdminAddr is where the quota admin API listens by default.
const defaultQuotaAdminAddr = "127.0.0.1:1066"

// quotaAdminOptions are the flags of the quota admin API.
type quotaAdminOptions struct {
	addr      string
	tokenFile string
}

func (o *quotaAdminOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "quota-admin", defaultQuotaAdminAddr, "listen address of the quota admin API (read, reset, set and grant quotas at runtime); it serves only with a token; empty: off")
	fs.StringVar(&o.tokenFile, "quota-admin-token-file", "", "file holding the quota admin API's bearer token (default: the "+adminTokenEnv+" environment variable)")
}

// token is the admin token from --quota-admin-token-file or the environment; "" when none is
// set.
func (o quotaAdminOptions) token() (string, error) {
	if o.tokenFile == "" {
		return strings.TrimSpace(os.Getenv(adminTokenEnv)), nil
	}
	data, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--quota-admin-token-file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("--quota-admin-token-file: %s is empty", o.tokenFile)
	}
	return token, nil
}

// listenQuotaAdmin opens the quota admin API's listener when it is configured (nil when it is
// off); run serves it.
func listenQuotaAdmin(o quotaAdminOptions, server *extproc.Server, status func() pageStatus, logger *slog.Logger) (*quotaAdminServer, error) {
	if o.addr == "" || server == nil {
		return nil, nil
	}
	token, err := o.token()
	if err != nil {
		return nil, err
	}
	if token == "" {
		logger.Info("the quota admin API is off: set " + adminTokenEnv + " or --quota-admin-token-file to turn it on")
		return nil, nil
	}
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, fmt.Errorf("quota admin listener: %w", err)
	}
	if !isLoopback(lis.Addr()) {
		logger.Warn("the quota admin API listens beyond this machine; put it behind TLS", "addr", lis.Addr().String())
	}
	server.TrackActivity() // for the page
	api := &quotaAdmin{server: server, token: sha256.Sum256([]byte(token)), audit: logger.With("component", "quota-admin"), status: status}
	logger.Info("quota admin API serving", "addr", "http://"+lis.Addr().String())
	return &quotaAdminServer{lis: lis, srv: &http.Server{Handler: api.routes(), ReadHeaderTimeout: 5 * time.Second}}, nil
}

// quotaAdminServer is the quota admin API's listener and HTTP server.
type quotaAdminServer struct {
	lis net.Listener
	srv *http.Server
}

// run serves the API in g until ctx ends; a nil server does nothing.
func (s *quotaAdminServer) run(ctx context.Context, g *errgroup.Group) {
	if s == nil {
		return
	}
	g.Go(func() error { return serveHTTP(s.srv, s.lis) })
	g.Go(func() error {
		<-ctx.Done()
		return shutdownHTTP(s.srv)
	})
}

// quotaAdmin is the quota admin API's handler state.
type quotaAdmin struct {
	server *extproc.Server
	token  [sha256.Size]byte // kept hashed: compared in constant time, never logged
	audit  *slog.Logger
	status func() pageStatus // what the page shows of the process; nil: nothing
}

func (a *quotaAdmin) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/quotas", a.authorized(a.read))
	for _, action := range []string{extproc.ActionReset, extproc.ActionSet, extproc.ActionGrant} {
		mux.HandleFunc("POST /admin/v1/quotas/"+action, a.authorized(func(w http.ResponseWriter, r *http.Request, who string) {
			a.change(w, r, who, action)
		}))
	}
	mux.HandleFunc("GET /admin/{$}", a.page)
	mux.HandleFunc("GET /admin", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/admin/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("POST /admin/login", a.login)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeAdminError(w, http.StatusNotFound, "unknown path: GET /admin/ (the page), GET /admin/v1/quotas, POST /admin/v1/quotas/{reset,set,grant}")
	})
	return mux
}

// authorized admits a call with the admin token, and tells the handler who made it: the
// token's fingerprint and the client's address.
func (a *quotaAdmin) authorized(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := bearerToken(r)
		if token == "" {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeAdminError(w, http.StatusUnauthorized, "send the admin token as 'Authorization: Bearer <token>'")
			return
		}
		sum, ok := a.isToken(token)
		if !ok {
			writeAdminError(w, http.StatusForbidden, "wrong admin token")
			return
		}
		h(w, r, fmt.Sprintf("token %s from %s", hex.EncodeToString(sum[:4]), r.RemoteAddr))
	}
}

// bearerToken is the request's "Authorization: Bearer" credential; "" without one.
func bearerToken(r *http.Request) string {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// isToken reports whether token is the admin token, comparing hashes in constant time, and
// returns the hash (its start fingerprints the caller in the audit log).
func (a *quotaAdmin) isToken(token string) ([sha256.Size]byte, bool) {
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return sum, token != "" && subtle.ConstantTimeCompare(sum[:], a.token[:]) == 1
}

func (a *quotaAdmin) read(w http.ResponseWriter, r *http.Request, _ string) {
	user := r.URL.Query().Get("user")
	if user == "" {
		writeAdminError(w, http.StatusBadRequest, "user is required: /admin/v1/quotas?user=alice[&team=research]")
		return
	}
	rep, err := a.server.Report(r.Context(), user, r.URL.Query().Get("team"))
	if err != nil {
		writeAdminError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeAdminJSON(w, http.StatusOK, rep)
}

// adminChange is the body of a change: whose counter, of which quota, and the amount (set,
// grant) in the quota's unit.
type adminChange struct {
	User   string  `json:"user"`
	Team   string  `json:"team"`
	Quota  string  `json:"quota"`
	Amount float64 `json:"amount"`
}

func (a *quotaAdmin) change(w http.ResponseWriter, r *http.Request, who, action string) {
	var body adminChange
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeAdminError(w, http.StatusBadRequest, "the body must be JSON {user, team, quota, amount}: "+err.Error())
		return
	}
	if body.User == "" || body.Quota == "" {
		writeAdminError(w, http.StatusBadRequest, "user and quota are required")
		return
	}
	c, err := a.server.Apply(r.Context(), action, body.Quota, body.User, body.Team, body.Amount)
	switch {
	case errors.Is(err, extproc.ErrUnknownQuota):
		writeAdminError(w, http.StatusNotFound, err.Error())
		return
	case errors.Is(err, extproc.ErrInvalidChange):
		writeAdminError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		writeAdminError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	a.audit.Info("quota changed", "who", who, "action", c.Action, "quota", c.Quota, "subject", c.Subject,
		"what", c.What, "before", c.Before, "after", c.After, "unit", c.Unit)
	writeAdminJSON(w, http.StatusOK, c)
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAdminError(w http.ResponseWriter, status int, message string) {
	writeAdminJSON(w, status, map[string]any{"error": map[string]string{"message": message}})
}
