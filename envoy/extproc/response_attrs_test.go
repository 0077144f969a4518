package extproc

import (
	"bytes"
	"compress/gzip"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
)

// firstResponseChunk is the first response body message as Envoy sends it without a response
// headers message: the status rides along as an attribute.
func firstResponseChunk(status int, chunk []byte, endOfStream bool) *extprocv3.ProcessingRequest {
	req := responseBody(chunk, endOfStream)
	req.Attributes = map[string]*structpb.Struct{envoy.FilterExtProc: {Fields: map[string]*structpb.Value{
		envoy.AttributeResponseCode: structpb.NewNumberValue(float64(status)),
	}}}
	return req
}

// TestResponseReadWithoutHeadersMessage: with the status as an attribute of the first chunk,
// a JSON answer split over chunks, an event stream and a gzip stream are each charged the usage
// they report; an error status is not charged.
func TestResponseReadWithoutHeadersMessage(t *testing.T) {
	json := readTestdata(t, "chat_completion.json")
	sse := readTestdata(t, "chat_stream.sse")
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	_, _ = w.Write(sse)
	_ = w.Close()
	half := len(json) / 2
	tests := []struct {
		name    string
		request string
		status  int
		chunks  [][]byte
		want    []string // charges
	}{
		{"JSON in two chunks", `{"model":"qwen3"}`, 200, [][]byte{json[:half], json[half:]},
			[]string{"model=qwen3,quota=hourly,user=alice +12", "model=qwen3,quota=weighted,user=alice +18"}},
		{"JSON after an empty chunk", `{"model":"qwen3"}`, 200, [][]byte{nil, json},
			[]string{"model=qwen3,quota=hourly,user=alice +12", "model=qwen3,quota=weighted,user=alice +18"}},
		{"event stream", `{"model":"qwen3","stream":true}`, 200, [][]byte{sse[:10], sse[10:]},
			[]string{"model=qwen3,quota=hourly,user=alice +17", "model=qwen3,quota=weighted,user=alice +27"}},
		{"gzip event stream", `{"model":"qwen3","stream":true}`, 200, [][]byte{gz.Bytes()},
			[]string{"model=qwen3,quota=hourly,user=alice +17", "model=qwen3,quota=weighted,user=alice +27"}},
		{"error status", `{"model":"qwen3"}`, 429, [][]byte{[]byte(`{"error":{"message":"slow down"}}`)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := rlsclienttest.Start(t)
			h := newHarness(t, chargedConfig(t, fake.Addr))
			c := h.open(t)
			sendChat(t, c, tt.request)
			var last *extprocv3.ProcessingResponse
			for i, chunk := range tt.chunks {
				eos := i == len(tt.chunks)-1
				req := responseBody(chunk, eos)
				if i == 0 {
					req = firstResponseChunk(tt.status, chunk, eos)
				}
				last = c.send(req)
				if last.GetResponseBody() == nil {
					t.Fatalf("chunk %d: want a body response, got %v", i, last)
				}
			}
			c.end()
			if tt.want == nil {
				if got := metadataFields(last)[metadataUsageBasis]; got != nil {
					t.Errorf("an error response published usage (basis %v)", got)
				}
				if err := h.srv.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				if got := fake.Charges(); len(got) != 0 {
					t.Errorf("an error response was charged: %q", got)
				}
				return
			}
			if basis := metadataFields(last)[metadataUsageBasis]; basis != basisUsage {
				t.Errorf("usage_basis %v, want %s", basis, basisUsage)
			}
			waitForCharges(t, fake, tt.want...)
		})
	}
}

func TestSniffResponse(t *testing.T) {
	tests := []struct {
		first           string
		streamRequested bool
		contentType     string
		encoding        string
	}{
		{`{"id":"x"}`, false, "application/json", ""},
		{"\n  {\"id\":\"x\"}", true, "application/json", ""}, // a backend that ignored stream
		{`[{"id":"x"}]`, false, "application/json", ""},
		{"data: {}\n\n", true, "text/event-stream", ""},
		{"event: message_start\n", true, "text/event-stream", ""},
		{": keep-alive\n", true, "text/event-stream", ""},
		{"\x1f\x8b\x08", true, "text/event-stream", "gzip"},
		{"\x1f\x8b\x08", false, "application/json", "gzip"},
		{"   ", false, "", ""},
	}
	for _, tt := range tests {
		got := sniffResponse("200", []byte(tt.first), tt.streamRequested)
		if got.contentType != tt.contentType || got.encoding != tt.encoding || got.status != "200" {
			t.Errorf("sniffResponse(%q, stream=%v) = %+v, want content type %q, encoding %q",
				tt.first, tt.streamRequested, got, tt.contentType, tt.encoding)
		}
	}
}
