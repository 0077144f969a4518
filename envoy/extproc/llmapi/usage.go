package llmapi

import "errors"

// ResponseMaxDepth bounds JSON nesting in response bodies and stream events. Usage sits at most
// three levels down; the limit only exists so a hostile or broken backend cannot make the parser
// walk an unbounded structure.
const ResponseMaxDepth = 128

// Usage is token usage as reported by the backend.
//
// InputTokens counts every prompt token, cached or not. OpenAI-style APIs report it that way;
// for the Anthropic Messages API, whose input_tokens excludes cache reads and writes, it is
// input_tokens + cache_read_input_tokens + cache_creation_input_tokens, so a quota on input
// tokens means the same thing whichever API the request used. TotalTokens is the backend's
// total_tokens when it reports one, else InputTokens + OutputTokens.
type Usage struct {
	InputTokens, OutputTokens, TotalTokens, CachedInputTokens, ReasoningTokens int64
	// CacheCreationInputTokens is Anthropic's cache_creation_input_tokens (prompt tokens written
	// to the cache); it is already part of InputTokens.
	CacheCreationInputTokens int64
	Known                    bool // a usage object was seen
}

// usageField indexes the raw counters a usage object can carry.
type usageField int

const (
	fieldInput usageField = iota
	fieldOutput
	fieldTotal
	fieldCached        // OpenAI *_tokens_details.cached_tokens
	fieldReasoning     // OpenAI *_tokens_details.reasoning_tokens
	fieldCacheRead     // Anthropic cache_read_input_tokens
	fieldCacheCreation // Anthropic cache_creation_input_tokens
	numUsageFields
)

// rawUsage holds counters exactly as the backend named them, with a bit per field that was set,
// so that merging several usage reports of one stream can keep the latest value of each field
// without a later partial report erasing an earlier field.
type rawUsage struct {
	values [numUsageFields]int64
	set    uint8
	known  bool
}

func (u *rawUsage) put(f usageField, v int64) {
	u.values[f] = v
	u.set |= 1 << f
}

func (u *rawUsage) has(f usageField) bool { return u.set&(1<<f) != 0 }

// merge overwrites u's fields with those set in later.
func (u *rawUsage) merge(later *rawUsage) {
	if !later.known {
		return
	}
	u.known = true
	for f := range numUsageFields {
		if later.has(f) {
			u.put(f, later.values[f])
		}
	}
}

// usage converts raw counters to the normalized Usage of the given API.
func (u *rawUsage) usage(api API) Usage {
	if !u.known {
		return Usage{}
	}
	v := &u.values
	out := Usage{
		InputTokens:     v[fieldInput],
		OutputTokens:    v[fieldOutput],
		ReasoningTokens: v[fieldReasoning],
		Known:           true,
	}
	if api == AnthropicMessages {
		out.InputTokens += v[fieldCacheRead] + v[fieldCacheCreation]
		out.CachedInputTokens = v[fieldCacheRead]
		out.CacheCreationInputTokens = v[fieldCacheCreation]
		out.TotalTokens = out.InputTokens + out.OutputTokens
		return out
	}
	out.CachedInputTokens = v[fieldCached]
	if u.has(fieldTotal) {
		out.TotalTokens = v[fieldTotal]
	} else {
		out.TotalTokens = out.InputTokens + out.OutputTokens
	}
	return out
}

// readUsage reads a usage value into u: an object marks u known, null (or any other non-object,
// which some backends emit as a placeholder) leaves it untouched. Both the OpenAI chat naming
// (prompt_tokens, completion_tokens) and the Responses/Anthropic naming (input_tokens,
// output_tokens) are understood; which cache fields count is decided per API in rawUsage.usage.
func (s *scanner) readUsage(parentDepth int, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	u.known = true
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		var field usageField
		switch string(key) {
		case "prompt_tokens", "input_tokens":
			field = fieldInput
		case "completion_tokens", "output_tokens":
			field = fieldOutput
		case "total_tokens":
			field = fieldTotal
		case "cache_read_input_tokens":
			field = fieldCacheRead
		case "cache_creation_input_tokens":
			field = fieldCacheCreation
		case "prompt_tokens_details", "input_tokens_details":
			err = s.readTokenDetail(it.depth, "cached_tokens", fieldCached, u)
			if err != nil {
				return err
			}
			continue
		case "completion_tokens_details", "output_tokens_details":
			err = s.readTokenDetail(it.depth, "reasoning_tokens", fieldReasoning, u)
			if err != nil {
				return err
			}
			continue
		default:
			if err := s.skipValue(it.depth); err != nil {
				return err
			}
			continue
		}
		n, ok, err := s.readTokenCount(it.depth)
		if err != nil {
			return err
		}
		if ok {
			u.put(field, n)
		}
	}
}

// readTokenDetail reads one counter out of a *_tokens_details object.
func (s *scanner) readTokenDetail(parentDepth int, name string, field usageField, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		if string(key) != name {
			if err := s.skipValue(it.depth); err != nil {
				return err
			}
			continue
		}
		n, ok, err := s.readTokenCount(it.depth)
		if err != nil {
			return err
		}
		if ok {
			u.put(field, n)
		}
	}
}

// errNotObject is returned for a JSON body or event that is valid JSON but not an object.
var errNotObject = errors.New("JSON value is not an object")

// FromJSON reads usage from a complete, non-streaming response body: the top-level "usage"
// object of every supported API. A body without usage yields a Usage with Known false and no
// error; malformed JSON, a non-object body or nesting beyond ResponseMaxDepth is an error.
func FromJSON(api API, body []byte) (Usage, error) {
	var ev event
	if err := ev.parse(api, body, false); err != nil {
		return Usage{}, err
	}
	return ev.usage.usage(api), nil
}

// event is what one JSON document (a response body or an SSE event's data) says about usage.
type event struct {
	// typeBuf[:typeLen] is the decoded "type" member. A copy rather than a slice of the input,
	// so that the struct holds no pointer into itself and can live on the stack.
	typeBuf [48]byte
	typeLen int
	hasType bool     // the object has a string "type" member
	usage   rawUsage // top-level "usage"
	// nested is response.usage (Responses) or message.usage (Anthropic message_start).
	nested  rawUsage
	content bool // carries generated output (see parse)
	// text is the decoded byte length of the generated text the document carries (see parse);
	// the caller decides from the event type whether it counts.
	text int64
}

// parse scans one JSON object and records the members that matter for api. With streaming set,
// it also looks for generated content: a chat or completions choice with a non-empty delta or
// text (the Responses and Anthropic formats say so in their event type instead), and measures
// the generated text: the choices' text and delta members, a Responses top-level "delta"
// string, or the text of an Anthropic top-level "delta" object.
func (ev *event) parse(api API, data []byte, streaming bool) error {
	*ev = event{}
	s := scanner{data: data, maxDepth: ResponseMaxDepth}
	if c := s.peek(); c != '{' {
		if c == 0 && s.pos >= len(data) {
			return s.failUnexpected()
		}
		if err := s.skipValue(0); err != nil {
			return err
		}
		return errNotObject
	}
	it, err := s.enterObject(0)
	if err != nil {
		return err
	}
	for {
		key, ok, err := s.next(&it)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch {
		case string(key) == "usage":
			err = s.readUsage(it.depth, &ev.usage)
		case string(key) == "type":
			err = ev.readType(&s, it.depth)
		case string(key) == "choices" && streaming && (api == ChatCompletions || api == Completions):
			ev.content, ev.text, err = s.readChoicesContent(it.depth, "delta")
		case string(key) == "delta" && streaming && api == Responses:
			ev.text, err = s.readTextLen(it.depth)
		case string(key) == "delta" && streaming && api == AnthropicMessages:
			ev.text, err = s.readAnthropicBlockText(it.depth)
		case string(key) == "response" && api == Responses,
			string(key) == "message" && api == AnthropicMessages:
			err = s.readNestedUsage(it.depth, &ev.nested)
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return err
		}
	}
	if !s.atEnd() {
		return s.fail("unexpected data after the JSON object")
	}
	return nil
}

func (ev *event) readType(s *scanner, parentDepth int) error {
	if s.peek() != '"' {
		return s.skipValue(parentDepth)
	}
	raw, escaped, err := s.readString()
	if err != nil {
		return err
	}
	// A type too long to copy is no type the parsers know: it is kept as the empty type, so it
	// still overrides the SSE event name.
	ev.hasType, ev.typeLen = true, 0
	if typ := decodeShort(s.keyBuf[:], raw, escaped); len(typ) <= len(ev.typeBuf) {
		ev.typeLen = copy(ev.typeBuf[:], typ)
	}
	return nil
}

// readNestedUsage reads the "usage" member of an object (response or message).
func (s *scanner) readNestedUsage(parentDepth int, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		if string(key) == "usage" {
			err = s.readUsage(it.depth, u)
		} else {
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return err
		}
	}
}

// readChoicesContent reports whether any choice carries generated output and how many bytes
// of it: a non-empty text (completions) or, in the choice member named message ("delta" for
// stream chunks, "message" for complete responses), non-empty content, reasoning, refusal or
// tool calls (chat).
func (s *scanner) readChoicesContent(parentDepth int, message string) (bool, int64, error) {
	it, ok, err := s.enterArray(parentDepth)
	if err != nil || !ok {
		return false, 0, err
	}
	content := false
	var total int64
	for {
		more, err := s.nextElement(&it)
		if err != nil || !more {
			return content, total, err
		}
		has, n, err := s.readChoiceContent(it.depth, message)
		if err != nil {
			return false, 0, err
		}
		content = content || has
		total += n
	}
}

func (s *scanner) readChoiceContent(parentDepth int, message string) (bool, int64, error) {
	if s.peek() != '{' {
		return false, 0, s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return false, 0, err
	}
	content := false
	var total int64
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return content, total, err
		}
		var n int64
		switch string(key) {
		case "text":
			n, err = s.readOutputLen(it.depth)
		case message:
			var has bool
			has, n, err = s.readDeltaContent(it.depth)
			content = content || has
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return false, 0, err
		}
		content = content || n > 0
		total += n
	}
}

// readDeltaContent reads a chat delta (or a complete message, which has the same members).
func (s *scanner) readDeltaContent(parentDepth int) (bool, int64, error) {
	if s.peek() != '{' {
		return false, 0, s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return false, 0, err
	}
	var total int64
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return total > 0, total, err
		}
		var n int64
		switch string(key) {
		case "content", "reasoning_content", "reasoning", "refusal", "tool_calls":
			n, err = s.readOutputLen(it.depth)
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return false, 0, err
		}
		total += n
	}
}

// readOutputLen consumes a value and measures it as generated output: a string counts its
// decoded length, a non-empty array (tool calls, content parts) its raw length as sent, and
// anything else, an empty array included, counts 0.
func (s *scanner) readOutputLen(parentDepth int) (int64, error) {
	switch s.peek() {
	case '"':
		return s.readTextLen(parentDepth)
	case '[':
		start := s.pos
		if err := s.skipValue(parentDepth); err != nil {
			return 0, err
		}
		// "[]" possibly with spaces inside: non-empty means something besides brackets and space.
		for _, c := range s.data[start+1 : s.pos-1] {
			if !isSpace(c) {
				return int64(s.pos - start), nil
			}
		}
		return 0, nil
	default:
		return 0, s.skipValue(parentDepth)
	}
}

// readAnthropicBlockText measures the text of an Anthropic content block or content block
// delta: text, thinking, partial_json (streamed tool input) as decoded strings, and a tool_use
// block's input as the raw JSON sent.
func (s *scanner) readAnthropicBlockText(parentDepth int) (int64, error) {
	if s.peek() != '{' {
		return 0, s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return total, err
		}
		var n int64
		switch string(key) {
		case "text", "thinking", "partial_json":
			n, err = s.readTextLen(it.depth)
		case "input":
			n, err = s.readRawLen(it.depth)
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return 0, err
		}
		total += n
	}
}

// ResponseTextBytes returns the decoded byte length of the generated text in a complete,
// non-streamed response body, for estimating output tokens when the backend reported no usage:
//
//   - chat completions: choices[].message content, reasoning_content, reasoning and refusal
//     strings, plus the raw length of a non-empty tool_calls array (or content parts array);
//   - completions: choices[].text;
//   - Responses: in output[] items, content[].text (output_text parts), content[].refusal,
//     summary[].text (reasoning summaries) and function call arguments; the SDKs' output_text
//     convenience field is not part of the wire format and is not read;
//   - Anthropic Messages: content[] blocks' text and thinking, plus the raw length of a tool_use
//     block's input.
//
// Strings are measured decoded (escapes resolved, without building the string). The body is
// scanned once. A malformed body, a body that is not an object, or an Unknown API yields 0.
func ResponseTextBytes(api API, body []byte) int64 {
	s := scanner{data: body, maxDepth: ResponseMaxDepth}
	if s.peek() != '{' {
		return 0
	}
	it, err := s.enterObject(0)
	if err != nil {
		return 0
	}
	var total int64
	for {
		key, ok, err := s.next(&it)
		if err != nil {
			return 0
		}
		if !ok {
			break
		}
		var n int64
		switch {
		case string(key) == "choices" && (api == ChatCompletions || api == Completions):
			_, n, err = s.readChoicesContent(it.depth, "message")
		case string(key) == "output" && api == Responses:
			n, err = s.readResponsesOutput(it.depth)
		case string(key) == "content" && api == AnthropicMessages:
			n, err = s.readAnthropicContent(it.depth)
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return 0
		}
		total += n
	}
	if !s.atEnd() {
		return 0
	}
	return total
}

// The readers below walk one array or object each rather than share a walker taking a function
// value: passing the scanner to a function value would move it to the heap.

// readAnthropicContent measures an Anthropic content array.
func (s *scanner) readAnthropicContent(parentDepth int) (int64, error) {
	it, ok, err := s.enterArray(parentDepth)
	if err != nil || !ok {
		return 0, err
	}
	var total int64
	for {
		more, err := s.nextElement(&it)
		if err != nil || !more {
			return total, err
		}
		n, err := s.readAnthropicBlockText(it.depth)
		if err != nil {
			return 0, err
		}
		total += n
	}
}

// readResponsesOutput measures a Responses API output array.
func (s *scanner) readResponsesOutput(parentDepth int) (int64, error) {
	it, ok, err := s.enterArray(parentDepth)
	if err != nil || !ok {
		return 0, err
	}
	var total int64
	for {
		more, err := s.nextElement(&it)
		if err != nil || !more {
			return total, err
		}
		n, err := s.readResponsesItem(it.depth)
		if err != nil {
			return 0, err
		}
		total += n
	}
}

// readResponsesItem measures one output item. Members are read whatever the item's type says:
// each only occurs in the item type that generates it, and the type may come after them.
func (s *scanner) readResponsesItem(parentDepth int) (int64, error) {
	if s.peek() != '{' {
		return 0, s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return total, err
		}
		var n int64
		switch string(key) {
		case "content", "summary": // message parts, reasoning summary parts
			n, err = s.readResponsesParts(it.depth)
		case "arguments": // function calls
			n, err = s.readTextLen(it.depth)
		default:
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return 0, err
		}
		total += n
	}
}

// readResponsesParts measures an item's content or summary array: the text of output_text and
// summary_text parts and the refusal of refusal parts.
func (s *scanner) readResponsesParts(parentDepth int) (int64, error) {
	arr, ok, err := s.enterArray(parentDepth)
	if err != nil || !ok {
		return 0, err
	}
	var total int64
	for {
		more, err := s.nextElement(&arr)
		if err != nil || !more {
			return total, err
		}
		if s.peek() != '{' {
			if err := s.skipValue(arr.depth); err != nil {
				return 0, err
			}
			continue
		}
		it, err := s.enterObject(arr.depth)
		if err != nil {
			return 0, err
		}
		for {
			key, ok, err := s.next(&it)
			if err != nil {
				return 0, err
			}
			if !ok {
				break
			}
			var n int64
			switch string(key) {
			case "text", "refusal":
				n, err = s.readTextLen(it.depth)
			default:
				err = s.skipValue(it.depth)
			}
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
}
