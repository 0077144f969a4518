package llmapi

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// This file is a push-style DEFLATE (RFC 1951) decoder. compress/flate pulls its input from an
// io.Reader and cannot pause when a chunk runs out without blocking a goroutine, so the gzip
// stream decoder would otherwise need a goroutine per response. Here the input is pushed: every
// unit that cannot be decoded partially (a block header with its code tables, one literal or
// one length/distance pair) is decoded all at once or not at all. When the input runs out in
// the middle of a unit the read position rolls back to the unit's start and decoding resumes
// there when more bytes arrive, so at most one unit's worth of input (a few hundred bytes) is
// ever held back.

// errCorrupt reports invalid DEFLATE data.
var errCorrupt = errors.New("gzip: corrupt deflate data")

const (
	windowSize  = 1 << 15 // the farthest a back-reference can reach
	maxMatchLen = 258
	maxCodeBits = 15
	numLitLen   = 288 // 286 valid codes plus two the fixed code defines but never uses
	numDist     = 32  // 30 valid codes plus two the fixed code defines but never uses
)

// bitReader reads bits LSB-first from a byte slice by absolute bit position, so saving and
// restoring the position is all a rollback needs.
type bitReader struct {
	in  []byte
	pos int // in bits
}

func (r *bitReader) avail() int { return len(r.in)*8 - r.pos }

// bits returns the next n (≤ 16) bits and advances, or ok=false without advancing when the
// input holds fewer than n bits.
func (r *bitReader) bits(n int) (uint32, bool) {
	if r.avail() < n {
		return 0, false
	}
	v := r.peek()
	r.pos += n
	return v & (1<<n - 1), true
}

// peek returns the upcoming bits without advancing: at least 25 of them (enough for any code or
// extra-bits field) when the input has them; bits past the input read as zero.
func (r *bitReader) peek() uint32 {
	i := r.pos >> 3
	if i+4 <= len(r.in) {
		return binary.LittleEndian.Uint32(r.in[i:]) >> (r.pos & 7)
	}
	var v uint32
	for k := 0; k < 4 && i+k < len(r.in); k++ {
		v |= uint32(r.in[i+k]) << (8 * k)
	}
	return v >> (r.pos & 7)
}

// alignToByte skips to the next byte boundary, as stored blocks and the gzip trailer require.
func (r *bitReader) alignToByte() { r.pos = (r.pos + 7) &^ 7 }

// fastBits is how many bits the direct lookup table of a Huffman code covers. Most codes of
// real data are shorter; longer ones take the canonical walk.
const fastBits = 9

// huffman is a canonical Huffman code: how many codes each length has and the symbols in code
// order, plus a table that decodes codes of up to fastBits bits in one lookup.
type huffman struct {
	count   [maxCodeBits + 1]uint16
	symbols [numLitLen]uint16
	// fast maps the next fastBits input bits to symbol<<4 | code length; 0 when the code is
	// longer than fastBits (or the bits match no code).
	fast [1 << fastBits]uint16
}

// init builds the code from per-symbol code lengths (0 = unused). Like zlib, it rejects
// over-subscribed and incomplete codes, except a code with a single one-bit code, and accepts
// an empty code (using it is then an error).
func (h *huffman) init(lengths []uint8) bool {
	h.count = [maxCodeBits + 1]uint16{}
	maxLen := 0
	for _, l := range lengths {
		h.count[l]++
		maxLen = max(maxLen, int(l))
	}
	h.count[0] = 0
	if maxLen == 0 {
		return true
	}
	left := 1 // codes of the current length not yet used
	for l := 1; l <= maxCodeBits; l++ {
		left <<= 1
		left -= int(h.count[l])
		if left < 0 {
			return false // over-subscribed
		}
	}
	if left > 0 && !(maxLen == 1 && h.count[1] == 1) {
		return false // incomplete
	}
	var offsets [maxCodeBits + 2]uint16
	var nextCode [maxCodeBits + 1]int
	code := 0
	for l := 1; l <= maxCodeBits; l++ {
		offsets[l+1] = offsets[l] + h.count[l]
		code = (code + int(h.count[l-1])) << 1
		nextCode[l] = code
	}
	h.fast = [1 << fastBits]uint16{}
	for sym, l := range lengths {
		if l == 0 {
			continue
		}
		h.symbols[offsets[l]] = uint16(sym)
		offsets[l]++
		c := nextCode[l]
		nextCode[l]++
		if l <= fastBits {
			// Codes are sent most significant bit first into an LSB-first bit stream, so the
			// table is indexed by the reversed code, repeated for every value of the bits after it.
			reversed := int(bits.Reverse16(uint16(c)) >> (16 - l))
			for i := reversed; i < len(h.fast); i += 1 << l {
				h.fast[i] = uint16(sym)<<4 | uint16(l)
			}
		}
	}
	return true
}

// errNeedInput signals that a unit could not be decoded with the input at hand.
var errNeedInput = errors.New("need more input")

// decode reads one symbol. It returns errNeedInput (without advancing) when the input ends
// inside the code and errCorrupt when the bits match no code.
func (h *huffman) decode(r *bitReader) (int, error) {
	next := r.peek() // codes are at most 15 bits, so one peek covers any code
	avail := r.avail()
	if e := h.fast[next&(1<<fastBits-1)]; e != 0 {
		l := int(e & 15)
		if l > avail {
			return 0, errNeedInput
		}
		r.pos += l
		return int(e >> 4), nil
	}
	code, first, index := 0, 0, 0
	for l := 1; l <= maxCodeBits; l++ {
		if l > avail {
			return 0, errNeedInput
		}
		code |= int(next>>(l-1)) & 1
		count := int(h.count[l])
		if code-first < count {
			r.pos += l
			return int(h.symbols[index+code-first]), nil
		}
		index += count
		first = (first + count) << 1
		code <<= 1
	}
	return 0, errCorrupt
}

// Lengths and distances: base values and extra bits per code, from RFC 1951 section 3.2.5.
var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	// codeLengthOrder is the order in which a dynamic block lists the code-length code lengths.
	codeLengthOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
)

// Where the inflater is in the DEFLATE stream.
type inflateState uint8

const (
	inflateBlockHeader inflateState = iota
	inflateStored
	inflateHuffman
	inflateEnd // the final block ended
)

// inflater decodes one DEFLATE stream into a sliding window.
type inflater struct {
	state     inflateState
	final     bool // the current block is the last one
	storedLen int  // bytes left in the current stored block
	// litLen and dist point at the codes of the current block: the dynamic ones read from its
	// header, or the fixed ones, which are built once per stream because servers that flush
	// after every event send many small fixed-code blocks.
	litLen, dist           *huffman
	dynLitLen, dynDist     huffman
	fixedLitLen, fixedDist *huffman
	// window holds up to windowSize bytes of history followed by new output; out marks the end.
	// Output is handed over and history slid down before a match could overflow it.
	window []byte
	out    int
	// flushed marks how much of window[:out] has been handed to the caller.
	flushed int
}

func (f *inflater) reset() {
	f.state = inflateBlockHeader
	f.final = false
	f.storedLen = 0
	f.out, f.flushed = 0, 0
}

// step decodes as much as the input allows. emit receives output whenever the window fills;
// the caller takes the rest from pending after step returns. It returns nil when the final
// block has ended, errNeedInput when the input ran out, or a decoding or emit error.
func (f *inflater) step(r *bitReader, emit func([]byte) error) error {
	if f.window == nil {
		f.window = make([]byte, 2*windowSize)
	}
	for {
		switch f.state {
		case inflateBlockHeader:
			if err := f.readBlockHeader(r); err != nil {
				return err
			}
		case inflateStored:
			if err := f.copyStored(r, emit); err != nil {
				return err
			}
		case inflateHuffman:
			if err := f.decodeSymbols(r, emit); err != nil {
				return err
			}
		case inflateEnd:
			return nil
		}
	}
}

// pending returns decoded bytes not yet handed over and marks them handed over.
func (f *inflater) pending() []byte {
	p := f.window[f.flushed:f.out]
	f.flushed = f.out
	return p
}

// makeRoom hands over pending output and slides the window when fewer than n bytes are free.
func (f *inflater) makeRoom(n int, emit func([]byte) error) error {
	if f.out+n <= len(f.window) {
		return nil
	}
	if err := emit(f.pending()); err != nil {
		return err
	}
	keep := min(f.out, windowSize)
	copy(f.window, f.window[f.out-keep:f.out])
	f.out, f.flushed = keep, keep
	return nil
}

func (f *inflater) readBlockHeader(r *bitReader) error {
	start := r.pos
	header, ok := r.bits(3)
	if !ok {
		return errNeedInput
	}
	f.final = header&1 == 1
	switch header >> 1 {
	case 0: // stored
		r.alignToByte()
		if r.avail() < 32 {
			r.pos = start
			return errNeedInput
		}
		length, _ := r.bits(16)
		inverse, _ := r.bits(16)
		if length != ^inverse&0xffff {
			return errCorrupt
		}
		f.storedLen = int(length)
		f.state = inflateStored
	case 1: // fixed Huffman codes
		if f.fixedLitLen == nil {
			f.buildFixedCodes()
		}
		f.litLen, f.dist = f.fixedLitLen, f.fixedDist
		f.state = inflateHuffman
	case 2: // dynamic Huffman codes
		if err := f.readDynamicCodes(r); err != nil {
			if errors.Is(err, errNeedInput) {
				r.pos = start
			}
			return err
		}
		f.litLen, f.dist = &f.dynLitLen, &f.dynDist
		f.state = inflateHuffman
	default:
		return errCorrupt
	}
	return nil
}

// buildFixedCodes builds the fixed codes of RFC 1951 section 3.2.6.
func (f *inflater) buildFixedCodes() {
	var lengths [numLitLen]uint8
	for i := range lengths {
		switch {
		case i < 144:
			lengths[i] = 8
		case i < 256:
			lengths[i] = 9
		case i < 280:
			lengths[i] = 7
		default:
			lengths[i] = 8
		}
	}
	f.fixedLitLen = new(huffman)
	f.fixedLitLen.init(lengths[:])
	var distLengths [numDist]uint8
	for i := range distLengths {
		distLengths[i] = 5
	}
	f.fixedDist = new(huffman)
	f.fixedDist.init(distLengths[:])
}

func (f *inflater) readDynamicCodes(r *bitReader) error {
	counts, ok := r.bits(14)
	if !ok {
		return errNeedInput
	}
	nLit := int(counts&0x1f) + 257
	nDist := int(counts>>5&0x1f) + 1
	nCodeLen := int(counts>>10) + 4
	if nLit > 286 || nDist > 30 {
		return errCorrupt
	}
	var codeLenLengths [19]uint8
	for i := range nCodeLen {
		l, ok := r.bits(3)
		if !ok {
			return errNeedInput
		}
		codeLenLengths[codeLengthOrder[i]] = uint8(l)
	}
	var codeLen huffman
	if !codeLen.init(codeLenLengths[:]) {
		return errCorrupt
	}
	var lengths [286 + 30]uint8
	for i := 0; i < nLit+nDist; {
		sym, err := codeLen.decode(r)
		if err != nil {
			return err
		}
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var repeat uint32
		var value uint8
		switch sym {
		case 16:
			if i == 0 {
				return errCorrupt
			}
			value = lengths[i-1]
			if repeat, ok = r.bits(2); !ok {
				return errNeedInput
			}
			repeat += 3
		case 17:
			if repeat, ok = r.bits(3); !ok {
				return errNeedInput
			}
			repeat += 3
		default:
			if repeat, ok = r.bits(7); !ok {
				return errNeedInput
			}
			repeat += 11
		}
		if i+int(repeat) > nLit+nDist {
			return errCorrupt
		}
		for range repeat {
			lengths[i] = value
			i++
		}
	}
	if lengths[256] == 0 { // a block must be able to end
		return errCorrupt
	}
	if !f.dynLitLen.init(lengths[:nLit]) || !f.dynDist.init(lengths[nLit:nLit+nDist]) {
		return errCorrupt
	}
	return nil
}

func (f *inflater) copyStored(r *bitReader, emit func([]byte) error) error {
	for f.storedLen > 0 {
		at := r.pos >> 3 // stored data is byte aligned
		n := min(f.storedLen, len(r.in)-at, windowSize)
		if n == 0 {
			return errNeedInput
		}
		if err := f.makeRoom(n, emit); err != nil {
			return err
		}
		copy(f.window[f.out:], r.in[at:at+n])
		f.out += n
		r.pos += n * 8
		f.storedLen -= n
	}
	f.endBlock()
	return nil
}

func (f *inflater) endBlock() {
	if f.final {
		f.state = inflateEnd
	} else {
		f.state = inflateBlockHeader
	}
}

func (f *inflater) decodeSymbols(r *bitReader, emit func([]byte) error) error {
	for {
		if err := f.makeRoom(maxMatchLen, emit); err != nil {
			return err
		}
		start := r.pos
		sym, err := f.litLen.decode(r)
		if err != nil {
			return err
		}
		switch {
		case sym < 256:
			f.window[f.out] = byte(sym)
			f.out++
			continue
		case sym == 256:
			f.endBlock()
			return nil
		case sym > 285:
			return errCorrupt
		}
		length, distance, err := f.readMatch(r, sym-257)
		if err != nil {
			if errors.Is(err, errNeedInput) {
				r.pos = start
			}
			return err
		}
		if distance > f.out {
			return errCorrupt // reaches before the start of the stream
		}
		// Byte by byte: a match may overlap the bytes it is producing.
		from := f.out - distance
		for i := range length {
			f.window[f.out+i] = f.window[from+i]
		}
		f.out += length
	}
}

func (f *inflater) readMatch(r *bitReader, lengthCode int) (length, distance int, err error) {
	extra, ok := r.bits(int(lengthExtra[lengthCode]))
	if !ok {
		return 0, 0, errNeedInput
	}
	length = int(lengthBase[lengthCode]) + int(extra)
	distCode, err := f.dist.decode(r)
	if err != nil {
		return 0, 0, err
	}
	if distCode >= len(distBase) {
		return 0, 0, errCorrupt
	}
	if extra, ok = r.bits(int(distExtra[distCode])); !ok {
		return 0, 0, errNeedInput
	}
	return length, int(distBase[distCode]) + int(extra), nil
}
