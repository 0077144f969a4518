package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// readyPollInterval is how often WaitReady asks the admin interface.
const readyPollInterval = 50 * time.Millisecond

// WaitReady polls the admin interface's /ready until Envoy says LIVE: it has its listeners and
// clusters from the control plane and is serving. It returns the *ExitError if Envoy exits
// first, or, when ctx ends, an error with the last answer /ready gave (INITIALIZING usually
// means the control plane has not sent the configuration yet).
func (p *Process) WaitReady(ctx context.Context) error {
	url := "http://" + DialAddr(p.opts.AdminAddress) + "/ready"
	client := &http.Client{Timeout: time.Second}
	last := "no answer yet"
	err := p.child.Await(ctx, readyPollInterval, func(ctx context.Context) error {
		state, err := readyState(ctx, client, url)
		switch {
		case err == nil && state == "LIVE":
			return nil
		case err != nil && ctx.Err() != nil:
			// Cut short by ctx: keep the last real answer.
		case err != nil:
			last = err.Error()
		default:
			last = "/ready says " + state
		}
		return errors.New(last)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrExited):
		<-p.done
		if e := p.Err(); e != nil {
			return e
		}
		return fmt.Errorf("envoy exited before it was ready (last: %s)", last)
	default:
		return fmt.Errorf("envoy (pid %d) is not ready: %s; see %s", p.Pid(), last, p.logPath)
	}
}

// readyState returns the server state /ready reports (LIVE, PRE_INITIALIZING, INITIALIZING,
// DRAINING).
func readyState(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", err
	}
	state := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK && state == "" {
		state = resp.Status
	}
	return state, nil
}

// DialAddr turns a listen address into one a local client can dial: a listener on every
// interface (no host, 0.0.0.0, ::) is reached over the loopback address of its family.
func DialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil || !ip.IsUnspecified():
		return listen
	case ip.To4() == nil:
		return net.JoinHostPort("::1", port)
	default:
		return net.JoinHostPort("127.0.0.1", port)
	}
}
