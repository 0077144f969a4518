package llmapi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestForPath(t *testing.T) {
	tests := map[string]Format{
		"/v1/chat/completions":              ChatCompletions,
		"/v1/chat/completions?stream=true":  ChatCompletions,
		"/v1/completions":                   Completions,
		"/v1/responses":                     Responses,
		"/v1/responses?x=1#frag":            Responses,
		"/v1/messages":                      AnthropicMessages,
		"/anthropic/v1/messages":            AnthropicMessages,
		"/anthropic/v1/messages?beta=true":  AnthropicMessages,
		"/v1/messages/count_tokens":         nil,
		"/v1/chat/completions/":             nil,
		"/v1/models":                        nil,
		"/V1/CHAT/COMPLETIONS":              nil,
		"":                                  nil,
		"?":                                 nil,
		"/v1/embeddings":                    nil,
		"/prefix/v1/chat/completions":       nil,
		"/v1/responses/resp_123/input_item": nil,
	}
	for path, want := range tests {
		if got := ForPath(path); got != want {
			t.Errorf("ForPath(%q) = %s, want %s", path, formatName(got), formatName(want))
		}
	}
	for _, path := range Paths() {
		if ForPath(path) == nil {
			t.Errorf("Paths lists %q, which ForPath does not know", path)
		}
	}
	// Formats lists every format of the table exactly once.
	listed := map[Format]int{}
	for _, f := range allFormats() {
		listed[f]++
	}
	for _, row := range formatsByPath {
		if listed[row.format] != 1 {
			t.Errorf("allFormats() lists %s %d times, want once", row.format.Name(), listed[row.format])
		}
	}
	if len(allFormats()) != len(listed) {
		t.Errorf("allFormats() has %d entries for %d formats", len(allFormats()), len(listed))
	}
	for _, f := range []Format{ChatCompletions, Completions, Responses, AnthropicMessages} {
		if listed[f] != 1 {
			t.Errorf("allFormats() lists %s %d times, want once", f.Name(), listed[f])
		}
	}
}

// formatName names a format in test messages; nil is no format.
func formatName(f Format) string {
	if f == nil {
		return "<none>"
	}
	return f.Name()
}

func TestFromJSONFixtures(t *testing.T) {
	tests := []struct {
		file   string
		format Format
		want   Usage
	}{
		{"chat.json", ChatCompletions, Usage{InputTokens: 1117, OutputTokens: 46, TotalTokens: 1163,
			CachedInputTokens: 1024, ReasoningTokens: 12, Known: true}},
		{"chat_no_usage.json", ChatCompletions, Usage{}},
		{"completions.json", Completions, Usage{InputTokens: 5, OutputTokens: 7, TotalTokens: 12, Known: true}},
		{"responses.json", Responses, Usage{InputTokens: 328, OutputTokens: 52, TotalTokens: 380,
			CachedInputTokens: 128, ReasoningTokens: 32, Known: true}},
		{"anthropic.json", AnthropicMessages, Usage{InputTokens: 2095 + 1800, OutputTokens: 503,
			TotalTokens: 2095 + 1800 + 503, CachedInputTokens: 1800, Known: true}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := tt.format.UsageFromJSON(readFixture(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("FromJSON = %+v\nwant        %+v", got, tt.want)
			}
		})
	}
}

func TestFromJSON(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		body   string
		want   Usage
	}{
		{"total computed", ChatCompletions, `{"usage":{"prompt_tokens":3,"completion_tokens":4}}`,
			Usage{InputTokens: 3, OutputTokens: 4, TotalTokens: 7, Known: true}},
		{"total reported wins", ChatCompletions, `{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":10}}`,
			Usage{InputTokens: 3, OutputTokens: 4, TotalTokens: 10, Known: true}},
		{"usage null", ChatCompletions, `{"usage":null}`, Usage{}},
		{"usage not an object", ChatCompletions, `{"usage":"n/a"}`, Usage{}},
		{"empty usage", ChatCompletions, `{"usage":{}}`, Usage{Known: true}},
		{"nested usage ignored", ChatCompletions, `{"choices":[{"usage":{"prompt_tokens":9}}]}`, Usage{}},
		{"odd counters ignored", ChatCompletions,
			`{"usage":{"prompt_tokens":-5,"completion_tokens":2.5,"total_tokens":"seven","prompt_tokens_details":null}}`,
			Usage{Known: true}},
		{"overflow ignored", ChatCompletions, `{"usage":{"prompt_tokens":99999999999999999999,"completion_tokens":1}}`,
			Usage{OutputTokens: 1, TotalTokens: 1, Known: true}},
		{"max int64", ChatCompletions, `{"usage":{"total_tokens":9223372036854775807}}`,
			Usage{TotalTokens: 9223372036854775807, Known: true}},
		{"escaped keys", ChatCompletions, `{"us\u0061ge":{"prompt_t\u006fkens":8}}`,
			Usage{InputTokens: 8, TotalTokens: 8, Known: true}},
		{"anthropic cache creation", AnthropicMessages,
			`{"usage":{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":5}}`,
			Usage{InputTokens: 60, OutputTokens: 5, TotalTokens: 65, CachedInputTokens: 30,
				CacheCreationInputTokens: 20, Known: true}},
		{"anthropic ignores total", AnthropicMessages, `{"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":99}}`,
			Usage{InputTokens: 1, OutputTokens: 2, TotalTokens: 3, Known: true}},
		{"openai ignores anthropic cache fields", ChatCompletions,
			`{"usage":{"prompt_tokens":10,"cache_read_input_tokens":4,"completion_tokens":1}}`,
			Usage{InputTokens: 10, OutputTokens: 1, TotalTokens: 11, Known: true}},
		{"last duplicate wins", ChatCompletions, `{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}`,
			Usage{InputTokens: 2, TotalTokens: 2, Known: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.format.UsageFromJSON([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("FromJSON(%s) = %+v, want %+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestFromJSONErrors(t *testing.T) {
	for _, body := range []string{
		``, ` `, `[]`, `"usage"`, `null`, `{"usage":{"prompt_tokens":1}`, `{"usage":{"prompt_tokens":1}}}`,
		`{"usage":{"prompt_tokens":1,}}`, `{"id":"x",`, `{"usage":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
		strings.Repeat("[", 1_000_000),
	} {
		if u, err := ChatCompletions.UsageFromJSON([]byte(body)); err == nil {
			t.Errorf("FromJSON(%.40q) = %+v, want an error", body, u)
		}
	}
}

// tokenCountForms maps spellings of a prompt_tokens value to the count they mean; -1 means the
// value must be treated as not set.
var tokenCountForms = []struct {
	value string
	want  int64
}{
	{`6`, 6}, {`0`, 0}, {`6.0`, 6}, {`6.00`, 6}, {`6e0`, 6}, {`6E+1`, 60}, {`6e+01`, 60}, {`1.2e1`, 12},
	{`120e-1`, 12}, {`0.0`, 0}, {`0e5`, 0}, {`0.10e1`, 1}, {`1e2`, 100}, {`100.0e-2`, 1},
	{`9223372036854775807.0`, 9223372036854775807}, {`9.223372036854775807e18`, 9223372036854775807},
	{`9007199254740993.0`, 9007199254740993}, {`0e99999999999999999999`, 0},
	{`"6"`, 6}, {`"0"`, 0}, {`"9223372036854775807"`, 9223372036854775807},
	{`6.5`, -1}, {`1e-1`, -1}, {`1.25e1`, -1}, {`-6`, -1}, {`-6.0`, -1}, {`-0`, -1},
	{`9223372036854775808`, -1}, {`9.3e18`, -1}, {`1e19`, -1}, {`1e99999999999999999999`, -1},
	{`1e-99999999999999999999`, -1}, {`"6.0"`, -1}, {`" 6"`, -1}, {`"6 "`, -1}, {`"+6"`, -1},
	{`"-6"`, -1}, {`"06"`, -1}, {`""`, -1}, {`"six"`, -1}, {`"\u0036"`, -1},
	{`"9223372036854775808"`, -1}, {`null`, -1}, {`true`, -1}, {`[6]`, -1}, {`{"n":6}`, -1},
}

func TestFromJSONTokenCountForms(t *testing.T) {
	for _, tt := range tokenCountForms {
		body := `{"usage":{"prompt_tokens":` + tt.value + `,"completion_tokens":"4"}}`
		got, err := ChatCompletions.UsageFromJSON([]byte(body))
		if err != nil {
			t.Fatalf("FromJSON(%s): %v", body, err)
		}
		want := Usage{OutputTokens: 4, TotalTokens: 4, Known: true}
		if tt.want >= 0 {
			want.InputTokens = tt.want
			want.TotalTokens = tt.want + 4
		}
		if got != want {
			t.Errorf("FromJSON(%s) = %+v, want %+v", body, got, want)
		}
	}
}

func TestFromJSONFloatAndStringUsagePerAPI(t *testing.T) {
	tests := []struct {
		format Format
		body   string
		want   Usage
	}{
		{ChatCompletions, `{"usage":{"prompt_tokens":6.0,"completion_tokens":6.0,"total_tokens":12.0,` +
			`"prompt_tokens_details":{"cached_tokens":2.0},"completion_tokens_details":{"reasoning_tokens":"1"}}}`,
			Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, CachedInputTokens: 2, ReasoningTokens: 1, Known: true}},
		{Completions, `{"usage":{"prompt_tokens":"6","completion_tokens":"6","total_tokens":"12"}}`,
			Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, Known: true}},
		{Responses, `{"usage":{"input_tokens":6e0,"output_tokens":"6","total_tokens":1.2e1}}`,
			Usage{InputTokens: 6, OutputTokens: 6, TotalTokens: 12, Known: true}},
		{AnthropicMessages, `{"usage":{"input_tokens":"6","cache_read_input_tokens":2.0,"cache_creation_input_tokens":"0","output_tokens":6.0}}`,
			Usage{InputTokens: 8, OutputTokens: 6, TotalTokens: 14, CachedInputTokens: 2, Known: true}},
	}
	for _, tt := range tests {
		got, err := tt.format.UsageFromJSON([]byte(tt.body))
		if err != nil {
			t.Fatalf("FromJSON(%s, %s): %v", tt.format.Name(), tt.body, err)
		}
		if got != tt.want {
			t.Errorf("FromJSON(%s, %s) = %+v, want %+v", tt.format.Name(), tt.body, got, tt.want)
		}
	}
}

func TestStreamTokenCountForms(t *testing.T) {
	for _, tt := range tokenCountForms {
		wantIn := tt.want
		if wantIn < 0 {
			wantIn = 0
		}
		streams := []struct {
			format Format
			data   string
			want   Usage
		}{
			{ChatCompletions, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n" +
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":" + tt.value + ",\"completion_tokens\":6.0}}\n\ndata: [DONE]\n\n",
				Usage{InputTokens: wantIn, OutputTokens: 6, TotalTokens: wantIn + 6, Known: true}},
			{Responses, "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":" +
				"{\"input_tokens\":" + tt.value + ",\"output_tokens\":\"6\"}}}\n\n",
				Usage{InputTokens: wantIn, OutputTokens: 6, TotalTokens: wantIn + 6, Known: true}},
			{AnthropicMessages, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":" +
				"{\"input_tokens\":" + tt.value + ",\"output_tokens\":1}}}\n\n" +
				"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"6\"}}\n\n" +
				"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
				Usage{InputTokens: wantIn, OutputTokens: 6, TotalTokens: wantIn + 6, Known: true}},
		}
		for _, st := range streams {
			got := runStream(st.format, 0, []byte(st.data))
			if got.Usage != st.want || !got.Done || got.SkippedEvents != 0 {
				t.Errorf("%s stream with input tokens %s: %+v, want usage %+v", st.format.Name(), tt.value, got, st.want)
			}
		}
	}
}

func TestTokenCountAllocations(t *testing.T) {
	body := []byte(`{"usage":{"prompt_tokens":6.0,"completion_tokens":"6","total_tokens":1.2e1}}`)
	allocs := testing.AllocsPerRun(100, func() {
		if u, err := ChatCompletions.UsageFromJSON(body); err != nil || u.TotalTokens != 12 {
			t.Fatalf("%+v %v", u, err)
		}
	})
	if allocs != 0 {
		t.Errorf("FromJSON with float and string counts allocates %v times, want 0", allocs)
	}
}
