package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// chargeOptions say where the ext_proc server's quota bookkeeping lives besides the ratelimit
// service: the Redis holding the service's counters (to take back what a request reserved but
// did not use) and the spool that keeps undelivered charges across restarts.
type chargeOptions struct {
	redisURL string
	spool    string
	// local, when set, is the ratelimit service running in this process (tollgate run):
	// quota checks call it directly.
	local rlsclient.LocalService
}

// register adds --redis and --charge-spool to fs.
func (o *chargeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.redisURL, "redis", os.Getenv("REDIS_URL"), "Redis of the ratelimit service's counters, "+redisURLForms+" (env REDIS_URL): admission then reserves each request's worst case and takes back what it did not use, so concurrent requests cannot overshoot a quota; without it quotas are only checked")
	o.registerSpool(fs)
}

// registerSpool adds --charge-spool to fs.
func (o *chargeOptions) registerSpool(fs *flag.FlagSet) {
	fs.StringVar(&o.spool, "charge-spool", "", "file that keeps charges the ratelimit service did not take yet, across restarts (default: ~/.local/state/tollgate/charges-<ext_proc address>.spool, or under $XDG_STATE_HOME); \"\": memory only")
}

// resolve fills the default spool of the ext_proc server listening on listen, unless
// --charge-spool was given (an empty one included).
func (o *chargeOptions) resolve(fs *flag.FlagSet, listen string) {
	if !spoolGiven(fs) {
		o.spool = defaultSpool(listen)
	}
}

func spoolGiven(fs *flag.FlagSet) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "charge-spool" })
	return given
}

// defaultSpool is the spool of the ext_proc server listening on listen, in the user's state
// directory: one file per listening server, so two servers on one host never share one.
func defaultSpool(listen string) string {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".local", "state")
	}
	name := strings.NewReplacer(":", "-", "/", "-", "[", "", "]", "").Replace(listen)
	return filepath.Join(dir, "tollgate", "charges-"+name+".spool")
}

// clientOptions turns the flags into the ratelimit client's options. The counters it returns
// (nil without --redis) are the Redis the client takes reservations back in; the caller closes
// them once the ext_proc server is done.
func (o chargeOptions) clientOptions(logger *slog.Logger) (rlsclient.Options, *rls.Counters, error) {
	opts := rlsclient.Options{Logger: logger.With("component", "ratelimit-client"), Spool: o.spool, Local: o.local}
	if o.redisURL == "" {
		logger.Warn("quota reservations are off (no --redis): requests are only checked, so a client that sends many at once can spend past a quota by what they cost together")
		return opts, nil, nil
	}
	counters, err := rls.NewCounters(o.redisURL)
	if err != nil {
		return rlsclient.Options{}, nil, err
	}
	opts.Refunder = counters
	return opts, counters, nil
}

// redisStatus is what status says of the counters' Redis.
type redisStatus struct {
	Where     string `json:"where"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// String is the status line: where, and whether it answers.
func (r *redisStatus) String() string {
	if r.Reachable {
		return r.Where + ", reachable"
	}
	return r.Where + ", NOT reachable: " + r.Error
}

// redisStatusOf asks the counters' Redis whether it answers now; nil without counters.
func redisStatusOf(ctx context.Context, counters *rls.Counters) *redisStatus {
	if counters == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st := &redisStatus{Where: counters.Where(), Reachable: true}
	if err := counters.Ping(ctx); err != nil {
		st.Reachable, st.Error = false, err.Error()
	}
	return st
}
