// `tollgate run`, before anything starts: the command line and the policy checked together.

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	"github.com/tollgate-dev/tollgate/envoy/rls"
	"github.com/tollgate-dev/tollgate/policies"
)

// runPlan is everything checked before anything starts.
type runPlan struct {
	opts      runOptions
	policy    *policies.Policy
	envoyBin  string
	logDir    string // absolute
	redisURL  string // empty: embedded
	rateLimit rls.Options
}

// planRun validates the command line and the policy together and finds Envoy, so mistakes are
// reported, all at once, before anything has started.
func planRun(o runOptions) (*runPlan, error) {
	p, _, err := compile(o.policyFile)
	if err != nil {
		return nil, err
	}
	var errs []error
	errs = append(errs,
		checkExtProc(p.ExtProc, o.extProcAddr, "tollgate run"),
		checkEndpoint("rateLimit", p.RateLimit.Endpoint, "ratelimit-grpc", o.rateLimitGRPC, "tollgate run"),
		o.overload.Validate())
	listener := net.JoinHostPort(p.Listener.Address, strconv.Itoa(p.Listener.Port))
	addrs := []namedAddr{
		{"the policy's listener", listener},
		{"--admin", o.adminAddr},
		{"--xds", o.xdsAddr},
		{"--metrics", o.metricsAddr},
		{"--ratelimit-grpc", o.rateLimitGRPC},
		{"--ratelimit-http", o.rateLimitHTTP},
		{"--ratelimit-debug", o.rateLimitDebug},
	}
	if !strings.HasPrefix(o.extProcAddr, unixPrefix) {
		addrs = append(addrs, namedAddr{"--extproc", o.extProcAddr})
	}
	if err := checkDistinctPorts(addrs); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, checkListenable(addrs))
	}
	bin, err := launch.FindBinary()
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	logDir, err := filepath.Abs(o.logDir)
	if err != nil {
		return nil, fmt.Errorf("--log-dir: %w", err)
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("--log-dir: %w", err)
	}
	return &runPlan{
		opts:     o,
		policy:   p,
		envoyBin: bin,
		logDir:   logDir,
		redisURL: o.redisURL,
		rateLimit: rls.Options{
			GRPCAddr:  o.rateLimitGRPC,
			HTTPAddr:  o.rateLimitHTTP,
			DebugAddr: o.rateLimitDebug,
			XDSAddr:   launch.DialAddr(o.xdsAddr),
			NodeID:    envoy.DefaultRateLimitNode,
			LogLevel:  rateLimitLogLevel(o.logLevel),
		},
	}, nil
}

// checkEndpoint makes sure Envoy, configured by the policy, dials what who listens on.
func checkEndpoint(policyField string, ep policies.Endpoint, flagName, listen, who string) error {
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--%s %q is not host:port", flagName, listen)
	}
	policyAddr := net.JoinHostPort(ep.Address, strconv.Itoa(ep.Port))
	mismatch := func() error {
		return fmt.Errorf("the policy's %s is %s but %s listens on %s (--%s), so Envoy would not reach it; pass --%s %s or change %s in the policy",
			policyField, policyAddr, who, listen, flagName, flagName, policyAddr, policyField)
	}
	if port, err := strconv.Atoi(portText); err != nil || port != ep.Port {
		return mismatch()
	}
	if isUnspecified(host) {
		return nil
	}
	// Host names cannot be compared without resolving them: only two IPs can disagree for sure.
	listenIP, policyIP := net.ParseIP(host), net.ParseIP(ep.Address)
	if listenIP != nil && policyIP != nil && !listenIP.Equal(policyIP) {
		return mismatch()
	}
	return nil
}

type namedAddr struct{ name, addr string }

// checkDistinctPorts refuses two parts on one port. The ratelimit service's listeners set
// SO_REUSEPORT, so such a clash would not fail: the kernel would share connections between them.
func checkDistinctPorts(addrs []namedAddr) error {
	owner := map[string]string{}
	var errs []error
	for _, a := range addrs {
		_, port, err := net.SplitHostPort(a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q is not host:port", a.name, a.addr))
			continue
		}
		if other, taken := owner[port]; taken {
			errs = append(errs, fmt.Errorf("%s and %s both use port %s", other, a.name, port))
			continue
		}
		owner[port] = a.name
	}
	return errors.Join(errs...)
}

// checkListenable binds and releases every address, so a port in use (often another tollgate
// run, or a leftover Envoy) is named before anything starts.
func checkListenable(addrs []namedAddr) error {
	var errs []error
	for _, a := range addrs {
		l, err := net.Listen("tcp", a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s cannot be used: %w", a.name, a.addr, err))
			continue
		}
		_ = l.Close()
	}
	return errors.Join(errs...)
}

func isUnspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// rateLimitLogLevel maps tollgate's --log-level onto the ratelimit service's levels.
func rateLimitLogLevel(level string) string {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return rls.DefaultLogLevel
	}
	switch {
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	default:
		return "error"
	}
}
