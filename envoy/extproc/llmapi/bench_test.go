package llmapi

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"
	"testing"
)

// BenchmarkStreamChunk measures one typical chat completion chunk (one SSE event).
func BenchmarkStreamChunk(b *testing.B) {
	events := bytes.SplitAfter(readFixture(b, "chat_stream_usage.sse"), []byte("\n\n"))
	for _, bench := range []struct {
		name  string
		chunk []byte
	}{
		{"content", events[1]},
		{"usage", events[5]},
	} {
		b.Run(bench.name, func(b *testing.B) {
			s := NewStream(ChatCompletions, 0)
			b.SetBytes(int64(len(bench.chunk)))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Write(bench.chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStreamAnthropic measures a whole Anthropic stream, event names and all.
func BenchmarkStreamAnthropic(b *testing.B) {
	data := readFixture(b, "anthropic_stream.sse")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s := NewStream(AnthropicMessages, 0)
		if err := s.Write(data); err != nil || !s.Done() {
			b.Fatal(err)
		}
	}
}

func BenchmarkFromJSON(b *testing.B) {
	for _, bench := range []struct {
		file   string
		format Format
	}{
		{"chat.json", ChatCompletions},
		{"responses.json", Responses},
		{"anthropic.json", AnthropicMessages},
	} {
		b.Run(bench.file, func(b *testing.B) {
			body := readFixture(b, bench.file)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if u, err := bench.format.UsageFromJSON(body); err != nil || !u.Known {
					b.Fatal(err)
				}
			}
		})
	}
}

// chatBody builds a chat request of about size bytes: a long history of messages.
func chatBody(size int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"model":"gpt-4","stream":true,"messages":[`)
	for i := 0; sb.Len() < size; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"role":"user","content":"Message %d: please summarise the quarterly report, `+
			`with \"quotes\", unicode — ✓ and a newline\n in it."}`, i)
	}
	sb.WriteString(`],"temperature":0.7,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"string"}}}}}]}`)
	return []byte(sb.String())
}

func BenchmarkParseRequest(b *testing.B) {
	body := chatBody(100 << 10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if req, err := ParseRequest(body, 64); err != nil || req.Model != "gpt-4" {
			b.Fatal(err)
		}
	}
}

func BenchmarkForceIncludeUsage(b *testing.B) {
	body := chatBody(100 << 10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ForceIncludeUsage(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGzipStream(b *testing.B) {
	payload := bytes.Repeat(readFixture(b, "chat_stream_usage.sse"), 60) // ~100 KB
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(payload)
	_ = zw.Close()
	compressed := buf.Bytes()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		g := NewGzipStream(io.Discard)
		for rest := compressed; len(rest) > 0; {
			n := min(len(rest), 1024)
			if err := g.Write(rest[:n]); err != nil {
				b.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := g.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompressGzip is the standard library on the same input, for comparison.
func BenchmarkCompressGzip(b *testing.B) {
	payload := bytes.Repeat(readFixture(b, "chat_stream_usage.sse"), 60)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(payload)
	_ = zw.Close()
	compressed := buf.Bytes()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}
