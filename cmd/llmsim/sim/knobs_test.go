package sim_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
)

func TestTimingKnobsRejectBadValues(t *testing.T) {
	srv := startServer(t, sim.Options{})
	for _, c := range []struct{ header, value string }{
		{sim.HeaderTTFT, "fast"},
		{sim.HeaderTTFT, "-1ms"},
		{sim.HeaderTTFT, "61s"},
		{sim.HeaderTTFT, "100"}, // a duration needs a unit
		{sim.HeaderTokenDelay, "10.5s"},
		{sim.HeaderTokenDelay, "-5ms"},
		{sim.HeaderTokenDelay, ""},
		{sim.HeaderUsageFormat, "double"},
		{sim.HeaderUsageFormat, ""},
		{sim.HeaderUsageFormat, "6.0"},
	} {
		t.Run(c.header+"="+c.value, func(t *testing.T) {
			resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m"}`, c.header, c.value)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			checkOpenAIError(t, decodeJSON(t, readAll(t, resp.Body)), c.header)
		})
	}
}

func TestUnknownKnobListsNewKnobs(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m"}`, "x-llmsim-ttfb", "1s")
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	body := string(readAll(t, resp.Body))
	for _, name := range []string{sim.HeaderTTFT, sim.HeaderTokenDelay, sim.HeaderUsageFormat} {
		if !strings.Contains(body, name) {
			t.Errorf("unknown-knob error does not list %s: %s", name, body)
		}
	}
}

func TestTTFTKnob(t *testing.T) {
	srv := startServer(t, sim.Options{TimeToFirstToken: 30 * time.Second})
	// Overriding a long default with 0 answers at once.
	start := time.Now()
	resp := post(t, t.Context(), srv, "/v1/chat/completions", seedRequest, sim.HeaderTTFT, "0")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	readAll(t, resp.Body)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("ttft 0 answered after %v", d)
	}
	// A delay is waited for before the first byte.
	const ttft = 300 * time.Millisecond
	start = time.Now()
	resp = post(t, t.Context(), srv, "/v1/messages", `{"model":"m","stream":true}`, sim.HeaderTTFT, ttft.String())
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if d := time.Since(start); d < ttft {
		t.Fatalf("headers arrived after %v, before the %v ttft", d, ttft)
	}
	readAll(t, resp.Body)
}

func TestTokenDelayKnob(t *testing.T) {
	srv := startServer(t, sim.Options{TokenDelay: 30 * time.Second})
	start := time.Now()
	resp := post(t, t.Context(), srv, "/v1/chat/completions", `{"model":"m","stream":true}`, sim.HeaderTokenDelay, "0s")
	events, err := readSSE(t, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("token delay 0 streamed %d events in %v", len(events), d)
	}
	// Six tokens, five pauses between them; a non-streamed answer waits for them too.
	const delay = 60 * time.Millisecond
	for _, body := range []string{`{"model":"m","stream":true}`, `{"model":"m"}`} {
		start = time.Now()
		resp = post(t, t.Context(), srv, "/v1/responses", body, sim.HeaderTokenDelay, delay.String())
		readAll(t, resp.Body)
		if d := time.Since(start); d < 5*delay {
			t.Fatalf("%s: six tokens %v apart took only %v", body, delay, d)
		}
	}
}

// usageCounts collects every token count found in usage objects of a decoded JSON value.
func usageCounts(v any, inUsage bool, out *[]any) {
	switch v := v.(type) {
	case map[string]any:
		for key, e := range v {
			if inUsage && strings.HasSuffix(key, "_tokens") {
				*out = append(*out, e)
				continue
			}
			usageCounts(e, inUsage || key == "usage", out)
		}
	case []any:
		for _, e := range v {
			usageCounts(e, inUsage, out)
		}
	}
}

func TestUsageFormatKnob(t *testing.T) {
	srv := startServer(t, sim.Options{})
	apis := []struct {
		path string
		api  llmapi.Format
	}{
		{"/v1/chat/completions", llmapi.ChatCompletions},
		{"/v1/completions", llmapi.Completions},
		{"/v1/responses", llmapi.Responses},
		{"/v1/messages", llmapi.AnthropicMessages},
	}
	for _, format := range []string{"int", "float", "string", " Float "} {
		for _, a := range apis {
			for _, stream := range []bool{false, true} {
				name := strings.TrimSpace(format) + a.path
				if stream {
					name += "/stream"
				}
				t.Run(name, func(t *testing.T) {
					body := `{"model":"qwen3"}`
					if stream {
						body = `{"model":"qwen3","stream":true,"stream_options":{"include_usage":true}}`
					}
					resp := post(t, t.Context(), srv, a.path, body, sim.HeaderUsageFormat, format)
					if resp.StatusCode != 200 {
						t.Fatalf("status %d", resp.StatusCode)
					}
					raw := readAll(t, resp.Body)
					var docs [][]byte
					var usage llmapi.Usage
					if stream {
						events, err := readSSE(t, bytes.NewReader(raw))
						if err != nil {
							t.Fatal(err)
						}
						for _, e := range events {
							if e.data != "[DONE]" {
								docs = append(docs, []byte(e.data))
							}
						}
						s := llmapi.NewStream(a.api, 0)
						if err := s.Write(raw); err != nil || !s.Done() {
							t.Fatalf("stream not parsed to the end: %v", err)
						}
						usage = s.Usage()
					} else {
						docs = [][]byte{raw}
						var err error
						if usage, err = a.api.UsageFromJSON(raw); err != nil {
							t.Fatal(err)
						}
					}
					var counts []any
					for _, doc := range docs {
						dec := json.NewDecoder(bytes.NewReader(doc))
						dec.UseNumber()
						var v any
						if err := dec.Decode(&v); err != nil {
							t.Fatal(err)
						}
						usageCounts(v, false, &counts)
					}
					if len(counts) < 2 {
						t.Fatalf("found only %d token counts in %s", len(counts), raw)
					}
					for _, c := range counts {
						var ok bool
						switch strings.TrimSpace(strings.ToLower(format)) {
						case "int":
							n, isNum := c.(json.Number)
							ok = isNum && !strings.ContainsAny(string(n), ".eE")
						case "float":
							n, isNum := c.(json.Number)
							ok = isNum && strings.HasSuffix(string(n), ".0")
						case "string":
							s, isStr := c.(string)
							ok = isStr && s != "" && strings.Trim(s, "0123456789") == ""
						}
						if !ok {
							t.Fatalf("count %#v is not in %s format; body:\n%s", c, format, raw)
						}
					}
					// Whatever the spelling, the gateway's parser reads the seed's 6 + 6 tokens.
					if usage.InputTokens != 6 || usage.OutputTokens != 6 || usage.TotalTokens != 12 {
						t.Fatalf("llmapi reads usage %+v, want 6 + 6 = 12", usage)
					}
				})
			}
		}
	}
}
