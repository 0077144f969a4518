//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// backendRequestsStat counts the requests Envoy sent to the seed policy's only backend.
const backendRequestsStat = "cluster.backend_sim.upstream_rq_total"

// TestSmugglingCaseVariantKeys: a body whose keys differ from "model", "stream",
// "stream_options" or "include_usage" only in letter case is rejected with a JSON 400 before it
// reaches a backend. Case-insensitive decoders (llmsim's encoding/json among them) would honour
// such a key, so the backend would stream or serve another model while the gateway meters
// what it read.
func TestSmugglingCaseVariantKeys(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	const messages = `"messages":[{"role":"user","content":"Hello from Alice!"}]`
	backendCalls := func() int { return s.envoyStat(t, backendRequestsStat) }

	// The signal works: an ordinary request does reach the backend and moves the counter.
	before := backendCalls()
	if r := mustDo(t, "POST", s.url("/v1/chat/completions"), map[string]string{"x-user-id": "smuggler-control"},
		chatBody("qwen3")); r.status != 200 {
		t.Fatalf("ordinary request: %d %s", r.status, r.body)
	}
	testutil.Eventually(t, 10*time.Second, "backend request counted", func() error {
		if got := backendCalls(); got != before+1 {
			return fmt.Errorf("%s went from %d to %d, want +1", backendRequestsStat, before, got)
		}
		return nil
	})

	cases := []struct {
		name, path, body, param string
	}{
		{"Stream", "/v1/chat/completions", `{"model":"qwen3","Stream":true,` + messages + `}`, "stream"},
		{"long s stream", "/v1/chat/completions", `{"model":"qwen3","ſtream":true,` + messages + `}`, "stream"},
		{"escaped long s stream", "/v1/chat/completions", `{"model":"qwen3","\u017ftream":true,` + messages + `}`, "stream"},
		{"Include_Usage", "/v1/chat/completions",
			`{"model":"qwen3","stream":true,"stream_options":{"include_usage":true,"Include_Usage":false},` + messages + `}`,
			"stream_options.include_usage"},
		{"Stream_Options", "/v1/chat/completions",
			`{"model":"qwen3","stream":true,"Stream_Options":{"include_usage":false},` + messages + `}`, "stream_options"},
		{"MODEL", "/v1/chat/completions", `{"model":"qwen3","MODEL":"gpt-4",` + messages + `}`, "model"},
		{"Model on responses", "/v1/responses", `{"Model":"gpt-4","model":"qwen3","input":"hi"}`, "model"},
		{"Stream on messages", "/v1/messages", `{"model":"qwen3","max_tokens":16,"STREAM":true,` + messages + `}`, "stream"},
	}
	before = backendCalls()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustDo(t, "POST", s.url(c.path), map[string]string{"x-user-id": "smuggler"}, c.body)
			if r.status != 400 {
				t.Fatalf("status %d, want 400: %s", r.status, r.body)
			}
			if ct := r.header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("content-type %q, want JSON", ct)
			}
			e, ok := r.json(t)["error"].(map[string]any)
			if !ok || e["type"] != "invalid_request_error" {
				t.Fatalf("400 body: %s", r.body)
			}
			if !strings.Contains(fmt.Sprint(e["message"]), "case variant") {
				t.Errorf("message does not say the key is a case variant: %s", r.body)
			}
			if p, present := e["param"]; present && p != nil && p != c.param {
				t.Errorf("param %v, want %q", p, c.param)
			}
			if h := r.header.Get("x-llmsim-backend"); h != "" {
				t.Errorf("answered by backend %q", h)
			}
		})
	}
	// A rejected request never reached the backend. The control above proves the counter moves
	// by the time the client has its answer, so an unchanged counter now is meaningful.
	if got := backendCalls(); got != before {
		t.Errorf("%s went from %d to %d while sending only rejected requests", backendRequestsStat, before, got)
	}
	s.assertServingModel(t, "qwen3")
}

// usageFormatRequest is one way of asking for 6 + 6 tokens of qwen3.
type usageFormatRequest struct {
	name, path, body string
}

var usageFormatRequests = []usageFormatRequest{
	{"chat", "/v1/chat/completions", chatBody("qwen3")},
	{"chat-stream", "/v1/chat/completions",
		`{"model":"qwen3","stream":true,"messages":[{"role":"user","content":"Hello from Alice!"}]}`},
	{"responses-stream", "/v1/responses", `{"model":"qwen3","stream":true,"input":"Hello from Alice!"}`},
	{"messages", "/v1/messages", `{"model":"qwen3","max_tokens":16,"messages":[{"role":"user","content":"Hello from Alice!"}]}`},
}

// TestUsageNumberFormats: a backend writing its token counts as floats (6.0) or strings ("6")
// is charged exactly as one writing integers: on the seed policy's 50 qwen3 tokens per hour at
// 12 tokens a request, requests 1–5 pass and the 6th gets a 429, in JSON and streamed answers.
func TestUsageNumberFormats(t *testing.T) {
	s := quotaStack(t, seedPolicy)
	want := []int{200, 200, 200, 200, 200, 429}
	for _, format := range []string{"int", "float", "string"} {
		for _, req := range usageFormatRequests {
			t.Run(format+"/"+req.name, func(t *testing.T) {
				user := "usage-" + format + "-" + req.name
				header := map[string]string{"x-user-id": user, "x-llmsim-usage-format": format}
				statuses, first := sendWithHeaders(t, s, req.path, req.body, header, len(want))
				if fmt.Sprint(statuses) != fmt.Sprint(want) {
					t.Fatalf("statuses %v, want %v", statuses, want)
				}
				// The knob reached the backend: the client sees the counts as it wrote them.
				spelled := map[string]string{"int": `_tokens":12`, "float": `_tokens":12.0`, "string": `_tokens":"12"`}[format]
				if req.name == "chat" && !strings.Contains(string(first.body), spelled) {
					t.Errorf("first answer does not spell total tokens as %s: %s", spelled, first.body)
				}
			})
		}
	}
}

// sendWithHeaders is sendN for any path, body and headers: it sends n requests one after
// another and, like sendN, waits after each admitted one until its charge has been answered.
// It returns the statuses and the first response.
func sendWithHeaders(t testing.TB, s *stack, path, body string, header map[string]string, n int) ([]int, response) {
	t.Helper()
	var statuses []int
	var first response
	for i := range n {
		before := s.rateLimitCalls(t)
		r := mustDo(t, "POST", s.url(path), header, body)
		if i == 0 {
			first = r
		}
		statuses = append(statuses, r.status)
		if r.status == 200 && s.charges {
			s.awaitRateLimitCalls(t, before+2)
		}
	}
	return statuses, first
}
