package llmapi

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Backends may gzip a response even when the request asked for identity encoding; usage can
// only be read from the decoded bytes. Buffered bodies go through compress/gzip; streamed
// bodies through GzipStream, which decodes each chunk as it arrives.

// ErrDecompressedTooLarge is returned by GunzipLimited when the decoded body exceeds the limit.
var ErrDecompressedTooLarge = errors.New("gzip: decompressed body exceeds the size limit")

// GunzipLimited decodes a complete gzip body (one or more members) of at most max decoded
// bytes. An empty body decodes to an empty result, as it does for GzipStream.
func GunzipLimited(body []byte, max int64) ([]byte, error) {
	if len(body) == 0 {
		return []byte{}, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	defer func() { _ = zr.Close() }() // reading reports every error; Close adds none
	out, err := io.ReadAll(io.LimitReader(zr, max+1))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if int64(len(out)) > max {
		return nil, ErrDecompressedTooLarge
	}
	return out, nil
}

// Errors of GzipStream besides corrupt DEFLATE data.
var (
	errGzipHeader   = errors.New("gzip: invalid header")
	errGzipChecksum = errors.New("gzip: checksum or size mismatch")
	errGzipClosed   = errors.New("gzip: write after close")
)

// Where a GzipStream is within the gzip framing (RFC 1952).
type gzipState uint8

const (
	gzipBetweenMembers gzipState = iota // at the start, or after a member's trailer
	gzipExtraLen
	gzipExtra
	gzipName
	gzipComment
	gzipHeaderCRC
	gzipDeflate
	gzipTrailer
)

const (
	gzipFlagHeaderCRC = 1 << 1
	gzipFlagExtra     = 1 << 2
	gzipFlagName      = 1 << 3
	gzipFlagComment   = 1 << 4
	// gzipMaxString bounds the file name and comment fields, as compress/gzip does.
	gzipMaxString = 512
)

// GzipStream decodes a gzip stream fed chunk by chunk and forwards the decoded bytes to dst.
// It runs no goroutine: each Write decodes everything its input allows, hands the output to
// dst before returning, and keeps at most a few hundred bytes of undecodable input plus a
// 64 KiB window. Concatenated members are decoded in turn, as compress/gzip does. The checksum
// is verified at the end of each member, so output reaches dst before it is known to be intact.
//
// A GzipStream is not safe for concurrent use.
type GzipStream struct {
	dst   io.Writer
	state gzipState
	flags byte
	// left counts the bytes still to skip in the extra field, or the bytes of the current name
	// or comment seen so far.
	left      int
	headerCRC uint32
	crc       uint32
	size      uint32

	in       bitReader // unconsumed input
	inflater inflater
	err      error
	closed   bool
}

// NewGzipStream returns a decoder writing to dst.
func NewGzipStream(dst io.Writer) *GzipStream {
	return &GzipStream{dst: dst}
}

// Write decodes as much of the stream as the bytes so far allow and writes the result to dst.
// It returns the first error (corrupt data, a checksum mismatch, dst failing); after an error,
// or after Close, every Write fails.
func (g *GzipStream) Write(compressed []byte) error {
	if g.closed {
		return errGzipClosed
	}
	if g.err != nil {
		return g.err
	}
	g.in.in = append(g.in.in, compressed...)
	err := g.decode()
	if err == nil || errors.Is(err, errNeedInput) {
		err = g.emit(g.inflater.pendingIfAny())
	}
	// Keep only the unconsumed input (a partial unit), moved to the front for reuse.
	consumed := g.in.pos >> 3
	g.in.in = g.in.in[:copy(g.in.in, g.in.in[consumed:])]
	g.in.pos -= consumed * 8
	if err != nil && !errors.Is(err, errNeedInput) {
		g.err = err
		return err
	}
	return nil
}

// Close releases the buffers. It reports io.ErrUnexpectedEOF when the input ended inside a
// member; a stream that never received a byte is a clean (empty) stream. It is safe to call
// more than once; later calls return nil.
func (g *GzipStream) Close() error {
	if g.closed {
		return nil
	}
	g.closed = true
	truncated := g.err == nil && (g.state != gzipBetweenMembers || len(g.in.in) > 0)
	g.in = bitReader{}
	g.inflater = inflater{}
	if truncated {
		return fmt.Errorf("gzip: %w", io.ErrUnexpectedEOF)
	}
	return nil
}

func (g *GzipStream) emit(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	g.crc = crc32.Update(g.crc, crc32.IEEETable, p)
	g.size += uint32(len(p))
	_, err := g.dst.Write(p)
	return err
}

// pendingIfAny is pending, tolerating an inflater that has not started yet.
func (f *inflater) pendingIfAny() []byte {
	if f.window == nil {
		return nil
	}
	return f.pending()
}

// decode advances through the framing and the compressed data until the input runs out
// (errNeedInput) or an error occurs.
func (g *GzipStream) decode() error {
	r := &g.in
	for {
		avail := len(r.in) - r.pos>>3 // whole bytes; framing fields are byte aligned
		rest := r.in[r.pos>>3:]
		switch g.state {
		case gzipBetweenMembers:
			// Reject a bad magic number as soon as its bytes arrive.
			const magic = "\x1f\x8b\x08"
			if n := min(avail, len(magic)); string(rest[:n]) != magic[:n] {
				return errGzipHeader
			}
			if avail < 10 {
				return errNeedInput
			}
			g.flags = rest[3]
			g.headerCRC = crc32.ChecksumIEEE(rest[:10])
			g.crc, g.size = 0, 0
			g.inflater.reset()
			r.pos += 10 * 8
			g.state = gzipExtraLen
		case gzipExtraLen:
			if g.flags&gzipFlagExtra == 0 {
				g.state = gzipName
				continue
			}
			if avail < 2 {
				return errNeedInput
			}
			g.left = int(binary.LittleEndian.Uint16(rest))
			g.headerCRC = crc32.Update(g.headerCRC, crc32.IEEETable, rest[:2])
			r.pos += 2 * 8
			g.state = gzipExtra
		case gzipExtra:
			n := min(avail, g.left)
			g.headerCRC = crc32.Update(g.headerCRC, crc32.IEEETable, rest[:n])
			r.pos += n * 8
			g.left -= n
			if g.left > 0 {
				return errNeedInput
			}
			g.state = gzipName
		case gzipName, gzipComment:
			flag := byte(gzipFlagName)
			if g.state == gzipComment {
				flag = gzipFlagComment
			}
			if g.flags&flag != 0 {
				// Skip the zero-terminated string without buffering it.
				end := bytes.IndexByte(rest, 0)
				n := end + 1
				if end < 0 {
					n = avail
				}
				g.headerCRC = crc32.Update(g.headerCRC, crc32.IEEETable, rest[:n])
				r.pos += n * 8
				g.left += n
				if g.left > gzipMaxString {
					return errGzipHeader
				}
				if end < 0 {
					return errNeedInput
				}
			}
			g.left = 0
			if g.state == gzipName {
				g.state = gzipComment
			} else {
				g.state = gzipHeaderCRC
			}
		case gzipHeaderCRC:
			if g.flags&gzipFlagHeaderCRC != 0 {
				if avail < 2 {
					return errNeedInput
				}
				if binary.LittleEndian.Uint16(rest) != uint16(g.headerCRC) {
					return errGzipHeader
				}
				r.pos += 2 * 8
			}
			g.state = gzipDeflate
		case gzipDeflate:
			if err := g.inflater.step(r, g.emit); err != nil {
				return err
			}
			if err := g.emit(g.inflater.pending()); err != nil {
				return err
			}
			r.alignToByte()
			g.state = gzipTrailer
		case gzipTrailer:
			if avail < 8 {
				return errNeedInput
			}
			if binary.LittleEndian.Uint32(rest) != g.crc || binary.LittleEndian.Uint32(rest[4:]) != g.size {
				return errGzipChecksum
			}
			r.pos += 8 * 8
			g.state = gzipBetweenMembers
			if avail == 8 {
				return errNeedInput
			}
		}
	}
}
