package llmapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Request
	}{
		{"model only", `{"model":"gpt-4"}`, Request{Model: "gpt-4", HasModel: true}},
		{"no model", `{"messages":[]}`, Request{}},
		{"empty object", `{}`, Request{}},
		{"empty model string", `{"model":""}`, Request{HasModel: true}},
		{"stream true", `{"model":"m","stream":true}`, Request{Model: "m", HasModel: true, Stream: true}},
		{"stream false", `{"stream":false,"model":"m"}`, Request{Model: "m", HasModel: true}},
		{"stream null", `{"stream":null}`, Request{}},
		{"include usage", `{"stream":true,"stream_options":{"include_usage":true}}`,
			Request{Stream: true, IncludeUsage: true}},
		{"include usage false", `{"stream_options":{"include_usage":false}}`, Request{}},
		{"include usage null", `{"stream_options":{"include_usage":null}}`, Request{}},
		{"stream options null", `{"stream_options":null}`, Request{}},
		{"stream options other keys", `{"stream_options":{"x":[1,{"y":2}],"include_usage":true,"z":"q"}}`,
			Request{IncludeUsage: true, TextBytes: 1}},
		{"nested model keys ignored", `{"metadata":{"model":"evil","stream":"x"},"model":"good"}`,
			Request{Model: "good", HasModel: true, TextBytes: 5}},
		{"escaped key", `{"mod\u0065l":"m"}`, Request{Model: "m", HasModel: true}},
		{"escaped value", `{"model":"a\"b\\c\u00e9\ud83d\ude00"}`, Request{Model: "a\"b\\c\u00e9\U0001F600", HasModel: true}},
		{"unicode model", `{"model":"qwen3-модель"}`, Request{Model: "qwen3-модель", HasModel: true}},
		{"whitespace everywhere", " \t\r\n{ \"model\" \n: \"m\" , \"stream\"\t:\ttrue ,\"stream_options\" : { \"include_usage\" : true } } \n",
			Request{Model: "m", HasModel: true, Stream: true, IncludeUsage: true}},
		{"all value kinds", `{"a":-1.5e+3,"b":0,"c":[true,false,null,"s",{}],"d":{"e":[[]]},"model":"m"}`,
			Request{Model: "m", HasModel: true, TextBytes: 1}},
		{"unrelated keys in any case", `{"model":"m","messages":[],"Temperature":0.5,"MESSAGES":1,"Models":"x","streams":true}`,
			Request{Model: "m", HasModel: true, TextBytes: 1}},
		{"case variant nested deeper", `{"metadata":{"Model":"x","STREAM":true},"stream_options":{"x":{"Include_Usage":1}}}`,
			Request{TextBytes: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest([]byte(tt.body), 0)
			if err != nil {
				t.Fatalf("ParseRequest(%s): %v", tt.body, err)
			}
			if got != tt.want {
				t.Fatalf("ParseRequest(%s) = %+v, want %+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantParam string
		wantMsg   string // substring
	}{
		{"empty", ``, "", "empty"},
		{"whitespace only", " \n", "", "empty"},
		{"array", `[{"model":"m"}]`, "", "must be a JSON object"},
		{"string", `"model"`, "", "must be a JSON object"},
		{"truncated", `{"model":"m","messages":[{"role":"user"`, "", "not valid JSON"},
		{"truncated in string", `{"model":"m`, "", "not valid JSON"},
		{"truncated after colon", `{"model":`, "", "not valid JSON"},
		{"trailing comma", `{"model":"m",}`, "", "not valid JSON"},
		{"trailing garbage", `{"model":"m"} x`, "", "unexpected data"},
		{"two objects", `{"model":"m"}{}`, "", "unexpected data"},
		{"single quotes", `{'model':'m'}`, "", "not valid JSON"},
		{"bad literal", `{"a":tru}`, "", "not valid JSON"},
		{"bad number", `{"a":01}`, "", "not valid JSON"},
		{"bad number dot", `{"a":1.}`, "", "not valid JSON"},
		{"bad escape", `{"a":"\x"}`, "", "not valid JSON"},
		{"control char", "{\"a\":\"\x01\"}", "", "not valid JSON"},
		{"missing colon", `{"a" 1}`, "", "not valid JSON"},
		{"mismatched close", `{"a":[1}`, "", "not valid JSON"},
		{"model number", `{"model":4}`, "model", "must be a string"},
		{"model null", `{"model":null}`, "model", "must be a string"},
		{"model object", `{"model":{"name":"m"}}`, "model", "must be a string"},
		{"model bad utf8", "{\"model\":\"m\xff\"}", "model", "UTF-8"},
		{"duplicate model", `{"model":"a","model":"b"}`, "model", "more than one"},
		{"duplicate escaped model", `{"model":"a","mod\u0065l":"b"}`, "model", "more than one"},
		{"stream string", `{"stream":"true"}`, "stream", "must be a boolean"},
		{"stream number", `{"stream":1}`, "stream", "must be a boolean"},
		{"duplicate stream", `{"stream":true,"stream":false}`, "stream", "more than one"},
		{"stream options array", `{"stream_options":[]}`, "stream_options", "must be an object"},
		{"include usage string", `{"stream_options":{"include_usage":"yes"}}`, "stream_options.include_usage", "must be a boolean"},
		{"duplicate include usage", `{"stream_options":{"include_usage":true,"include_usage":false}}`,
			"stream_options.include_usage", "more than one"},
		{"duplicate stream options", `{"stream_options":{},"stream_options":null}`, "stream_options", "more than one"},
		{"too deep", `{"a":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, "", "deeper than 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tt.body), 0)
			var reqErr *RequestError
			if !errors.As(err, &reqErr) {
				t.Fatalf("ParseRequest(%q) error = %v, want *RequestError", tt.body, err)
			}
			if reqErr.Param != tt.wantParam {
				t.Errorf("Param = %q, want %q", reqErr.Param, tt.wantParam)
			}
			if !strings.Contains(reqErr.Message, tt.wantMsg) {
				t.Errorf("Message = %q, want it to contain %q", reqErr.Message, tt.wantMsg)
			}
		})
	}
}

// TestParseRequestAgreesWithEncodingJSON checks validity decisions against the standard library
// for inputs the hand-written scanner could plausibly get wrong.
func TestParseRequestAgreesWithEncodingJSON(t *testing.T) {
	bodies := []string{
		`{"a":1e5}`, `{"a":1E-5}`, `{"a":-0}`, `{"a":-}`, `{"a":.5}`, `{"a":1e}`, `{"a":+1}`,
		`{"a":"\u12"}`, `{"a":"\uD800"}`, `{"a":"\/"}`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":{"b"}}`,
		`{"a":{,}}`, `{"a" : [ ] , "b" : { } }`, "{\"a\":\"\t\"}", `{"a":nul}`, `{"a":truex}`,
		`{"a":[1 2]}`, `{"a":{"b":1 "c":2}}`, `{"a":"x"`, `{"a":[{}]]}`, `{"a":[]}}`, `{1:2}`,
		`{"a":"\u00zz"}`, `{"a":0.0e0}`, `{"a":00}`, `{"a":-01}`, "{\"a\":1}\x00",
	}
	for _, body := range bodies {
		_, err := ParseRequest([]byte(body), 0)
		valid := json.Valid([]byte(body))
		if (err == nil) != valid {
			t.Errorf("ParseRequest(%q) error = %v, but json.Valid = %v", body, err, valid)
		}
	}
}

func TestParseRequestDepthLimit(t *testing.T) {
	nested := func(n int) []byte { // a top-level object holding n-1 more levels
		return []byte(`{"a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}`)
	}
	if _, err := ParseRequest(nested(10), 10); err != nil {
		t.Fatalf("10 levels under a limit of 10: %v", err)
	}
	if _, err := ParseRequest(nested(11), 10); err == nil {
		t.Fatal("11 levels under a limit of 10: no error")
	}
	objects := []byte(`{"stream_options":{"a":{"b":{}}}}`) // 4 levels of objects
	if _, err := ParseRequest(objects, 4); err != nil {
		t.Fatalf("4 object levels under a limit of 4: %v", err)
	}
	if _, err := ParseRequest(objects, 3); err == nil {
		t.Fatal("4 object levels under a limit of 3: no error")
	}
}

func TestParseRequestDepthBomb(t *testing.T) {
	const depth = 1_000_000
	for _, body := range [][]byte{
		bytes.Repeat([]byte("["), depth),
		append([]byte(`{"model":"m","x":`), bytes.Repeat([]byte(`{"a":`), depth)...),
		append([]byte(`{"x":`), bytes.Repeat([]byte("["), depth)...),
	} {
		_, err := ParseRequest(body, 64)
		var reqErr *RequestError
		if !errors.As(err, &reqErr) {
			t.Fatalf("depth bomb %q...: error = %v, want *RequestError", body[:20], err)
		}
		// ForceIncludeUsage has no depth limit of its own; it must still fail cleanly.
		if _, err := ForceIncludeUsage(body); err == nil {
			t.Fatalf("ForceIncludeUsage(depth bomb %q...): no error", body[:20])
		}
	}
}

func TestForceIncludeUsage(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"absent", `{"model":"m","stream":true}`,
			`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`},
		{"absent with whitespace", "{\n  \"model\": \"m\",\n  \"stream\": true\n}\n",
			"{\n  \"model\": \"m\",\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n"},
		{"empty object", `{}`, `{"stream_options":{"include_usage":true}}`},
		{"empty object with space", `{ }`, `{"stream_options":{"include_usage":true} }`},
		{"null options", `{"stream":true,"stream_options":null,"n":1}`,
			`{"stream":true,"stream_options":{"include_usage":true},"n":1}`},
		{"empty options", `{"stream_options":{}}`, `{"stream_options":{"include_usage":true}}`},
		{"options with other keys", `{"stream_options":{"continuous_usage_stats":true}}`,
			`{"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`},
		{"include false", `{"stream_options":{"a":1,"include_usage":false,"b":2}}`,
			`{"stream_options":{"a":1,"include_usage":true,"b":2}}`},
		{"include null", `{"stream_options":{"include_usage" : null}}`,
			`{"stream_options":{"include_usage" : true}}`},
		{"already true", `{"stream_options":{"include_usage":true}}`, `{"stream_options":{"include_usage":true}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ForceIncludeUsage([]byte(tt.body))
			if err != nil {
				t.Fatalf("ForceIncludeUsage(%s): %v", tt.body, err)
			}
			if string(got) != tt.want {
				t.Fatalf("ForceIncludeUsage(%s)\n got %s\nwant %s", tt.body, got, tt.want)
			}
			req, err := ParseRequest(got, 0)
			if err != nil || !req.IncludeUsage {
				t.Fatalf("rewritten body parses as %+v, %v; want IncludeUsage", req, err)
			}
		})
	}
}

// TestForceIncludeUsageKeepsFields decodes the body before and after the rewrite with
// encoding/json and checks that only stream_options.include_usage changed.
func TestForceIncludeUsageKeepsFields(t *testing.T) {
	bodies := []string{
		`{"model":"gpt-4","messages":[{"role":"user","content":"hi \"there\""}],"stream":true,"temperature":0.2}`,
		`{"model":"m","stream_options":{"continuous_usage_stats":true,"nested":{"include_usage":false}},"stream":true}`,
		`{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"stream":true,"stream_options":null}`,
	}
	for _, body := range bodies {
		got, err := ForceIncludeUsage([]byte(body))
		if err != nil {
			t.Fatalf("ForceIncludeUsage(%s): %v", body, err)
		}
		var before, after map[string]any
		if err := json.Unmarshal([]byte(body), &before); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(got, &after); err != nil {
			t.Fatalf("rewritten body is not JSON: %v\n%s", err, got)
		}
		opts, _ := after["stream_options"].(map[string]any)
		if opts["include_usage"] != true {
			t.Fatalf("rewritten stream_options = %v, want include_usage true", after["stream_options"])
		}
		delete(opts, "include_usage")
		if beforeOpts, ok := before["stream_options"].(map[string]any); ok {
			if !jsonEqual(t, beforeOpts, opts) {
				t.Fatalf("stream_options changed: %v -> %v", beforeOpts, opts)
			}
		} else if len(opts) != 0 {
			t.Fatalf("stream_options gained keys: %v", opts)
		}
		delete(before, "stream_options")
		delete(after, "stream_options")
		if !jsonEqual(t, before, after) {
			t.Fatalf("other fields changed:\n%s\n%s", body, got)
		}
	}
}

func TestForceIncludeUsageRejectsInvalid(t *testing.T) {
	for _, body := range []string{``, `[]`, `{"model":`, `{"stream_options":[]}`, `{"a":1}}`} {
		if _, err := ForceIncludeUsage([]byte(body)); err == nil {
			t.Errorf("ForceIncludeUsage(%q): no error", body)
		}
	}
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

// TestParseRequestCaseVariantKeys covers keys that case-insensitive decoders (encoding/json,
// pydantic with aliases) map onto the fields the gateway reads.
func TestParseRequestCaseVariantKeys(t *testing.T) {
	const includeParam = "stream_options.include_usage"
	tests := []struct {
		name      string
		body      string
		wantParam string
	}{
		{"Stream", `{"model":"qwen3","Stream":true}`, "stream"},
		{"STREAM", `{"model":"qwen3","STREAM":true}`, "stream"},
		{"long s", `{"model":"qwen3","ſtream":true}`, "stream"},
		{"long s escaped", `{"model":"qwen3","\u017ftream":true}`, "stream"},
		{"upper S escaped", `{"model":"qwen3","\u0053tream":true}`, "stream"},
		{"Stream besides stream", `{"model":"qwen3","stream":false,"Stream":true}`, "stream"},
		{"Stream before stream", `{"Stream":true,"stream":false}`, "stream"},
		{"Model alone", `{"Model":"gpt-4"}`, "model"},
		{"Model with model", `{"model":"qwen3","Model":"gpt-4"}`, "model"},
		{"MODEL before model", `{"MODEL":"gpt-4","model":"qwen3"}`, "model"},
		{"Model non-string", `{"model":"qwen3","Model":7}`, "model"},
		{"Stream_Options", `{"model":"qwen3","stream":true,"Stream_Options":{"include_usage":true}}`, "stream_options"},
		{"Include_Usage", `{"stream":true,"stream_options":{"include_usage":true,"Include_Usage":false}}`, includeParam},
		{"Include_Usage alone", `{"stream":true,"stream_options":{"Include_Usage":true}}`, includeParam},
		{"INCLUDE_USAGE escaped", `{"stream_options":{"\u0049NCLUDE_USAGE":true}}`, includeParam},
		// Every letter escaped: the raw key is longer than the decoded-key buffer, the decoded
		// one is not.
		{"fully escaped STREAM_OPTIONS",
			`{"\u0053\u0054\u0052\u0045\u0041\u004d\u005f\u004f\u0050\u0054\u0049\u004f\u004e\u0053":{}}`, "stream_options"},
		{"fully escaped INCLUDE_USAGE",
			`{"stream_options":{"\u0049\u004e\u0043\u004c\u0055\u0044\u0045\u005f\u0055\u0053\u0041\u0047\u0045":true}}`, includeParam},
		{"Max_Tokens", `{"model":"qwen3","max_tokens":10,"Max_Tokens":100000}`, "max_tokens"},
		{"MAX_COMPLETION_TOKENS", `{"model":"qwen3","MAX_COMPLETION_TOKENS":100000}`, "max_completion_tokens"},
		{"Max_Output_Tokens", `{"model":"qwen3","Max_Output_Tokens":100000}`, "max_output_tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, parse := range []func([]byte) error{
				func(b []byte) error { _, err := ParseRequest(b, 0); return err },
				func(b []byte) error { _, err := ForceIncludeUsage(b); return err },
			} {
				err := parse([]byte(tt.body))
				var reqErr *RequestError
				if !errors.As(err, &reqErr) {
					t.Fatalf("%s: error = %v, want *RequestError", tt.body, err)
				}
				if reqErr.Param != tt.wantParam {
					t.Errorf("%s: Param = %q, want %q", tt.body, reqErr.Param, tt.wantParam)
				}
				if want := "case variant of '" + tt.wantParam + "'"; !strings.Contains(reqErr.Message, want) {
					t.Errorf("%s: Message = %q, want it to contain %q", tt.body, reqErr.Message, want)
				}
			}
		})
	}
}

// TestParseRequestCaseVariantsMatchEncodingJSON checks the premise of the case-variant rule:
// encoding/json matches every rejected spelling to the real field.
func TestParseRequestCaseVariantsMatchEncodingJSON(t *testing.T) {
	var v struct {
		Stream bool `json:"stream"`
	}
	for _, body := range []string{`{"Stream":true}`, `{"ſtream":true}`, `{"\u017ftream":true}`, `{"STREAM":true}`} {
		v.Stream = false
		if err := json.Unmarshal([]byte(body), &v); err != nil || !v.Stream {
			t.Fatalf("encoding/json does not read %s as stream (err %v)", body, err)
		}
		if _, err := ParseRequest([]byte(body), 0); err == nil {
			t.Errorf("ParseRequest(%s) accepted a key encoding/json reads as stream", body)
		}
	}
}

func TestParseRequestTextBytes(t *testing.T) {
	tests := []struct {
		body string
		want int
	}{
		{`{"model":"a-very-long-model-name"}`, 0},
		{`{"model":"m","messages":[{"role":"user","content":"hello"}]}`, len("user") + len("hello")},
		{`{"model":"m","messages":[{"role":"user","content":"a\nb"}]}`, len("user") + len(`a\nb`)},
		{`{"system":"be brief","stream":true,"stream_options":{"note":"xy","include_usage":true},"n":3,"tools":[{"description":"d"}]}`,
			len("be brief") + len("xy") + len("d")},
		{`{"model":"m","x":["",{"k":""}],"y":null}`, 0},
	}
	for _, tt := range tests {
		req, err := ParseRequest([]byte(tt.body), 0)
		if err != nil {
			t.Fatalf("ParseRequest(%s): %v", tt.body, err)
		}
		if req.TextBytes != tt.want {
			t.Errorf("ParseRequest(%s).TextBytes = %d, want %d", tt.body, req.TextBytes, tt.want)
		}
	}
	body := chatBody(10 << 10)
	req, err := ParseRequest(body, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Every string value except the model: count them with encoding/json's help.
	var want int
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			raw, _ := json.Marshal(v)
			want += len(raw) - 2
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	var decoded map[string]any
	if err := json.Unmarshal(body, &decoded); err != nil {
		t.Fatal(err)
	}
	delete(decoded, "model")
	walk(decoded)
	if req.TextBytes != want {
		t.Errorf("chat body TextBytes = %d, want %d", req.TextBytes, want)
	}
}

func TestParseRequestAllocations(t *testing.T) {
	body := chatBody(20 << 10)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := ParseRequest(body, 0); err != nil {
			t.Fatal(err)
		}
	})
	// One allocation: the model string the Request returns.
	if allocs > 1 {
		t.Errorf("ParseRequest allocates %v times per body, want at most 1", allocs)
	}
}

// TestParseRequestOutputCeiling: the output a request lets the backend produce is the largest
// whole number among the ceilings the APIs read; anything else names no ceiling.
func TestParseRequestOutputCeiling(t *testing.T) {
	tests := []struct {
		body string
		want int64
	}{
		{`{"model":"m"}`, 0},
		{`{"model":"m","max_tokens":256}`, 256},
		{`{"model":"m","max_completion_tokens":1000}`, 1000},
		{`{"model":"m","max_output_tokens":77}`, 77},
		{`{"model":"m","max_tokens":10,"max_completion_tokens":900}`, 900},
		{`{"model":"m","max_completion_tokens":900,"max_tokens":10}`, 900},
		{`{"model":"m","max_tokens":10,"max_tokens":500}`, 500},
		{`{"model":"m","max_tokens":"300"}`, 300},
		{`{"model":"m","max_tokens":3e2}`, 300},
		{`{"model":"m","max_tokens":-5}`, 0},
		{`{"model":"m","max_tokens":2.5}`, 0},
		{`{"model":"m","max_tokens":null}`, 0},
		{`{"model":"m","metadata":{"max_tokens":99999}}`, 0},
	}
	for _, tt := range tests {
		req, err := ParseRequest([]byte(tt.body), 0)
		if err != nil {
			t.Errorf("%s: %v", tt.body, err)
			continue
		}
		if req.MaxOutputTokens != tt.want {
			t.Errorf("%s: MaxOutputTokens %d, want %d", tt.body, req.MaxOutputTokens, tt.want)
		}
	}
}
