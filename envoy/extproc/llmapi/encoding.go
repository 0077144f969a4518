package llmapi

import "strings"

// ContentEncoding is how a response body is encoded. Upstreams are asked for identity encoding,
// but some compress their answers anyway; usage can only be read from the decoded bytes.
//
// The body is decoded here rather than by Envoy's decompressor filter ahead of the ext_proc
// filter: that filter ends every response it decodes with trailers of its own, and Envoy 1.40's
// ext_proc filter never lets trailers added behind it through while it streams a body, so every
// decoded response would stall until the stream idle timeout (envoyproxy/envoy#21205; seen with
// STREAMED and FULL_DUPLEX_STREAMED bodies, response headers and trailers sent or skipped).
type ContentEncoding uint8

// The content encodings tollgate reads.
const (
	Identity ContentEncoding = iota
	Gzip
)

// String names the encoding as a content-encoding header does.
func (e ContentEncoding) String() string {
	if e == Gzip {
		return "gzip"
	}
	return "identity"
}

// ParseContentEncoding reads a content-encoding header. It reports false for an encoding
// tollgate cannot decode.
func ParseContentEncoding(header string) (ContentEncoding, bool) {
	switch strings.ToLower(strings.TrimSpace(header)) {
	case "", "identity":
		return Identity, true
	case "gzip", "x-gzip":
		return Gzip, true
	default:
		return Identity, false
	}
}

// SniffContentEncoding recognizes a compressed body by its first bytes (gzip's magic number),
// for a response whose headers were not seen.
func SniffContentEncoding(first []byte) (ContentEncoding, bool) {
	if len(first) >= 2 && first[0] == 0x1f && first[1] == 0x8b {
		return Gzip, true
	}
	return Identity, false
}

// Decode returns a complete body decoded, of at most max decoded bytes.
func (e ContentEncoding) Decode(body []byte, max int64) ([]byte, error) {
	if e == Gzip {
		return GunzipLimited(body, max)
	}
	return body, nil
}

// StreamDecoder feeds a streamed body, chunk by chunk as it arrives, to a Stream, decoding it
// on the way.
type StreamDecoder interface {
	// Write decodes a chunk and parses what it yields.
	Write(chunk []byte) error
	// Close ends the body: it parses what the decoder still holds, and reports a body that
	// ended in the middle of its encoding.
	Close() error
}

// NewStreamDecoder returns the decoder that feeds s a body in encoding e.
func NewStreamDecoder(e ContentEncoding, s *Stream) StreamDecoder {
	if e == Gzip {
		return gzipToStream{NewGzipStream(streamWriter{s})}
	}
	return plainStream{s}
}

type plainStream struct{ s *Stream }

func (p plainStream) Write(chunk []byte) error { return p.s.Write(chunk) }
func (plainStream) Close() error               { return nil }

type gzipToStream struct{ g *GzipStream }

func (d gzipToStream) Write(chunk []byte) error { return d.g.Write(chunk) }
func (d gzipToStream) Close() error             { return d.g.Close() }

// streamWriter adapts a Stream to io.Writer for the gzip decoder.
type streamWriter struct{ s *Stream }

func (w streamWriter) Write(p []byte) (int, error) {
	if err := w.s.Write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
