package extproc

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBrokenOffAnswerCountsAsUsageMissing: when a successful answer breaks off before its usage
// (the backend dies mid-stream, or the client leaves), nothing can be charged any more; the gap
// is logged and counted as missing usage, while a request that ends before any answer started
// costs the backend nothing and is only cancelled.
func TestBrokenOffAnswerCountsAsUsageMissing(t *testing.T) {
	cases := []struct {
		name        string
		answer      func(t *testing.T, c *call)
		wantMissing float64
	}{
		{"stream broken off after its first event", func(t *testing.T, c *call) {
			c.send(responseHeaders(false, ":status", "200", "content-type", "text/event-stream"))
			events := bytes.SplitAfter(readTestdata(t, "chat_stream.sse"), []byte("\n\n"))
			c.send(responseBody(events[0], false))
		}, 1},
		{"JSON answer broken off before its body", func(t *testing.T, c *call) {
			c.send(responseHeaders(false, ":status", "200", "content-type", "application/json"))
		}, 1},
		{"client gone before any answer", func(t *testing.T, c *call) {}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig(t))
			c := h.open(t)
			sendChat(t, c, `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`)
			tc.answer(t, c)
			c.cancel()
			waitFor(t, "the stream to be released", func() bool {
				return testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(outcomeCancelled)) == 1
			})
			if n := testutil.ToFloat64(h.srv.metrics.usageMissing.WithLabelValues("qwen3")); n != tc.wantMissing {
				t.Errorf("usage missing = %v, want %v", n, tc.wantMissing)
			}
			logged := strings.Contains(h.logs.String(), "response ended before its usage")
			if logged != (tc.wantMissing > 0) {
				t.Errorf("gap logged: %v, want %v:\n%s", logged, tc.wantMissing > 0, h.logs.String())
			}
		})
	}
}
