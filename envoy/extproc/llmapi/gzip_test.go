package llmapi

import (
	"bytes"
	"compress/gzip"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// gzipped compresses data with compress/gzip, flushing after every flushEvery bytes (0: never),
// the way a server flushes after each SSE event.
func gzipped(t testing.TB, data []byte, level, flushEvery int, header gzip.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	zw.Header = header
	for len(data) > 0 {
		n := len(data)
		if flushEvery > 0 {
			n = min(n, flushEvery)
		}
		if _, err := zw.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		if flushEvery > 0 {
			if err := zw.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		data = data[n:]
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gunzipStream runs GzipStream over chunks and returns the output and the first error.
func gunzipStream(chunks ...[]byte) ([]byte, error) {
	var out bytes.Buffer
	g := NewGzipStream(&out)
	for _, c := range chunks {
		if err := g.Write(c); err != nil {
			_ = g.Close()
			return out.Bytes(), err
		}
	}
	return out.Bytes(), g.Close()
}

// testPayloads are inputs that exercise every block type: text (dynamic codes), incompressible
// bytes (stored blocks), long runs (far, overlapping matches), and more than one window.
func testPayloads() map[string][]byte {
	rng := rand.New(rand.NewPCG(7, 7))
	random := make([]byte, 40_000)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text strings.Builder
	words := []string{"token", "usage", "stream", "quota", "model", "qwen3", "alice", "\n", "data: ", "{\"x\":1}"}
	for text.Len() < 80_000 {
		text.WriteString(words[rng.IntN(len(words))])
		text.WriteByte(' ')
	}
	return map[string][]byte{
		"empty":  {},
		"byte":   {'x'},
		"text":   []byte(text.String()),
		"random": random,
		"run":    bytes.Repeat([]byte{'a'}, 100_000),
		"mixed":  append(append([]byte(text.String()[:30_000]), random[:30_000]...), bytes.Repeat([]byte("ab"), 20_000)...),
	}
}

func TestGzipStreamMatchesCompressGzip(t *testing.T) {
	levels := []int{gzip.NoCompression, gzip.BestSpeed, gzip.DefaultCompression, gzip.BestCompression, gzip.HuffmanOnly}
	rng := rand.New(rand.NewPCG(3, 4))
	for name, payload := range testPayloads() {
		for _, level := range levels {
			for _, flushEvery := range []int{0, 1000} {
				compressed := gzipped(t, payload, level, flushEvery, gzip.Header{})
				// Whole, then in random chunks of up to 3 KiB.
				got, err := gunzipStream(compressed)
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("%s level %d flush %d: whole: err %v, output equal %v", name, level, flushEvery, err, bytes.Equal(got, payload))
				}
				var chunks [][]byte
				for rest := compressed; len(rest) > 0; {
					n := min(len(rest), 1+rng.IntN(3072))
					chunks = append(chunks, rest[:n])
					rest = rest[n:]
				}
				got, err = gunzipStream(chunks...)
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("%s level %d flush %d: chunked: err %v, output equal %v", name, level, flushEvery, err, bytes.Equal(got, payload))
				}
			}
		}
	}
}

func TestGzipStreamFixturesEverySplit(t *testing.T) {
	for _, name := range []string{"chat_stream_usage.sse", "anthropic.json"} {
		plain := readFixture(t, name)
		compressed := readFixture(t, name+".gz")
		for i := 0; i <= len(compressed); i++ {
			got, err := gunzipStream(compressed[:i], compressed[i:])
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%s split at %d: err %v, output %q", name, i, err, got)
			}
		}
		got, err := gunzipStream(bytesOneByOne(compressed)...)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s byte by byte: err %v", name, err)
		}
	}
}

// TestGzipStreamFlushedOutputArrivesPerWrite checks that what a server flushed is decoded by
// the Write that delivers it, which is what lets usage be read while a stream is running.
func TestGzipStreamFlushedOutputArrivesPerWrite(t *testing.T) {
	var compressed bytes.Buffer
	zw := gzip.NewWriter(&compressed)
	var out bytes.Buffer
	g := NewGzipStream(&out)
	defer func() { _ = g.Close() }()
	for i, event := range []string{"data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n", "data: [DONE]\n\n"} {
		before := compressed.Len()
		if _, err := zw.Write([]byte(event)); err != nil {
			t.Fatal(err)
		}
		if err := zw.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := g.Write(compressed.Bytes()[before:]); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(out.String(), event) {
			t.Fatalf("after flush %d the output is %q, want it to end with %q", i, out.String(), event)
		}
	}
}

func TestGzipStreamHeaderFieldsAndMembers(t *testing.T) {
	header := gzip.Header{Name: "usage.sse", Comment: "a comment", Extra: []byte("extra-field-bytes")}
	first := gzipped(t, []byte("first member "), gzip.DefaultCompression, 0, header)
	second := gzipped(t, []byte("second member"), gzip.BestSpeed, 0, gzip.Header{})
	// A header CRC (FHCRC) is not written by compress/gzip; set it by hand on a copy.
	withCRC := withHeaderCRC(t, second)
	stream := append(append(append([]byte{}, first...), second...), withCRC...)
	want := "first member second membersecond member"
	for i := 0; i <= len(stream); i++ {
		got, err := gunzipStream(stream[:i], stream[i:])
		if err != nil || string(got) != want {
			t.Fatalf("split at %d: %q, %v", i, got, err)
		}
	}
	std, err := GunzipLimited(stream, 1000)
	if err != nil || string(std) != want {
		t.Fatalf("GunzipLimited: %q, %v", std, err)
	}
}

// withHeaderCRC rewrites a minimal gzip member (10-byte header) to carry FHCRC.
func withHeaderCRC(t *testing.T, member []byte) []byte {
	t.Helper()
	if member[3] != 0 {
		t.Fatal("expected a member without header flags")
	}
	header := append([]byte{}, member[:10]...)
	header[3] = gzipFlagHeaderCRC
	crc := crc32IEEE(header)
	out := append(header, byte(crc), byte(crc>>8))
	return append(out, member[10:]...)
}

func TestGzipStreamErrors(t *testing.T) {
	valid := gzipped(t, []byte("hello, hello, hello"), gzip.DefaultCompression, 0, gzip.Header{})
	corruptCRC := append([]byte{}, valid...)
	corruptCRC[len(corruptCRC)-8] ^= 0xff
	corruptSize := append([]byte{}, valid...)
	corruptSize[len(corruptSize)-1] ^= 0xff
	badBlockType := append([]byte{}, valid[:10]...)
	badBlockType = append(badBlockType, 0x07) // final block of reserved type 3
	tests := []struct {
		name    string
		stream  []byte
		wantErr error // nil: any error
	}{
		{"not gzip", []byte("{\"usage\":{}}"), errGzipHeader},
		{"bad magic in second byte", []byte{0x1f, 0x00}, errGzipHeader},
		{"wrong method", []byte{0x1f, 0x8b, 0x07, 0, 0, 0, 0, 0, 0, 0}, errGzipHeader},
		{"crc mismatch", corruptCRC, errGzipChecksum},
		{"size mismatch", corruptSize, errGzipChecksum},
		{"reserved block type", badBlockType, errCorrupt},
		{"garbage after member", append(append([]byte{}, valid...), "trailing"...), errGzipHeader},
		{"truncated", valid[:len(valid)-3], io.ErrUnexpectedEOF},
		{"header only", valid[:10], io.ErrUnexpectedEOF},
		{"long file name", append([]byte{0x1f, 0x8b, 8, gzipFlagName, 0, 0, 0, 0, 0, 0}, bytes.Repeat([]byte("n"), 600)...), errGzipHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, chunks := range [][][]byte{{tt.stream}, bytesOneByOne(tt.stream)} {
				_, err := gunzipStream(chunks...)
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
			}
			if _, err := GunzipLimited(tt.stream, 1<<20); err == nil {
				t.Fatal("GunzipLimited accepted it")
			}
		})
	}
}

func TestGzipStreamLifecycle(t *testing.T) {
	var out bytes.Buffer
	g := NewGzipStream(&out)
	if err := g.Close(); err != nil {
		t.Fatalf("closing an unused stream: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := g.Write([]byte{0x1f}); err == nil {
		t.Fatal("Write after Close succeeded")
	}

	failing := errors.New("downstream closed")
	g = NewGzipStream(writerFunc(func([]byte) (int, error) { return 0, failing }))
	err := g.Write(gzipped(t, []byte("x"), gzip.DefaultCompression, 0, gzip.Header{}))
	if !errors.Is(err, failing) {
		t.Fatalf("dst error not returned: %v", err)
	}
	if err := g.Write([]byte{0}); !errors.Is(err, failing) {
		t.Fatalf("error not sticky: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("Close after an error: %v", err)
	}
}

// TestGzipStreamBoundedInput checks that undecodable leftover input stays small however the
// stream is chunked: only a partial unit (block header or symbol) is ever held back.
func TestGzipStreamBoundedInput(t *testing.T) {
	payload := testPayloads()["text"]
	compressed := gzipped(t, payload, gzip.BestCompression, 0, gzip.Header{})
	g := NewGzipStream(io.Discard)
	defer func() { _ = g.Close() }()
	maxLeft := 0
	for _, b := range bytesOneByOne(compressed) {
		if err := g.Write(b); err != nil {
			t.Fatal(err)
		}
		maxLeft = max(maxLeft, len(g.in.in))
	}
	// The largest unit is a dynamic block header: at most 14 + 19*3 + 316*(7+7) bits.
	if maxLeft > 600 {
		t.Fatalf("held back %d bytes of input", maxLeft)
	}
}

func TestGunzipLimited(t *testing.T) {
	payload := bytes.Repeat([]byte("usage "), 1000)
	compressed := gzipped(t, payload, gzip.DefaultCompression, 0, gzip.Header{})
	got, err := GunzipLimited(compressed, int64(len(payload)))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("at the limit: %v", err)
	}
	if _, err := GunzipLimited(compressed, int64(len(payload)-1)); !errors.Is(err, ErrDecompressedTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if got, err := GunzipLimited(nil, 10); err != nil || len(got) != 0 {
		t.Fatalf("empty body: %q, %v", got, err)
	}
	plain := readFixture(t, "anthropic.json")
	got, err = GunzipLimited(readFixture(t, "anthropic.json.gz"), 1<<20)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("fixture: %v", err)
	}
	u, err := AnthropicMessages.UsageFromJSON(got)
	if err != nil || u.OutputTokens != 503 {
		t.Fatalf("usage of the decoded fixture: %+v, %v", u, err)
	}
}

// TestGzipStreamIntoStream wires the decoder into the SSE parser, as the server does.
func TestGzipStreamIntoStream(t *testing.T) {
	compressed := readFixture(t, "chat_stream_usage.sse.gz")
	s := NewStream(ChatCompletions, 0)
	g := NewGzipStream(writerFunc(func(p []byte) (int, error) { return len(p), s.Write(p) }))
	for _, c := range bytesOneByOne(compressed) {
		if err := g.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); !s.Done() || u.TotalTokens != 29 || u.InputTokens != 19 {
		t.Fatalf("usage %+v done %v", u, s.Done())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func crc32IEEE(b []byte) uint32 { return crc32.ChecksumIEEE(b) }
