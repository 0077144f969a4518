package rls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mediocregopher/radix/v4"
	"github.com/mediocregopher/radix/v4/resp/resp3"
)

// redisDialTimeout bounds one connection attempt, so a black-holed Redis is retried (and
// finally reported) instead of hanging a start.
const redisDialTimeout = 2 * time.Second

// redisRejectedError is an error reply from a Redis that was reached: a wrong password or
// a missing ACL. Retrying will not fix it.
type redisRejectedError struct{ reply string }

func (e redisRejectedError) Error() string { return "Redis refused: " + e.reply }

// waitForRedis pings Redis until it answers, wait passes or ctx ends.
//
// tollgate checks Redis before starting the service rather than starting and failing per
// request: the upstream runner pings Redis once while it starts and panics when that fails,
// and a service that starts without its store would only turn into failed (and, with Envoy's
// default failure_mode_deny=false, unlimited) requests. Redis going away later is the
// service's own business: it reconnects per request.
func waitForRedis(ctx context.Context, target redisTarget, tlsConfig *tls.Config, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	backoff := 100 * time.Millisecond
	for {
		err := probeRedis(ctx, target, tlsConfig)
		if err == nil {
			return nil
		}
		var rejected redisRejectedError
		if errors.As(err, &rejected) {
			return fmt.Errorf("%s rejected tollgate's connection: %s", target, rejected.reply)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cannot reach %s: %w", target, ctx.Err())
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return fmt.Errorf("cannot reach %s (tried for %s): %w", target, wait, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot reach %s: %w", target, ctx.Err())
		case <-time.After(min(backoff, remaining)):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// probeRedis checks once that the target answers as the service will use it: a single node
// answers PING; a Cluster's seeds give its slot map and the nodes answer; the sentinels name
// the primary and it answers.
func probeRedis(ctx context.Context, target redisTarget, tlsConfig *tls.Config) error {
	if target.Topology == topologySingle {
		return pingRedis(ctx, target, tlsConfig)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*redisDialTimeout)
	defer cancel()
	client, err := target.connect(ctx, tlsConfig, 1)
	if err == nil {
		err = client.Do(ctx, radix.Cmd(nil, "PING"))
		_ = client.Close()
	}
	var reply resp3.SimpleError
	if errors.As(err, &reply) && !retriedReply(reply.S) {
		return redisRejectedError{reply: reply.S}
	}
	return err
}

// retriedReply reports error replies of a Redis that will soon serve: one still loading its
// data set, busy with a script, or a cluster or replica still settling.
func retriedReply(reply string) bool {
	for _, prefix := range []string{"LOADING", "BUSY", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN"} {
		if strings.HasPrefix(reply, prefix) {
			return true
		}
	}
	return false
}

// pingRedis opens one connection, authenticates the way the service will (REDIS_AUTH split at
// the first colon into user and password) and sends PING. It speaks just enough RESP for
// that: two commands and their one-line replies.
func pingRedis(ctx context.Context, target redisTarget, tlsConfig *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, redisDialTimeout)
	defer cancel()
	netDialer := &net.Dialer{}
	var conn net.Conn
	var err error
	if target.TLS {
		conn, err = (&tls.Dialer{NetDialer: netDialer, Config: tlsConfig}).DialContext(ctx, target.network(), target.Addr)
	} else {
		conn, err = netDialer.DialContext(ctx, target.network(), target.Addr)
	}
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return err
		}
	}

	w := bufio.NewWriter(conn)
	commands := 1
	if target.Auth != "" {
		commands++
		if user, pass, hasUser := strings.Cut(target.Auth, ":"); hasUser {
			writeRESPCommand(w, "AUTH", user, pass)
		} else {
			writeRESPCommand(w, "AUTH", target.Auth)
		}
	}
	writeRESPCommand(w, "PING")
	if err := w.Flush(); err != nil {
		return err
	}

	r := bufio.NewReader(conn)
	for range commands {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if reply, isError := strings.CutPrefix(line, "-"); isError {
			if retriedReply(reply) {
				return errors.New(reply)
			}
			return redisRejectedError{reply: reply}
		}
	}
	return nil
}

// writeRESPCommand writes a command as a RESP array of bulk strings.
// A bufio.Writer keeps its first error for Flush, which the caller checks.
func writeRESPCommand(w *bufio.Writer, args ...string) {
	_, _ = w.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		_, _ = w.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
}
