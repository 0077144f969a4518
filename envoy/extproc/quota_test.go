package extproc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestOverQuotaIsAnswered429: a user the ratelimit service says is over a quota gets a JSON
// 429 naming the model, the limit and when it resets, with Retry-After and the x-ratelimit
// headers; nothing goes upstream and nothing is charged.
func TestOverQuotaIsAnswered429(t *testing.T) {
	fake := rlsclienttest.Start(t)
	fake.Over("alice")
	h := newHarness(t, chargedConfig(t, fake.Addr))
	c := h.open(t)
	resp := sendChat(t, c, chatBody)
	got := immediate(t, resp, 429)
	if got.Error.Type != errorTypeRateLimit ||
		!strings.HasPrefix(got.Error.Message, "alice has used all 50 tokens of this hour (quota hourly); the window resets at ") ||
		!strings.HasSuffix(got.Error.Message, " UTC, in 1 min 30 s.") {
		t.Errorf("429 body: %+v", got.Error)
	}
	headers := setHeaders(t, resp.GetImmediateResponse().GetHeaders())
	for name, want := range map[string]string{
		"retry-after": "90", "x-ratelimit-limit": `50, 50;w=3600;name="hourly"`, "x-ratelimit-remaining": "0", "x-ratelimit-reset": "90",
		"x-ratelimit-limit-tokens": "50", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s", "x-should-retry": "false",
	} {
		if v := string(headers[name].GetHeader().GetRawValue()); v != want {
			t.Errorf("%s = %q, want %q", name, v, want)
		}
	}
	c.end()
	if err := h.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if charges := fake.Charges(); len(charges) != 0 {
		t.Errorf("a refused request was charged: %q", charges)
	}
	if n := testutil.ToFloat64(h.srv.metrics.quotaChecks.WithLabelValues(checkOverLimit)); n != 1 {
		t.Errorf("over_limit checks = %v, want 1", n)
	}
}

// TestTimesOfMessagesAndChecks: each message's answer is timed by its kind, and a request
// body's time includes the quota check it waited for, which is timed on its own.
func TestTimesOfMessagesAndChecks(t *testing.T) {
	const serviceTakes = 50 * time.Millisecond
	fake := rlsclienttest.Start(t)
	fake.Gate = make(chan struct{})
	h := newHarness(t, chargedConfig(t, fake.Addr))
	c := h.open(t)
	if resp := c.send(chatHeaders(len(chatBody))); resp.GetRequestHeaders() == nil {
		t.Fatalf("request headers: want a headers response, got %v", resp)
	}
	started := time.Now()
	time.AfterFunc(serviceTakes, func() { close(fake.Gate) })
	if resp := c.send(requestBody(chatBody)); resp.GetRequestBody() == nil {
		t.Fatalf("want the request admitted, got %v", resp)
	}
	if waited := time.Since(started); waited < serviceTakes {
		t.Fatalf("the request was answered after %v, before the service answered (%v)", waited, serviceTakes)
	}
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody([]byte(`{"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`), true))
	c.end()

	// The check began a moment after the service's time started to run.
	checkTakes := serviceTakes * 4 / 5
	checks := histogram(t, h, "tollgate_quota_check_duration_seconds")
	if checks.GetSampleCount() != 1 || checks.GetSampleSum() < checkTakes.Seconds() {
		t.Errorf("quota checks timed: %d taking %.3fs, want 1 taking at least %v", checks.GetSampleCount(), checks.GetSampleSum(), checkTakes)
	}
	for kind, want := range map[string]uint64{"request_headers": 1, "request_body": 1, "response_headers": 1, "response_body": 1} {
		if n := histogramCount(t, h, "tollgate_extproc_message_duration_seconds", kind); n != want {
			t.Errorf("%s messages timed: %d, want %d", kind, n, want)
		}
	}
	if sum := histogramSum(t, h, "tollgate_extproc_message_duration_seconds", "request_body"); sum < checks.GetSampleSum() {
		t.Errorf("the request body took %.3fs, less than the check it waited for (%.3fs)", sum, checks.GetSampleSum())
	}
	if sum := histogramSum(t, h, "tollgate_extproc_message_duration_seconds", "request_headers"); sum >= serviceTakes.Seconds() {
		t.Errorf("the request headers took %.3fs: they wait for no check", sum)
	}
}

// TestAdmittedRequestCarriesItsQuotaHeaders: an admitted request publishes the numbers of the
// quota closest to its limit, which the route turns into x-ratelimit-* response headers, and
// its check asked about every quota of the model without spending anything.
func TestAdmittedRequestCarriesItsQuotaHeaders(t *testing.T) {
	fake := rlsclienttest.Start(t)
	h := newHarness(t, chargedConfig(t, fake.Addr))
	resp := sendChat(t, h.open(t), chatBody)
	if resp.GetRequestBody() == nil {
		t.Fatalf("want a body response, got %v", resp)
	}
	m := metadataFields(resp)
	if m[envoy.MetadataRateLimitLimit] != `50, 50;w=3600;name="hourly"` || m[envoy.MetadataRateLimitRemaining] != "40" || m[envoy.MetadataRateLimitReset] != "90" {
		t.Errorf("x-ratelimit metadata %v", m)
	}
	checks := fake.CheckCalls()
	if len(checks) != 1 {
		t.Fatalf("%d checks, want 1", len(checks))
	}
	got := rlsclienttest.Describe(checks[0])
	want := []string{"model=qwen3,quota=hourly,user=alice +0", "model=qwen3,quota=weighted,user=alice +0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("check %q, want %q", got, want)
	}
}

// TestQuotaCheckFailureMode: when the ratelimit service cannot be reached, failure mode closed
// answers a JSON 503 and open admits the request; each is counted.
func TestQuotaCheckFailureMode(t *testing.T) {
	dead := rlsclienttest.DeadAddr(t)
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprint("open=", open), func(t *testing.T) {
			cfg := chargedConfig(t, dead)
			cfg.QuotaFailOpen = open
			cfg.QuotaCheckTimeout = 200 * time.Millisecond
			h := newHarness(t, cfg)
			resp := sendChat(t, h.open(t), chatBody)
			if open {
				if resp.GetRequestBody() == nil {
					t.Fatalf("fail open: want the request admitted, got %v", resp)
				}
				if n := testutil.ToFloat64(h.srv.metrics.quotaChecks.WithLabelValues(checkFailedOpen)); n != 1 {
					t.Errorf("failed_open checks = %v, want 1", n)
				}
				return
			}
			if got := immediate(t, resp, 503); got.Error.Type != errorTypeUnavailable {
				t.Errorf("503 body: %+v", got.Error)
			}
			if n := testutil.ToFloat64(h.srv.metrics.quotaChecks.WithLabelValues(checkFailedClose)); n != 1 {
				t.Errorf("failed_closed checks = %v, want 1", n)
			}
		})
	}
}

// TestConcurrentRequestsPerUserAreCapped: a user with their cap of requests in flight gets a
// JSON 429 for the next one; once one has ended, the next is admitted. Other users are not
// affected.
func TestConcurrentRequestsPerUserAreCapped(t *testing.T) {
	cfg := testConfig(t)
	cfg.DefaultMaxConcurrentRequests = 5
	cfg.MaxConcurrentRequests = map[string]int{"alice": 2} // her tier's cap beats the default
	h := newHarness(t, cfg)
	first, second := h.open(t), h.open(t)
	for _, c := range []*call{first, second} {
		if resp := sendChat(t, c, chatBody); resp.GetRequestBody() == nil {
			t.Fatalf("a request within the cap was refused: %v", resp)
		}
	}
	third := h.open(t)
	got := immediate(t, sendChat(t, third, chatBody), 429)
	if got.Error.Code == nil || *got.Error.Code != "too_many_concurrent_requests" || !strings.Contains(got.Error.Message, "at most 2") {
		t.Errorf("429 body: %+v", got.Error)
	}
	third.end()
	first.end()
	tgtest.Eventually(t, 5*time.Second, "the first request's end counted", func() bool {
		return testutil.ToFloat64(h.srv.metrics.activeStreams) == 1
	})
	if resp := sendChat(t, h.open(t), chatBody); resp.GetRequestBody() == nil {
		t.Fatalf("a request after one ended was refused: %v", resp)
	}
	if n := testutil.ToFloat64(h.srv.metrics.quotaChecks.WithLabelValues(checkTooManyInFlight)); n != 1 {
		t.Errorf("too_many_in_flight = %v, want 1", n)
	}
}
