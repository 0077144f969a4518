package main

import (
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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
	fs.StringVar(&o.redisURL, "redis", os.Getenv("REDIS_URL"), "Redis of the ratelimit service's counters, host:port, redis://[user:password@]host:port or unix:///path/to/redis.sock (env REDIS_URL): admission then reserves each request's worst case and takes back what it did not use, so concurrent requests cannot overshoot a quota; without it quotas are only checked")
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

// clientOptions turns the flags into the ratelimit client's options, and returns what must be
// closed once the ext_proc server is.
func (o chargeOptions) clientOptions(logger *slog.Logger) (rlsclient.Options, func(), error) {
	opts := rlsclient.Options{Logger: logger.With("component", "ratelimit-client"), Spool: o.spool, Local: o.local}
	if o.redisURL == "" {
		logger.Warn("quota reservations are off (no --redis): requests are only checked, so a client that sends many at once can spend past a quota by what they cost together")
		return opts, func() {}, nil
	}
	counters, err := rls.NewCounters(o.redisURL)
	if err != nil {
		return rlsclient.Options{}, nil, err
	}
	opts.Refunder = counters
	return opts, func() { _ = counters.Close() }, nil
}
