package llmapi

import (
	"errors"
	"strings"
)

// Format is the wire format of one LLM API: what a request body says, how the API reports token
// usage in a complete JSON response and in a stream of server-sent events, and how much text an
// answer carries. Each format lives in a file of its own; formatsByPath says which request paths
// use it. Adding an API is one more file and one more row there (plus fuzz seeds in testdata).
//
// Implementations are stateless and safe for concurrent use; a Stream keeps the state of one
// response.
type Format interface {
	// Name identifies the format in logs, for example "chat_completions".
	Name() string
	// Operation is the GenAI semantic conventions' gen_ai.operation.name of the API.
	Operation() string
	// NeedsIncludeUsage reports whether a streamed request reports usage only when it asks
	// for it with stream_options.include_usage, so a gateway that charges usage must set it.
	NeedsIncludeUsage() bool
	// EnvoyReadsStreamUsage reports whether Envoy's ai_protocol_manager filter reads this
	// API's stream usage, so a stream's chunks need not pass through the gateway's own parser.
	EnvoyReadsStreamUsage() bool
	// ParseRequest reads what the gateway needs from a request body; see the package function
	// ParseRequest.
	ParseRequest(body []byte, maxDepth int) (Request, error)
	// UsageFromJSON reads usage from a complete, non-streamed response body. A body without
	// usage yields a Usage with Known false and no error; malformed JSON, a body that is not
	// an object, or nesting beyond ResponseMaxDepth is an error.
	UsageFromJSON(body []byte) (Usage, error)
	// ResponseTextBytes returns the decoded byte length of the generated text in a complete,
	// non-streamed response body, for estimating output tokens when the backend reported no
	// usage. A malformed body or one that is not an object yields 0.
	ResponseTextBytes(body []byte) int64

	// readEvent reads the data of one server-sent event, whose SSE event name is name, into r
	// (which arrives zeroed): what the event contributes to the stream's usage and output. An
	// error means the data is not a JSON object; the event is then skipped whatever r holds.
	readEvent(data []byte, name *eventName, r *eventResult) error
	// usage converts the counters a response reported, named as the backend named them, into
	// the normalized Usage.
	usage(raw rawUsage) Usage
}

// The formats tollgate meters.
var (
	ChatCompletions   Format = chatCompletions{}
	Completions       Format = completions{}
	Responses         Format = responses{}
	AnthropicMessages Format = anthropicMessages{}
)

// formatsByPath is the one table from request path to format. Only exact paths match: a
// trailing slash or a sub-resource such as "/v1/messages/count_tokens" is not metered, because
// those do not generate tokens.
var formatsByPath = []struct {
	path   string
	format Format
}{
	{"/v1/chat/completions", ChatCompletions},
	{"/v1/completions", Completions},
	{"/v1/responses", Responses},
	{"/v1/messages", AnthropicMessages},
	{"/anthropic/v1/messages", AnthropicMessages},
}

// ForPath returns the format of a request path (":path", query string allowed), or nil when
// the path is not one tollgate meters.
func ForPath(path string) Format {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for _, row := range formatsByPath {
		if row.path == path {
			return row.format
		}
	}
	return nil
}

// Paths lists the request paths ForPath knows, in a fixed order: the only paths a gateway can
// meter.
func Paths() []string {
	paths := make([]string, len(formatsByPath))
	for i, row := range formatsByPath {
		paths[i] = row.path
	}
	return paths
}

// allFormats lists every format once, in the order of the path table.
func allFormats() []Format {
	var formats []Format
	for _, row := range formatsByPath {
		seen := false
		for _, f := range formats {
			seen = seen || f == row.format
		}
		if !seen {
			formats = append(formats, row.format)
		}
	}
	return formats
}

// eventName is the name an SSE "event:" field gave the event being read.
type eventName struct {
	buf  [48]byte
	n    int
	long bool // the name did not fit in buf: no event type a format knows
}

// eventResult is what one event contributes to a stream.
type eventResult struct {
	usage  rawUsage // counters to merge into the stream's usage (merged only when known)
	output bool     // the event carried generated output
	text   int64    // decoded bytes of generated text the event carried
	done   bool     // the stream's terminal event
}

// eventType is the type of an event a format tells apart by type (Responses, Anthropic): the
// JSON "type" member when the data has one, else the SSE event name.
type eventType struct {
	// buf[:n] is the decoded "type" member. A copy rather than a slice of the input, so the
	// struct holds no pointer into the scanner.
	buf [48]byte
	n   int
	set bool // the object has a string "type" member
}

// read reads a "type" member's value. A type too long to copy is no type the formats know: it
// is kept as the empty type, so it still overrides the SSE event name.
func (t *eventType) read(s *scanner, parentDepth int) error {
	if s.peek() != '"' {
		return s.skipValue(parentDepth)
	}
	raw, escaped, err := s.readString()
	if err != nil {
		return err
	}
	t.set, t.n = true, 0
	if typ := decodeShort(s.keyBuf[:], raw, escaped); len(typ) <= len(t.buf) {
		t.n = copy(t.buf[:], typ)
	}
	return nil
}

// of returns the event's type: the JSON "type" member if there was one, else the SSE event
// name (none if the name was too long).
func (t *eventType) of(name *eventName) []byte {
	switch {
	case t.set:
		return t.buf[:t.n]
	case !name.long:
		return name.buf[:name.n]
	default:
		return nil
	}
}

// document walks the top-level members of one JSON document that must be an object: a
// response body or the data of an event. Each format's readers loop over next and consume the
// value of every member they are handed; end checks nothing follows the object. The event
// readers loop themselves rather than share a walker taking a function value (or go through
// the Format interface with a scanner): passing the scanner's address to code the compiler
// cannot see would move it to the heap, an allocation per event. memberTextBytes, which reads
// one member, shares its loop by passing the scanner by value instead.
type document struct {
	s  scanner
	it objectIter
}

// errNotObject is returned for a JSON body or event that is valid JSON but not an object.
var errNotObject = errors.New("JSON value is not an object")

// open starts reading data, which must hold a JSON object; anything else is validated for the
// sake of the error and reported.
func (d *document) open(data []byte) error {
	d.s = scanner{data: data, maxDepth: ResponseMaxDepth}
	if c := d.s.peek(); c != '{' {
		if c == 0 && d.s.pos >= len(data) {
			return d.s.failUnexpected()
		}
		if err := d.s.skipValue(0); err != nil {
			return err
		}
		return errNotObject
	}
	var err error
	d.it, err = d.s.enterObject(0)
	return err
}

// next returns the next member's key (see scanner.next), or ok false after the last member.
func (d *document) next() (key []byte, ok bool, err error) { return d.s.next(&d.it) }

// depth is the nesting depth of the top-level object, which member values are read under.
func (d *document) depth() int { return d.it.depth }

// skip consumes the current member's value.
func (d *document) skip() error { return d.s.skipValue(d.it.depth) }

// end reports an error if anything but whitespace follows the object.
func (d *document) end() error {
	if !d.s.atEnd() {
		return d.s.fail("unexpected data after the JSON object")
	}
	return nil
}

// memberTextBytes returns what read measures in every top-level member named member of a
// complete response body, or 0 if the body is malformed or not an object. read gets the scanner
// by value and hands it back advanced: a pointer passed to a function value would move the
// scanner to the heap, an allocation per body.
func memberTextBytes(body []byte, member string, read func(s scanner, parentDepth int) (scanner, int64, error)) int64 {
	var d document
	if d.open(body) != nil {
		return 0
	}
	var total int64
	for {
		key, ok, err := d.next()
		if err != nil {
			return 0
		}
		if !ok {
			break
		}
		var n int64
		if string(key) == member {
			d.s, n, err = read(d.s, d.depth())
		} else {
			err = d.skip()
		}
		if err != nil {
			return 0
		}
		total += n
	}
	if d.end() != nil {
		return 0
	}
	return total
}

// elementsText sums what elem measures in each element of an array, for memberTextBytes' readers;
// elem gets and hands back the scanner by value like them.
func elementsText(s scanner, parentDepth int, elem func(s scanner, parentDepth int) (scanner, int64, error)) (scanner, int64, error) {
	it, ok, err := s.enterArray(parentDepth)
	if err != nil || !ok {
		return s, 0, err
	}
	var total int64
	for {
		more, err := s.nextElement(&it)
		if err != nil || !more {
			return s, total, err
		}
		var n int64
		s, n, err = elem(s, it.depth)
		if err != nil {
			return s, 0, err
		}
		total += n
	}
}

// topLevelUsage reads the top-level "usage" object of a complete response body, which is where
// every supported API reports the usage of a non-streamed answer.
func topLevelUsage(body []byte) (rawUsage, error) {
	var u rawUsage
	var d document
	if err := d.open(body); err != nil {
		return rawUsage{}, err
	}
	for {
		key, ok, err := d.next()
		if err != nil {
			return rawUsage{}, err
		}
		if !ok {
			break
		}
		if string(key) == "usage" {
			err = d.s.readUsage(d.depth(), &u)
		} else {
			err = d.skip()
		}
		if err != nil {
			return rawUsage{}, err
		}
	}
	if err := d.end(); err != nil {
		return rawUsage{}, err
	}
	return u, nil
}

// usageFromJSON reads the top-level "usage" object of a complete JSON response and converts
// it the way the format names its counters.
func usageFromJSON(body []byte, convert func(rawUsage) Usage) (Usage, error) {
	raw, err := topLevelUsage(body)
	if err != nil {
		return Usage{}, err
	}
	return convert(raw), nil
}
