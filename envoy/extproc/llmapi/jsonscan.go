package llmapi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner walks a JSON document in place. Callers navigate the few members they care about and
// skip (while still validating) everything else, so a large body is checked for well-formedness
// in one pass without building any values. Skipping is iterative, so nesting depth costs bits in
// a stack rather than goroutine stack frames, and the depth limit is enforced as containers open.
type scanner struct {
	data     []byte
	pos      int
	maxDepth int
	// stringBytes sums the raw (still escaped) length of every string value readScalar consumed,
	// keys excluded: the request parser reports it as the size of the prompt text without a
	// second pass over the body.
	stringBytes int
	// keyBuf holds a decoded object key when the raw key contains escapes; the keys the parsers
	// look for are all short (a case variant of one is at most three bytes per letter), so a
	// longer decoded key cannot match any of them.
	keyBuf [64]byte
}

// depthError reports a document nesting deeper than the scanner's limit.
type depthError struct {
	limit  int
	offset int
}

func (e *depthError) Error() string {
	return fmt.Sprintf("JSON nests deeper than %d levels (offset %d)", e.limit, e.offset)
}

// syntaxError describes malformed JSON. It is only built on the failure path.
type syntaxError struct {
	msg    string
	offset int
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at offset %d: %s", e.offset, e.msg)
}

func (s *scanner) fail(msg string) error {
	return &syntaxError{msg: msg, offset: s.pos}
}

func (s *scanner) failUnexpected() error {
	if s.pos >= len(s.data) {
		return s.fail("unexpected end of input")
	}
	return s.fail(fmt.Sprintf("unexpected character %q", s.data[s.pos]))
}

func (s *scanner) tooDeep() error {
	return &depthError{limit: s.maxDepth, offset: s.pos}
}

func (s *scanner) skipWS() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte without consuming it, or 0 at the end of input.
func (s *scanner) peek() byte {
	s.skipWS()
	if s.pos >= len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

// atEnd reports whether only whitespace remains.
func (s *scanner) atEnd() bool {
	s.skipWS()
	return s.pos >= len(s.data)
}

// stringSpecial marks the bytes that end the fast path of string scanning: the closing quote,
// an escape, and the control characters JSON forbids inside strings.
var stringSpecial = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'] = true
	t['\\'] = true
	return t
}()

// readString consumes a string starting at the opening quote and returns its raw content
// (between the quotes, escapes left in place) and whether it contains escapes.
func (s *scanner) readString() (raw []byte, escaped bool, err error) {
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return nil, false, s.failUnexpected()
	}
	s.pos++
	start := s.pos
	data := s.data
	for i := s.pos; i < len(data); {
		i += firstSpecial(data[i:])
		if i >= len(data) {
			break
		}
		switch data[i] {
		case '"':
			s.pos = i + 1
			return data[start:i], escaped, nil
		case '\\':
			escaped = true
			if i+1 >= len(data) {
				s.pos = len(data)
				return nil, false, s.fail("unexpected end of input in string escape")
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) {
					s.pos = len(data)
					return nil, false, s.fail("unexpected end of input in \\u escape")
				}
				for _, h := range data[i+2 : i+6] {
					if hexValue(h) < 0 {
						s.pos = i
						return nil, false, s.fail("invalid \\u escape")
					}
				}
				i += 6
			default:
				s.pos = i
				return nil, false, s.fail("invalid escape character")
			}
		default:
			s.pos = i
			return nil, false, s.fail("control character in string")
		}
	}
	s.pos = len(data)
	return nil, false, s.fail("unexpected end of input in string")
}

// firstSpecial returns the index of the first quote, backslash or control character in b, or
// len(b). Strings are most of a chat body, so it tests eight bytes per step with the usual
// word-at-a-time tricks: (w - n*ones) & ^w & highs flags bytes below n, and a byte equal to c
// is a zero byte of w ^ c*ones. Only the lowest flag is exact, which is the one used.
func firstSpecial(b []byte) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		control := (w - 0x20*ones) & ^w & highs
		q := w ^ ('"' * ones)
		quote := (q - ones) & ^q & highs
		e := w ^ ('\\' * ones)
		escape := (e - ones) & ^e & highs
		if m := control | quote | escape; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(b); i++ {
		if stringSpecial[b[i]] {
			return i
		}
	}
	return len(b)
}

func hexValue(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// appendUnescaped appends the decoded form of a raw, already validated JSON string to dst.
// Invalid surrogates become U+FFFD, as encoding/json does.
func appendUnescaped(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		esc := raw[i+1]
		i += 2
		switch esc {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			var r rune
			r, i = unicodeEscape(raw, i)
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, esc)
		}
	}
	return dst
}

// unicodeEscape decodes the \uXXXX escape whose hex digits start at raw[i], joining a
// surrogate pair written as two escapes; a lone surrogate is U+FFFD. It returns the rune and
// the index after what it consumed.
func unicodeEscape(raw []byte, i int) (rune, int) {
	r := rune(hex4(raw[i:]))
	i += 4
	if !utf16.IsSurrogate(r) {
		return r, i
	}
	r2 := utf8.RuneError
	if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
		r2 = rune(hex4(raw[i+2:]))
	}
	if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
		return dec, i + 6
	}
	return utf8.RuneError, i
}

func hex4(b []byte) int {
	return hexValue(b[0])<<12 | hexValue(b[1])<<8 | hexValue(b[2])<<4 | hexValue(b[3])
}

// unescapedLen returns len(appendUnescaped(nil, raw)) for a raw, already validated JSON string
// without building the decoded string.
func unescapedLen(raw []byte) int {
	n := 0
	for i := 0; i < len(raw); {
		j := bytes.IndexByte(raw[i:], '\\')
		if j < 0 {
			return n + len(raw) - i
		}
		n += j
		i += j
		esc := raw[i+1]
		i += 2
		if esc != 'u' {
			n++
			continue
		}
		var r rune
		r, i = unicodeEscape(raw, i)
		n += utf8.RuneLen(r)
	}
	return n
}

// stringLen returns the decoded length of a raw JSON string.
func stringLen(raw []byte, escaped bool) int {
	if !escaped {
		return len(raw)
	}
	return unescapedLen(raw)
}

// decodeShort returns the decoded form of a raw string when it fits in buf, or nil when it does
// not (such a string cannot equal any of the short names the parsers compare against).
func decodeShort(buf []byte, raw []byte, escaped bool) []byte {
	if !escaped {
		return raw
	}
	// Every escape decodes to at most as many bytes as it occupies, so a raw string that fits
	// always decodes into buf without growing it. A longer raw string may still decode to a
	// short name ("\u0073\u0074..." spells one letter per six bytes), so its decoded length
	// decides, or a fully escaped key would slip past the checks on the name it spells.
	if len(raw) > cap(buf) && unescapedLen(raw) > cap(buf) {
		return nil
	}
	return appendUnescaped(buf[:0], raw)
}

func (s *scanner) readLiteral(lit string) error {
	if len(s.data)-s.pos < len(lit) || string(s.data[s.pos:s.pos+len(lit)]) != lit {
		return s.fail("invalid literal")
	}
	s.pos += len(lit)
	return nil
}

// readNumber consumes a number per the JSON grammar and returns its raw bytes.
func (s *scanner) readNumber() ([]byte, error) {
	data := s.data
	start := s.pos
	i := s.pos
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return nil, s.failUnexpected()
	}
	if i < len(data) && data[i] == '.' {
		i++
		digits := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		if i == digits {
			s.pos = i
			return nil, s.fail("missing digits after decimal point")
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		digits := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		if i == digits {
			s.pos = i
			return nil, s.fail("missing digits in exponent")
		}
	}
	s.pos = i
	return data[start:i], nil
}

// readScalar consumes one string, number or literal; it reports false when the next value is a
// container instead (nothing is consumed then).
func (s *scanner) readScalar() (bool, error) {
	switch s.peek() {
	case '{', '[':
		return false, nil
	case '"':
		raw, _, err := s.readString()
		s.stringBytes += len(raw)
		return true, err
	case 't':
		return true, s.readLiteral("true")
	case 'f':
		return true, s.readLiteral("false")
	case 'n':
		return true, s.readLiteral("null")
	default:
		_, err := s.readNumber()
		return true, err
	}
}

// containerStack remembers, one bit per level, whether each open container is an object. The
// first 128 levels live inline so ordinary documents never allocate.
type containerStack struct {
	inline   [2]uint64
	overflow []uint64
	n        int
}

func (c *containerStack) push(isObject bool) {
	word, bit := c.n/64, uint(c.n%64)
	var w *uint64
	if word < len(c.inline) {
		w = &c.inline[word]
	} else {
		for word-len(c.inline) >= len(c.overflow) {
			c.overflow = append(c.overflow, 0)
		}
		w = &c.overflow[word-len(c.inline)]
	}
	if isObject {
		*w |= 1 << bit
	} else {
		*w &^= 1 << bit
	}
	c.n++
}

func (c *containerStack) topIsObject() bool {
	i := c.n - 1
	word, bit := i/64, uint(i%64)
	if word < len(c.inline) {
		return c.inline[word]&(1<<bit) != 0
	}
	return c.overflow[word-len(c.inline)]&(1<<bit) != 0
}

// skipValue consumes and validates one value of any kind. depth is the nesting depth of the
// container holding the value (0 at the top level); containers inside count from there.
func (s *scanner) skipValue(depth int) error {
	var stack containerStack
	for {
		// A value is expected here.
		scalar, err := s.readScalar()
		if err != nil {
			return err
		}
		if !scalar {
			isObject := s.data[s.pos] == '{'
			if depth+stack.n+1 > s.maxDepth {
				return s.tooDeep()
			}
			s.pos++
			closer := byte(']')
			if isObject {
				closer = '}'
			}
			if s.peek() == closer {
				s.pos++
			} else {
				stack.push(isObject)
				if isObject {
					if err := s.readKeyColon(); err != nil {
						return err
					}
				}
				continue
			}
		}
		// A value just ended: close containers until one continues with a comma.
		for {
			if stack.n == 0 {
				return nil
			}
			c := s.peek()
			isObject := stack.topIsObject()
			if c == ',' {
				s.pos++
				if isObject {
					if err := s.readKeyColon(); err != nil {
						return err
					}
				}
				break
			}
			if (isObject && c == '}') || (!isObject && c == ']') {
				s.pos++
				stack.n--
				continue
			}
			return s.failUnexpected()
		}
	}
}

// readKeyColon consumes an object key and the colon after it.
func (s *scanner) readKeyColon() error {
	s.skipWS()
	if _, _, err := s.readString(); err != nil {
		return err
	}
	if s.peek() != ':' {
		return s.failUnexpected()
	}
	s.pos++
	return nil
}

// objectIter walks the members of one object. After next returns a key, the caller must
// consume the member's value (typed read or skipValue(it.depth)) before calling next again.
type objectIter struct {
	depth   int // nesting depth of this object; 1 for a top-level object
	started bool
	open    int // offset of the opening brace
	close   int // offset of the closing brace, once next has returned false
	// lastValueEnd is the offset just past the previous member's value, or just past the
	// opening brace before the first member.
	lastValueEnd int
}

// enterObject consumes the opening brace of an object whose parent is at parentDepth.
func (s *scanner) enterObject(parentDepth int) (objectIter, error) {
	if s.peek() != '{' {
		return objectIter{}, s.failUnexpected()
	}
	if parentDepth+1 > s.maxDepth {
		return objectIter{}, s.tooDeep()
	}
	it := objectIter{depth: parentDepth + 1, open: s.pos}
	s.pos++
	it.lastValueEnd = s.pos
	return it, nil
}

// next advances to the next member and returns its decoded key (nil when the key is too long to
// be one the parsers look for), or ok=false at the closing brace. The key aliases scanner memory
// and is valid until the next call.
func (s *scanner) next(it *objectIter) (key []byte, ok bool, err error) {
	c := s.peek()
	if it.started {
		it.lastValueEnd = s.pos
		for it.lastValueEnd > 0 && isSpace(s.data[it.lastValueEnd-1]) {
			it.lastValueEnd--
		}
		switch c {
		case '}':
			it.close = s.pos
			s.pos++
			return nil, false, nil
		case ',':
			s.pos++
			c = s.peek()
		default:
			return nil, false, s.failUnexpected()
		}
	} else if c == '}' {
		it.started = true
		it.close = s.pos
		s.pos++
		return nil, false, nil
	}
	it.started = true
	if c != '"' {
		return nil, false, s.failUnexpected()
	}
	raw, escaped, err := s.readString()
	if err != nil {
		return nil, false, err
	}
	if s.peek() != ':' {
		return nil, false, s.failUnexpected()
	}
	s.pos++
	key = decodeShort(s.keyBuf[:], raw, escaped)
	s.skipWS()
	return key, true, nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

// readTokenCount reads a member value meant to be a token count. Besides a plain integer it
// accepts the forms backends serialising counts through floats or strings produce: an integral
// number in any JSON spelling (6.0, 6e0, 1.2e1, 6E+1) and a string holding a plain decimal
// integer ("6"). Anything else (null, a fraction, a negative number, a value beyond int64, any
// other string, an object) is consumed and reported as not set, so one odd field never hides the
// rest of the usage.
func (s *scanner) readTokenCount(depth int) (int64, bool, error) {
	switch c := s.peek(); {
	case c == '"':
		raw, escaped, err := s.readString()
		if err != nil || escaped {
			return 0, false, err
		}
		n, ok := decimalString(raw)
		return n, ok, nil
	case c == '-' || (c >= '0' && c <= '9'):
		raw, err := s.readNumber()
		if err != nil {
			return 0, false, err
		}
		n, ok := integralNumber(raw)
		return n, ok, nil
	default:
		return 0, false, s.skipValue(depth)
	}
}

// decimalString parses a string token count: one or more ASCII digits without sign, spaces or
// a leading zero (other than "0" itself), the way an integer is written in JSON, so that no
// reader can take it for something else (an octal, a padded field).
func decimalString(raw []byte) (int64, bool) {
	if len(raw) == 0 || (raw[0] == '0' && len(raw) > 1) {
		return 0, false
	}
	var n int64
	for _, d := range raw {
		if d < '0' || d > '9' {
			return 0, false
		}
		var ok bool
		if n, ok = mulAdd10(n, d-'0'); !ok {
			return 0, false
		}
	}
	return n, true
}

// integralNumber returns the value of a JSON number (as validated by readNumber) when it is a
// non-negative integer that fits in int64, however it is spelt. The value is computed exactly
// from the decimal digits rather than through float64, so 9007199254740993.0 is not rounded.
func integralNumber(raw []byte) (int64, bool) {
	if len(raw) == 0 || raw[0] == '-' {
		return 0, false
	}
	i := 0
	for i < len(raw) && raw[i] >= '0' && raw[i] <= '9' {
		i++
	}
	intPart, frac := raw[:i], raw[i:i]
	if i < len(raw) && raw[i] == '.' {
		j := i + 1
		for j < len(raw) && raw[j] >= '0' && raw[j] <= '9' {
			j++
		}
		frac, i = raw[i+1:j], j
	}
	exp := 0
	if i < len(raw) { // 'e' or 'E'
		i++
		neg := raw[i] == '-'
		if raw[i] == '+' || raw[i] == '-' {
			i++
		}
		for ; i < len(raw); i++ {
			// Saturate: any exponent this large already decides the outcome, and saturating
			// keeps "1e99999999999999999999" from wrapping around.
			if exp < 1<<20 {
				exp = exp*10 + int(raw[i]-'0')
			}
		}
		if neg {
			exp = -exp
		}
	}
	// The value is the digits of intPart and frac read as one integer, times 10^scale.
	// Trailing zeros move into the scale and leading zeros are dropped, leaving the
	// significant digits.
	scale := exp - len(frac)
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
		scale++
	}
	if len(frac) == 0 {
		for len(intPart) > 0 && intPart[len(intPart)-1] == '0' {
			intPart = intPart[:len(intPart)-1]
			scale++
		}
	}
	for len(intPart) > 0 && intPart[0] == '0' {
		intPart = intPart[1:]
	}
	if len(intPart) == 0 {
		for len(frac) > 0 && frac[0] == '0' {
			frac = frac[1:]
		}
	}
	digits := len(intPart) + len(frac)
	switch {
	case digits == 0:
		return 0, true
	case scale < 0:
		return 0, false // a fraction
	case digits+scale > 19: // int64 holds at most 19 decimal digits
		return 0, false
	}
	var n int64
	var ok bool
	for _, d := range intPart {
		if n, ok = mulAdd10(n, d-'0'); !ok {
			return 0, false
		}
	}
	for _, d := range frac {
		if n, ok = mulAdd10(n, d-'0'); !ok {
			return 0, false
		}
	}
	for range scale {
		if n, ok = mulAdd10(n, 0); !ok {
			return 0, false
		}
	}
	return n, true
}

// mulAdd10 returns n*10 + d and whether that fits in int64 (n >= 0, d <= 9).
func mulAdd10(n int64, d byte) (int64, bool) {
	v := int64(d)
	if n > (1<<63-1-v)/10 {
		return 0, false
	}
	return n*10 + v, true
}

// readTextLen consumes a value and returns its decoded length if it is a string, else 0.
func (s *scanner) readTextLen(parentDepth int) (int64, error) {
	if s.peek() != '"' {
		return 0, s.skipValue(parentDepth)
	}
	raw, escaped, err := s.readString()
	if err != nil {
		return 0, err
	}
	return int64(stringLen(raw, escaped)), nil
}

// readRawLen consumes a value of any kind and returns its raw length as sent.
func (s *scanner) readRawLen(parentDepth int) (int64, error) {
	s.skipWS()
	start := s.pos
	err := s.skipValue(parentDepth)
	return int64(s.pos - start), err
}

// arrayIter walks the elements of one array; like objectIter, the caller consumes each element
// before asking for the next.
type arrayIter struct {
	depth   int // nesting depth of this array
	started bool
}

// enterArray consumes the opening bracket of an array whose parent is at parentDepth. A value
// that is not an array is skipped instead and reported with ok false.
func (s *scanner) enterArray(parentDepth int) (it arrayIter, ok bool, err error) {
	if s.peek() != '[' {
		return arrayIter{}, false, s.skipValue(parentDepth)
	}
	if parentDepth+1 > s.maxDepth {
		return arrayIter{}, false, s.tooDeep()
	}
	s.pos++
	return arrayIter{depth: parentDepth + 1}, true, nil
}

// nextElement advances to the next element, or reports false after the closing bracket.
func (s *scanner) nextElement(it *arrayIter) (bool, error) {
	c := s.peek()
	if !it.started {
		it.started = true
		if c == ']' {
			s.pos++
			return false, nil
		}
		return true, nil
	}
	switch c {
	case ']':
		s.pos++
		return false, nil
	case ',':
		s.pos++
		return true, nil
	}
	return false, s.failUnexpected()
}
