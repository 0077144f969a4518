package llmapi

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureSeeds returns the contents of the testdata files with the given suffix.
func fixtureSeeds(f *testing.F, suffix string) [][]byte {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*"+suffix))
	if err != nil {
		f.Fatal(err)
	}
	var seeds [][]byte
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	return seeds
}

// fuzzFormat picks one of the formats by a fuzzed number.
func fuzzFormat(n uint8) Format {
	formats := allFormats()
	return formats[int(n)%len(formats)]
}

func FuzzParseRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":[1,2]}}`,
		`{"stream_options":null}`, `{}`, `{"mod\u0065l":"\ud83d\ude00"}`, `[[[[`, `{"model":1}`,
		`{"model":"m","Stream":true}`, `{"\u017ftream":true,"stream_options":{"Include_Usage":true}}`,
	} {
		f.Add([]byte(seed))
	}
	for _, seed := range fixtureSeeds(f, ".json") {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRequest(body, 16)
		if !json.Valid(body) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q", body)
			}
			return
		}
		if err != nil {
			return
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("accepted %q, which is not an object: %v", body, err)
		}
		if raw, ok := fields["model"]; ok != req.HasModel {
			t.Fatalf("HasModel = %v for %q", req.HasModel, body)
		} else if ok {
			var model string
			if err := json.Unmarshal(raw, &model); err != nil || model != req.Model {
				t.Fatalf("Model = %q, encoding/json says %q (%v)", req.Model, model, err)
			}
		}
		// A case-insensitive decoder, as many backends use, must read the same request: a key
		// it would fold onto a field the gateway reads is rejected above.
		var folded struct {
			Model         string `json:"model"`
			Stream        *bool  `json:"stream"`
			StreamOptions *struct {
				IncludeUsage *bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := json.Unmarshal(body, &folded); err != nil {
			t.Fatalf("accepted %q, which encoding/json cannot decode into the request fields: %v", body, err)
		}
		foldedStream := folded.Stream != nil && *folded.Stream
		foldedInclude := folded.StreamOptions != nil && folded.StreamOptions.IncludeUsage != nil &&
			*folded.StreamOptions.IncludeUsage
		if folded.Model != req.Model || foldedStream != req.Stream || foldedInclude != req.IncludeUsage {
			t.Fatalf("encoding/json reads %q as model %q stream %v include_usage %v; ParseRequest: %+v",
				body, folded.Model, foldedStream, foldedInclude, req)
		}
		rewritten, err := ForceIncludeUsage(body)
		if err != nil {
			t.Fatalf("ForceIncludeUsage of an accepted body: %v", err)
		}
		after, err := ParseRequest(rewritten, 17) // the new member may add one level
		if err != nil {
			t.Fatalf("rewritten body %q does not parse: %v", rewritten, err)
		}
		if !after.IncludeUsage || after.Model != req.Model || after.Stream != req.Stream {
			t.Fatalf("rewrite changed the request: %+v -> %+v", req, after)
		}
	})
}

func FuzzFromJSON(f *testing.F) {
	for _, seed := range fixtureSeeds(f, ".json") {
		for i := range allFormats() {
			f.Add(uint8(i), seed)
		}
	}
	f.Add(uint8(0), []byte(`{"usage":{"prompt_tokens":1,"completion_tokens":-2,"total_tokens":1e3}}`))
	f.Fuzz(func(t *testing.T, format uint8, body []byte) {
		fm := fuzzFormat(format)
		u, err := fm.UsageFromJSON(body)
		if err == nil && !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		if err != nil && u != (Usage{}) {
			t.Fatalf("usage %+v returned with error %v", u, err)
		}
		if !u.Known && u != (Usage{}) {
			t.Fatalf("counters without a usage object: %+v", u)
		}
		n := fm.ResponseTextBytes(body)
		if n < 0 || n > int64(len(body)) {
			t.Fatalf("ResponseTextBytes = %d for a %d-byte body", n, len(body))
		}
		if n != 0 && !json.Valid(body) {
			t.Fatalf("ResponseTextBytes = %d for invalid JSON %q", n, body)
		}
	})
}

// FuzzStream feeds arbitrary bytes in one piece and split at two points: the results must
// agree, and the event buffer must stay within the limit.
func FuzzStream(f *testing.F) {
	for _, seed := range fixtureSeeds(f, ".sse") {
		for i := range allFormats() {
			f.Add(uint8(i), seed, uint16(len(seed)/3), uint16(len(seed)/2))
		}
	}
	f.Add(uint8(0), []byte("data: x\r\n\r\ndata:[DONE]\r\r"), uint16(8), uint16(9))
	f.Fuzz(func(t *testing.T, format uint8, data []byte, split1, split2 uint16) {
		fm := fuzzFormat(format)
		const limit = 256
		i := min(int(split1), len(data))
		j := min(i+int(split2), len(data))
		whole := runStream(fm, limit, data)
		s := NewStream(fm, limit)
		for _, c := range [][]byte{data[:i], data[i:j], data[j:]} {
			_ = s.Write(c)
			if cap(s.data) > limit {
				t.Fatalf("event buffer grew to %d bytes, over the limit %d", cap(s.data), limit)
			}
		}
		split := streamResult{Usage: s.Usage(), Done: s.Done(), OutputEvents: s.OutputEvents(), SkippedEvents: s.SkippedEvents()}
		if err := s.Err(); err != nil {
			split.Err = err.Error()
		}
		if split != whole {
			t.Fatalf("split at %d,%d: %+v\nwhole: %+v", i, j, split, whole)
		}
		ws := NewStream(fm, limit)
		_ = ws.Write(data)
		if ws.OutputTextBytes() != s.OutputTextBytes() {
			t.Fatalf("split at %d,%d: OutputTextBytes %d, whole %d", i, j, s.OutputTextBytes(), ws.OutputTextBytes())
		}
		if s.OutputTextBytes() < 0 || s.OutputTextBytes() > int64(len(data)) {
			t.Fatalf("OutputTextBytes = %d for %d bytes of stream", s.OutputTextBytes(), len(data))
		}
		if s.OutputEvents() == 0 && s.OutputTextBytes() != 0 {
			t.Fatalf("OutputTextBytes = %d without output events", s.OutputTextBytes())
		}
	})
}

// FuzzGzipStream compares GzipStream with compress/gzip on arbitrary input: whatever the
// standard library decodes, GzipStream must decode identically, in any chunking, and whatever
// it rejects, GzipStream must reject too.
func FuzzGzipStream(f *testing.F) {
	for _, seed := range fixtureSeeds(f, ".gz") {
		f.Add(seed, uint16(len(seed)/2))
	}
	var buf bytes.Buffer
	for _, level := range []int{gzip.NoCompression, gzip.BestSpeed, gzip.HuffmanOnly, gzip.BestCompression} {
		buf.Reset()
		zw, _ := gzip.NewWriterLevel(&buf, level)
		_, _ = zw.Write([]byte(strings.Repeat("data: {\"usage\":{\"prompt_tokens\":12}}\n\n", 20)))
		_ = zw.Close()
		f.Add(bytes.Clone(buf.Bytes()), uint16(17))
	}
	f.Fuzz(func(t *testing.T, compressed []byte, split uint16) {
		if len(compressed) == 0 {
			return // compress/gzip calls an empty body an error, GzipStream an empty stream
		}
		const limit = 1 << 22
		var want []byte
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		if err == nil {
			want, err = io.ReadAll(io.LimitReader(zr, limit))
		}
		if len(want) == limit {
			return // a bomb: not worth decoding twice
		}
		i := min(int(split), len(compressed))
		got, gotErr := gunzipStream(compressed[:i], compressed[i:])
		if err != nil {
			if gotErr == nil {
				t.Fatalf("compress/gzip fails with %v, GzipStream succeeds", err)
			}
			return
		}
		if gotErr != nil || !bytes.Equal(got, want) {
			t.Fatalf("compress/gzip decodes %d bytes, GzipStream %d bytes with error %v", len(want), len(got), gotErr)
		}
	})
}

// FuzzGzipRoundTrip compresses arbitrary payloads with compress/gzip at every kind of setting
// (stored, Huffman-only, fast, best, with flushes) and decodes them in two chunks.
func FuzzGzipRoundTrip(f *testing.F) {
	for _, seed := range fixtureSeeds(f, ".sse") {
		f.Add(seed, int8(gzip.DefaultCompression), uint16(100), uint16(len(seed)/4))
	}
	f.Add(bytes.Repeat([]byte("ab"), 20_000), int8(gzip.BestSpeed), uint16(0), uint16(3))
	f.Fuzz(func(t *testing.T, payload []byte, level int8, flushEvery, split uint16) {
		// Past one window, size adds time, not coverage; tiny flush intervals likewise.
		payload = payload[:min(len(payload), 40_000)]
		if flushEvery > 0 {
			flushEvery = max(flushEvery, uint16(len(payload)/256))
		}
		lvl := int(level)%11 - 1 // -1 (default) .. 9; -2 (Huffman only) for negative inputs
		if level < 0 {
			lvl = gzip.HuffmanOnly
		}
		compressed := gzipped(t, payload, lvl, int(flushEvery), gzip.Header{})
		i := min(int(split), len(compressed))
		got, err := gunzipStream(compressed[:i], compressed[i:])
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("level %d flush %d split %d: err %v, equal %v", lvl, flushEvery, i, err, bytes.Equal(got, payload))
		}
	})
}

// FuzzInflate treats arbitrary bytes as raw DEFLATE data and compares with compress/flate:
// wrapped into a gzip member with the right trailer, data compress/flate decodes must decode
// identically here, and data it rejects must be rejected.
func FuzzInflate(f *testing.F) {
	for _, seed := range fixtureSeeds(f, ".gz") {
		f.Add(seed[10:len(seed)-8], uint16(5)) // the raw DEFLATE part of a member
	}
	f.Add([]byte{0x01, 0x03, 0x00, 0xfc, 0xff, 'a', 'b', 'c'}, uint16(4)) // one stored block
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		src := bytes.NewReader(data)
		want, err := io.ReadAll(io.LimitReader(flate.NewReader(src), 1<<22))
		if len(want) == 1<<22 {
			return
		}
		member := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}
		if err != nil {
			member = append(member, data...)
			if _, gotErr := gunzipStream(member); gotErr == nil {
				t.Fatalf("compress/flate fails with %v, GzipStream succeeds", err)
			}
			return
		}
		// compress/flate never reads past the end of the DEFLATE stream.
		member = append(member, data[:len(data)-src.Len()]...)
		var trailer [8]byte
		binary.LittleEndian.PutUint32(trailer[:], crc32.ChecksumIEEE(want))
		binary.LittleEndian.PutUint32(trailer[4:], uint32(len(want)))
		member = append(member, trailer[:]...)
		i := min(int(split), len(member))
		got, gotErr := gunzipStream(member[:i], member[i:])
		if gotErr != nil || !bytes.Equal(got, want) {
			t.Fatalf("compress/flate decodes %d bytes, GzipStream %d bytes with error %v", len(want), len(got), gotErr)
		}
	})
}
