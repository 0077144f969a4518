package extproc

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// chargedConfig is testConfig with two quotas on qwen3 charged to fake.
func chargedConfig(t testing.TB, addr string) *Config {
	cfg := testConfig(t)
	cfg.RateLimitAddress = addr
	cfg.RateLimitDomain = "tollgate"
	cfg.Quotas = map[string][]Quota{"qwen3": {
		{Name: "hourly", Cost: "llm_total_token", SubjectKey: "user", Entries: []rlsclient.Entry{{Key: "model", Value: "qwen3"}, {Key: "quota", Value: "hourly"}}},
		{Name: "weighted", Cost: "custom_cost", SubjectKey: "user", Entries: []rlsclient.Entry{{Key: "model", Value: "qwen3"}, {Key: "quota", Value: "weighted"}}},
	}}
	return cfg
}

func waitForCharges(t testing.TB, fake *rlsclienttest.Fake, want ...string) {
	t.Helper()
	sort.Strings(want)
	tgtest.Eventually(t, 5*time.Second, "the charges", func() error {
		if got := fake.Charges(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("charges %q, want %q", got, want)
		}
		return nil
	})
}

// TestCompletedResponseIsChargedItsUsage: a JSON answer is charged once, per quota, the costs
// of the usage its backend reported, to the counter model → quota → user.
func TestCompletedResponseIsChargedItsUsage(t *testing.T) {
	fake := rlsclienttest.Start(t)
	h := newHarness(t, chargedConfig(t, fake.Addr))
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3","messages":[{"role":"user","content":"Hello"}]}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	resp := c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if basis := metadataFields(resp)[metadataUsageBasis]; basis != basisUsage {
		t.Errorf("usage_basis %v, want %s", basis, basisUsage)
	}
	// 6 input + 6 output: total 12, custom 6*2+6 = 18.
	waitForCharges(t, fake, "model=qwen3,quota=hourly,user=alice +12", "model=qwen3,quota=weighted,user=alice +18")
	// One call carries both descriptors; it is counted once answered.
	tgtest.Eventually(t, 10*time.Second, "the charge counted", func() bool {
		return testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisUsage, chargeSent)) == 1
	})
}

// TestModelWithoutQuotasIsNotCharged: gpt-4 has no quota, so nothing is sent.
func TestModelWithoutQuotasIsNotCharged(t *testing.T) {
	fake := rlsclienttest.Start(t)
	h := newHarness(t, chargedConfig(t, fake.Addr))
	c := h.open(t)
	sendChat(t, c, `{"model":"gpt-4"}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if err := h.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fake.Charges(); len(got) != 0 {
		t.Fatalf("charged %q for a model without quotas", got)
	}
}

// TestBrokenOffStreamIsCharged: a client that leaves mid-stream is charged what it was served:
// the usage when the final usage chunk had passed, otherwise an estimate from the prompt and
// the output events. A failed upstream answer is not charged at all.
func TestBrokenOffStreamIsCharged(t *testing.T) {
	events := bytes.SplitAfter(readTestdata(t, "chat_stream.sse"), []byte("\n\n"))
	// events: 0 role, 1 "Hello", 2 "! How can I help?", 3 finish, 4 usage (10+7), 5 [DONE].
	const prompt = `{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Tell me a story about a gateway"}]}`
	cases := []struct {
		name  string
		sent  int // events delivered before the client leaves
		total string
	}{
		// The upper bound: one token per byte of the prompt's strings (the model excluded) plus
		// the framing; nothing served yet counts the request's whole output ceiling; output
		// served counts one token per byte of its text, rounded up to a step (22 bytes: one).
		{"after the usage chunk", 5, "17"},
		{"before any output", 1, fmt.Sprint(int64(len("user")+len("Tell me a story about a gateway")+promptFraming) + policies.DefaultMaxOutputTokens)},
		{"after two output events", 3, fmt.Sprint(len("user") + len("Tell me a story about a gateway") + promptFraming + brokenOffStep)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			h := newHarness(t, chargedConfig(t, fake.Addr))
			c := h.open(t)
			sendChat(t, c, prompt)
			c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
			for _, ev := range events[:tc.sent] {
				c.send(responseBody(ev, false))
			}
			c.cancel()
			tgtest.Eventually(t, 10*time.Second, "the charge", func() bool { return len(fake.Charges()) == 2 })
			got := fake.Charges()
			if !strings.HasPrefix(got[0], "model=qwen3,quota=hourly,user=alice +") || !strings.HasSuffix(got[0], " +"+tc.total) {
				t.Errorf("hourly charge %q, want total %s", got[0], tc.total)
			}
			if n := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeCancelled)); n != 1 {
				t.Errorf("cancelled outcomes = %v, want 1", n)
			}
		})
	}

	t.Run("upstream error", func(t *testing.T) {
		fake := rlsclienttest.Start(t)
		h := newHarness(t, chargedConfig(t, fake.Addr))
		c := h.open(t)
		sendChat(t, c, prompt)
		c.send(responseHeaders(false, ":status", "500", "content-type", "application/json"))
		c.cancel()
		tgtest.Eventually(t, 10*time.Second, "the stream to end", func() bool { return testutil.ToFloat64(h.srv.metrics.activeStreams) == 0 })
		if err := h.srv.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := fake.Charges(); len(got) != 0 {
			t.Fatalf("a failed answer was charged: %q", got)
		}
	})
}

// TestUnreachableRateLimitChargeIsRetriedThenCounted: a charge the service never answers is
// tried a few times, then logged and counted as failed, and Close still returns.
func TestUnreachableRateLimitChargeIsRetriedThenCounted(t *testing.T) {
	cfg := chargedConfig(t, rlsclienttest.DeadAddr(t))
	cfg.QuotaFailOpen = true // the request is admitted unchecked; its charge fails too
	h := newHarness(t, cfg)
	c := h.open(t)
	sendChat(t, c, `{"model":"qwen3"}`)
	c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
	c.send(responseBody(readTestdata(t, "chat_completion.json"), true))
	c.end()
	if err := h.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisUsage, chargeFailed)); n != 1 {
		t.Errorf("failed charges = %v, want 1", n)
	}
	if !strings.Contains(h.logs.String(), "quota charge not delivered") {
		t.Errorf("the lost charge is not logged:\n%s", h.logs.String())
	}
}

// TestBrokenOffBeforeOutputIsChargedTheCeiling: a request whose answer had not started (or
// whose JSON body never arrived) when the client left is charged its prompt's upper bound and
// its whole output ceiling: the backend had the prompt, and may produce the answer all the same.
func TestBrokenOffBeforeOutputIsChargedTheCeiling(t *testing.T) {
	const prompt = `{"model":"qwen3","max_tokens":300,"messages":[{"role":"user","content":"Summarise this document"}]}`
	input := int64(len("user") + len("Summarise this document") + promptFraming)
	want, weighted := input+300, 2*input+300 // custom_cost is input_tokens * 2 + output_tokens
	for name, answer := range map[string]func(c *call){
		"client gone before any answer": func(c *call) {},
		"JSON answer broken off before its body": func(c *call) {
			c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			h := newHarness(t, chargedConfig(t, fake.Addr))
			c := h.open(t)
			sendChat(t, c, prompt)
			answer(c)
			c.cancel()
			waitForCharges(t, fake,
				fmt.Sprintf("model=qwen3,quota=hourly,user=alice +%d", want),
				fmt.Sprintf("model=qwen3,quota=weighted,user=alice +%d", weighted))
			tgtest.Eventually(t, 10*time.Second, "the estimated charge counted", func() bool {
				return testutil.ToFloat64(h.srv.metrics.charges.WithLabelValues(basisEstimate, chargeSent)) == 1
			})
			if !strings.Contains(h.logs.String(), "charging what was served") {
				t.Errorf("the estimate is not logged:\n%s", h.logs.String())
			}
		})
	}
}
