package load

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func TestRunSendsAtRateWithRotatingUsers(t *testing.T) {
	var (
		mu    sync.Mutex
		users = map[string]bool{}
		body  string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		users[r.Header.Get("x-user-id")] = true
		body = string(b)
		mu.Unlock()
		if r.Header.Get("x-fail") != "" {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()

	req := Request{URL: srv.URL, Body: []byte(`{"model":"m"}`), UserHeader: "x-user-id", Users: 3}
	res := Run(context.Background(), Client(5*time.Second), req, 100, 300*time.Millisecond, Options{})
	if res.Requests < 20 || res.Success != 1 {
		t.Fatalf("run: %s (requests %d), want ~30 requests, all successful", res, res.Requests)
	}
	if res.P50 <= 0 || res.P99 < res.P50 {
		t.Fatalf("percentiles p50 %s p99 %s are not ordered positive durations", res.P50, res.P99)
	}
	mu.Lock()
	sawUsers, sawBody := len(users), body
	mu.Unlock()
	if sawUsers != 3 || sawBody != `{"model":"m"}` {
		t.Fatalf("server saw %d users and body %q, want 3 distinct users and the request body", sawUsers, sawBody)
	}

	failing := req
	failing.Header = http.Header{"X-Fail": {"1"}}
	res = Run(context.Background(), Client(5*time.Second), failing, 100, 200*time.Millisecond, Options{})
	if res.Success != 0 || res.Codes["429"] == 0 {
		t.Fatalf("failing run: %s, want every answer counted as a 429 failure", res)
	}
}
