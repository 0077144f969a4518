package llmapi

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"
)

// DefaultMaxDepth is the JSON nesting limit ParseRequest applies when given a limit below 1.
// Real chat requests nest a handful of levels (messages → content parts → tool schemas); JSON
// Schema in tool definitions is the deepest thing seen in practice and stays well under it.
const DefaultMaxDepth = 64

// Request is what the gateway needs from a client's request body.
type Request struct {
	Model        string
	HasModel     bool
	Stream       bool // "stream": true
	IncludeUsage bool // stream_options.include_usage == true
	// TextBytes is the summed raw (still escaped) byte length of every string value in the body
	// except the model's: message contents, system prompts, tool descriptions and schemas, and
	// so on; keys do not count. It sizes the prompt for estimating tokens when a backend reports
	// no usage, without a second pass over the body.
	TextBytes int
	// MaxOutputTokens is the most output the request lets the backend produce: the largest of
	// max_tokens, max_completion_tokens and max_output_tokens given as a whole non-negative
	// number, whichever the API reads; 0 when the request names none.
	MaxOutputTokens int64
}

// RequestError is a client error in a request body. Message is safe to return to the client
// (it never echoes body content beyond key names); Param names the offending field, OpenAI
// style ("model", "stream_options.include_usage"), or is empty for whole-body problems.
type RequestError struct {
	Message string
	Param   string
}

func (e *RequestError) Error() string { return e.Message }

// Field names the request scanner looks for.
const (
	keyModel               = "model"
	keyStream              = "stream"
	keyStreamOptions       = "stream_options"
	keyIncludeUsage        = "include_usage"
	keyMaxTokens           = "max_tokens"
	keyMaxCompletionTokens = "max_completion_tokens"
	keyMaxOutputTokens     = "max_output_tokens"
)

// The same names as byte slices, for bytes.EqualFold without a conversion per key.
var (
	foldModel         = []byte(keyModel)
	foldStream        = []byte(keyStream)
	foldStreamOptions = []byte(keyStreamOptions)
	foldIncludeUsage  = []byte(keyIncludeUsage)
	// The output ceilings: a case variant would let a backend produce more than the gateway
	// reserved for.
	foldCeilings = [][]byte{[]byte(keyMaxTokens), []byte(keyMaxCompletionTokens), []byte(keyMaxOutputTokens)}
)

// requestLayout is a parsed request plus the byte offsets ForceIncludeUsage edits.
type requestLayout struct {
	req Request
	// topLastValueEnd is where a new top-level member can be appended: just past the last
	// member's value, or just past the opening brace of an empty object.
	topLastValueEnd int
	topEmpty        bool
	// streamOptions value span [start, end) or start = -1 when the member is absent.
	streamOptionsStart, streamOptionsEnd int
	streamOptionsNull                    bool
	streamOptionsEmpty                   bool
	// includeUsage value span, or start = -1 when absent.
	includeUsageStart, includeUsageEnd int
	includeUsageTrue                   bool
}

// ParseRequest scans a JSON request body for the fields of Request without decoding the rest
// (bodies can be large chat histories), validating that the whole body is well-formed JSON.
// maxDepth bounds nesting: the top-level object is level 1, so {"a":[{}]} has three levels
// (values below 1 mean DefaultMaxDepth). Depth is checked as containers open, so a
// million-deep "[[[[..." fails after maxDepth bytes of work, not a million.
//
// Every failure is a *RequestError: malformed or truncated JSON, a body that is not an object,
// nesting over maxDepth, a model that is not a valid UTF-8 string, a stream that is not a
// boolean or null, a stream_options that is not an object or null, an include_usage that is not
// a boolean or null.
//
// Duplicate "model", "stream", "stream_options" or "include_usage" keys are rejected rather
// than resolved: JSON parsers disagree on which duplicate wins, and the model the gateway meters
// and routes on must be the model the backend serves. A key spelled with escapes
// ("mod\u0065l") is the same key, as it is to every JSON parser.
//
// Case variants of those keys ("Stream", "MODEL", "Include_Usage", and "ſtream" with U+017F,
// which Unicode case folding maps to 's') are rejected too. Case-insensitive decoders such as
// Go's encoding/json match them to the real field, so a backend would stream or switch models
// on a key the gateway never read. The comparison is Unicode simple case folding
// (strings.EqualFold), the rule encoding/json uses, applied to the decoded key.
func ParseRequest(body []byte, maxDepth int) (Request, error) {
	if maxDepth < 1 {
		maxDepth = DefaultMaxDepth
	}
	layout, err := scanRequest(body, maxDepth)
	if err != nil {
		return Request{}, err
	}
	return layout.req, nil
}

// ForceIncludeUsage returns the body with stream_options.include_usage set to true, so that a
// streaming backend reports usage in its final chunk. Every other byte stays as it was: the
// member is added after the last top-level member, added first inside an existing
// stream_options object, or overwritten in place; a null stream_options is replaced. When
// include_usage is already true the body is returned as is (the same slice).
//
// The body must pass ParseRequest; nesting is not limited here beyond what the input holds, so a
// body accepted under any depth limit can be rewritten.
func ForceIncludeUsage(body []byte) ([]byte, error) {
	layout, err := scanRequest(body, len(body)+1)
	if err != nil {
		return nil, err
	}
	const member = `"include_usage":true`
	switch {
	case layout.includeUsageTrue:
		return body, nil
	case layout.includeUsageStart >= 0:
		return splice(body, layout.includeUsageStart, layout.includeUsageEnd, "true"), nil
	case layout.streamOptionsStart >= 0 && layout.streamOptionsNull:
		return splice(body, layout.streamOptionsStart, layout.streamOptionsEnd, "{"+member+"}"), nil
	case layout.streamOptionsStart >= 0:
		at := layout.streamOptionsStart + 1 // just inside the opening brace
		if layout.streamOptionsEmpty {
			return splice(body, at, at, member), nil
		}
		return splice(body, at, at, member+","), nil
	default:
		at := layout.topLastValueEnd
		if layout.topEmpty {
			return splice(body, at, at, `"stream_options":{`+member+`}`), nil
		}
		return splice(body, at, at, `,"stream_options":{`+member+`}`), nil
	}
}

// splice returns a new slice: body with [start, end) replaced by insert.
func splice(body []byte, start, end int, insert string) []byte {
	out := make([]byte, 0, len(body)-(end-start)+len(insert))
	out = append(out, body[:start]...)
	out = append(out, insert...)
	return append(out, body[end:]...)
}

func scanRequest(body []byte, maxDepth int) (requestLayout, error) {
	layout := requestLayout{streamOptionsStart: -1, includeUsageStart: -1}
	s := scanner{data: body, maxDepth: maxDepth}
	switch s.peek() {
	case 0:
		if s.pos >= len(body) {
			return layout, &RequestError{Message: "The request body is empty; expected a JSON object."}
		}
	case '{':
	default:
		// Validate anyway so a malformed non-object gets the more precise message.
		if err := s.skipValue(0); err != nil {
			return layout, requestJSONError(err)
		}
		return layout, &RequestError{Message: "The request body must be a JSON object."}
	}
	it, err := s.enterObject(0)
	if err != nil {
		return layout, requestJSONError(err)
	}
	var seenModel, seenStream, seenOptions bool
	for {
		key, ok, err := s.next(&it)
		if err != nil {
			return layout, requestJSONError(err)
		}
		if !ok {
			break
		}
		switch string(key) {
		case keyModel:
			if seenModel {
				return layout, duplicateKey(keyModel)
			}
			seenModel = true
			if err := readModel(&s, &layout.req); err != nil {
				return layout, err
			}
		case keyStream:
			if seenStream {
				return layout, duplicateKey(keyStream)
			}
			seenStream = true
			v, err := readOptionalBool(&s, keyStream)
			if err != nil {
				return layout, err
			}
			layout.req.Stream = v
		case keyStreamOptions:
			if seenOptions {
				return layout, duplicateKey(keyStreamOptions)
			}
			seenOptions = true
			if err := readStreamOptions(&s, &layout); err != nil {
				return layout, err
			}
		case keyMaxTokens, keyMaxCompletionTokens, keyMaxOutputTokens:
			// The largest counts, duplicates included: whichever the backend honours, the
			// output stays within it. A value that is no whole number is the backend's to refuse.
			n, ok, err := s.readTokenCount(it.depth)
			if err != nil {
				return layout, requestJSONError(err)
			}
			if ok {
				layout.req.MaxOutputTokens = max(layout.req.MaxOutputTokens, n)
			}
		default:
			if name := topLevelVariant(key); name != "" {
				return layout, caseVariantKey(name)
			}
			if err := s.skipValue(it.depth); err != nil {
				return layout, requestJSONError(err)
			}
		}
	}
	layout.req.TextBytes = s.stringBytes
	layout.topLastValueEnd = it.lastValueEnd
	layout.topEmpty = it.lastValueEnd == it.open+1
	if !s.atEnd() {
		return layout, &RequestError{Message: fmt.Sprintf(
			"The request body has unexpected data after the JSON object (offset %d).", s.pos)}
	}
	return layout, nil
}

func readModel(s *scanner, req *Request) error {
	if s.peek() != '"' {
		if _, err := s.readScalar(); err != nil {
			return requestJSONError(err)
		}
		return &RequestError{Message: "'model' must be a string.", Param: keyModel}
	}
	raw, escaped, err := s.readString()
	if err != nil {
		return requestJSONError(err)
	}
	var model []byte
	if escaped {
		model = appendUnescaped(make([]byte, 0, len(raw)), raw)
	} else {
		model = raw
	}
	if !utf8.Valid(model) {
		return &RequestError{Message: "'model' must be valid UTF-8.", Param: keyModel}
	}
	req.Model = string(model)
	req.HasModel = true
	return nil
}

// readOptionalBool reads true, false or null (false); any other value is a client error.
func readOptionalBool(s *scanner, param string) (bool, error) {
	switch s.peek() {
	case 't':
		return true, requestJSONError(s.readLiteral("true"))
	case 'f', 'n':
		_, err := s.readScalar()
		return false, requestJSONError(err)
	}
	if _, err := s.readScalar(); err != nil {
		return false, requestJSONError(err)
	}
	return false, &RequestError{Message: fmt.Sprintf("'%s' must be a boolean.", param), Param: param}
}

func readStreamOptions(s *scanner, layout *requestLayout) error {
	const param = keyStreamOptions
	switch s.peek() {
	case 'n':
		layout.streamOptionsStart = s.pos
		if err := s.readLiteral("null"); err != nil {
			return requestJSONError(err)
		}
		layout.streamOptionsNull = true
		layout.streamOptionsEnd = s.pos
		return nil
	case '{':
	default:
		if _, err := s.readScalar(); err != nil {
			return requestJSONError(err)
		}
		return &RequestError{Message: "'stream_options' must be an object.", Param: param}
	}
	layout.streamOptionsStart = s.pos
	it, err := s.enterObject(1)
	if err != nil {
		return requestJSONError(err)
	}
	seenInclude := false
	for {
		key, ok, err := s.next(&it)
		if err != nil {
			return requestJSONError(err)
		}
		if !ok {
			break
		}
		if string(key) != keyIncludeUsage {
			if bytes.EqualFold(key, foldIncludeUsage) {
				return caseVariantKey(keyStreamOptions + "." + keyIncludeUsage)
			}
			if err := s.skipValue(it.depth); err != nil {
				return requestJSONError(err)
			}
			continue
		}
		const includeParam = keyStreamOptions + "." + keyIncludeUsage
		if seenInclude {
			return duplicateKey(includeParam)
		}
		seenInclude = true
		layout.includeUsageStart = s.pos
		v, err := readOptionalBool(s, includeParam)
		if err != nil {
			return err
		}
		layout.includeUsageEnd = s.pos
		layout.includeUsageTrue = v
		layout.req.IncludeUsage = v
	}
	layout.streamOptionsEnd = s.pos
	layout.streamOptionsEmpty = it.lastValueEnd == it.open+1
	return nil
}

// topLevelVariant returns the top-level key the scanner reads that key case-folds to, or "" if
// none. key is known not to be byte-equal to any of them.
func topLevelVariant(key []byte) string {
	// A variant has at least as many bytes as the name and at most three per letter (the
	// Kelvin sign is the widest letter that folds to ASCII), so most keys skip the fold.
	switch {
	case len(key) < len(keyModel) || len(key) > 3*len(keyMaxCompletionTokens):
		return ""
	case bytes.EqualFold(key, foldModel):
		return keyModel
	case bytes.EqualFold(key, foldStream):
		return keyStream
	case bytes.EqualFold(key, foldStreamOptions):
		return keyStreamOptions
	}
	for _, ceiling := range foldCeilings {
		if bytes.EqualFold(key, ceiling) {
			return string(ceiling)
		}
	}
	return ""
}

// caseVariantKey is the error for a key that differs from param only in letter case. The key
// itself is not echoed: it may hold any characters, and the name it imitates says enough.
func caseVariantKey(param string) error {
	return &RequestError{
		Message: fmt.Sprintf("The request body has a key that is a case variant of '%s'; "+
			"keys are case-sensitive, so use '%s' exactly.", param, param),
		Param: param,
	}
}

func duplicateKey(param string) error {
	return &RequestError{
		Message: fmt.Sprintf("The request body has more than one '%s' key.", param),
		Param:   param,
	}
}

// requestJSONError turns a scanner error into a client-facing RequestError (nil stays nil).
func requestJSONError(err error) error {
	if err == nil {
		return nil
	}
	var reqErr *RequestError
	if errors.As(err, &reqErr) {
		return err
	}
	var deep *depthError
	if errors.As(err, &deep) {
		return &RequestError{Message: fmt.Sprintf("The request body nests JSON deeper than %d levels.", deep.limit)}
	}
	return &RequestError{Message: "The request body is not valid JSON: " + err.Error() + "."}
}
