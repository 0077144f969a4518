package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mediocregopher/radix/v4"

	"github.com/tollgate-dev/tollgate/cmd/tollgate-bench/proc"
)

// redis dials the gateway's Redis.
func (g *Gateway) redis(ctx context.Context) (radix.Client, error) {
	return (radix.Dialer{}).Dial(ctx, "tcp", proc.Addr(g.ports.redis))
}

// ResetCounters empties the gateway's Redis: every quota counter starts again from 0.
func (g *Gateway) ResetCounters(ctx context.Context) error {
	c, err := g.redis(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	return c.Do(ctx, radix.Cmd(nil, "FLUSHALL"))
}

// CountedTokens sums every quota counter in the gateway's Redis: the tokens charged since the
// last ResetCounters (the policy's one quota counts total tokens).
func (g *Gateway) CountedTokens(ctx context.Context) (int64, error) {
	c, err := g.redis(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Close() }()
	var keys []string
	scanner := (radix.ScannerConfig{Command: "SCAN", Pattern: "tollgate_*"}).New(c)
	var key string
	for scanner.Next(ctx, &key) {
		keys = append(keys, key)
	}
	if err := scanner.Close(); err != nil {
		return 0, err
	}
	var total int64
	for _, k := range keys {
		var v string
		if err := c.Do(ctx, radix.Cmd(&v, "GET", k)); err != nil {
			continue // not a counter (tollgate's markers and indexes are other types)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		total += n
	}
	return total, nil
}

var totalTokens = regexp.MustCompile(`"total_tokens":\s*(\d+)`)

// TokensOf sends one request as user with body and headers and returns the total tokens its
// answer reports (the last usage of a stream).
func (g *Gateway) TokensOf(ctx context.Context, user, body string, header http.Header) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.URL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header = header.Clone()
	req.Header.Set(UserHeader, user)
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := totalTokens.FindAllSubmatch(b, -1)
	if resp.StatusCode != http.StatusOK || len(m) == 0 {
		return 0, fmt.Errorf("%d without usage: %.200s", resp.StatusCode, b)
	}
	return strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
}

// AnswerDurations reads the gateway's usage log and returns, sorted, how long Envoy took over
// each answer with status (from the request's first byte to the answer's last) for requests
// that started in [from, to). The log has millisecond durations.
func (g *Gateway) AnswerDurations(status int, from, to time.Time) ([]time.Duration, error) {
	if g.AccessLogPath == "" {
		return nil, errors.New("the gateway keeps no usage log file (not `tollgate run`)")
	}
	f, err := os.Open(g.AccessLogPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Time     time.Time `json:"time"`
			Status   int       `json:"status"`
			Duration int64     `json:"duration_ms"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Status != status || line.Time.Before(from) || !line.Time.Before(to) {
			continue
		}
		out = append(out, time.Duration(line.Duration)*time.Millisecond)
	}
	slices.Sort(out)
	return out, sc.Err()
}
