package llmapi

// anthropicMessages is the Anthropic Messages API, /v1/messages (also served under
// /anthropic/v1/messages). Its input_tokens excludes the prompt tokens read from or written to
// the cache, which it reports apart; it reports no total. A stream reports the prompt's usage
// in message_start (inside the message object) and the output's in message_delta.
type anthropicMessages struct{}

func (anthropicMessages) Name() string                { return "anthropic_messages" }
func (anthropicMessages) Operation() string           { return "messages" }
func (anthropicMessages) NeedsIncludeUsage() bool     { return false }
func (anthropicMessages) EnvoyReadsStreamUsage() bool { return true }

func (anthropicMessages) ParseRequest(body []byte, maxDepth int) (Request, error) {
	return ParseRequest(body, maxDepth)
}

func (f anthropicMessages) UsageFromJSON(body []byte) (Usage, error) {
	return usageFromJSON(body, f.usage)
}

// usage counts cache reads and writes into InputTokens, so that a quota on input tokens means
// the same whichever API a request used, and computes the total, ignoring any total_tokens.
func (anthropicMessages) usage(u rawUsage) Usage {
	if !u.known {
		return Usage{}
	}
	v := &u.values
	out := Usage{
		InputTokens:              v[fieldInput] + v[fieldCacheRead] + v[fieldCacheCreation],
		OutputTokens:             v[fieldOutput],
		ReasoningTokens:          v[fieldReasoning],
		CachedInputTokens:        v[fieldCacheRead],
		CacheCreationInputTokens: v[fieldCacheCreation],
		Known:                    true,
	}
	out.TotalTokens = out.InputTokens + out.OutputTokens
	return out
}

// ResponseTextBytes counts content[] blocks' text and thinking, plus the raw length of a
// tool_use block's input. Strings are measured decoded; the body is scanned once.
func (anthropicMessages) ResponseTextBytes(body []byte) int64 {
	return memberTextBytes(body, "content", anthropicContentText)
}

// readEvent reads one stream event by its type: message_start carries the prompt's usage in
// its message, message_delta the output's (later reports of a counter win), content_block_delta
// carries output (delta.text, delta.thinking and delta.partial_json), message_stop ends the
// stream.
func (anthropicMessages) readEvent(data []byte, name *eventName, r *eventResult) error {
	var typ eventType
	var top, nested rawUsage
	var delta int64
	var d document
	if err := d.open(data); err != nil {
		return err
	}
	for {
		key, ok, err := d.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch string(key) {
		case "type":
			err = typ.read(&d.s, d.depth())
		case "usage":
			err = d.s.readUsage(d.depth(), &top)
		case "delta":
			delta, err = d.s.readAnthropicBlockText(d.depth())
		case "message":
			err = d.s.readNestedUsage(d.depth(), &nested)
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
	if err := d.end(); err != nil {
		return err
	}
	switch string(typ.of(name)) {
	case "message_start":
		r.usage = nested
	case "message_delta":
		r.usage = top
	case "content_block_delta":
		r.output, r.text = true, delta
	case "message_stop":
		r.done = true
	}
	return nil
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

// anthropicContentText measures an Anthropic content array, for memberTextBytes.
func anthropicContentText(s scanner, parentDepth int) (scanner, int64, error) {
	return elementsText(s, parentDepth, func(s scanner, depth int) (scanner, int64, error) {
		n, err := s.readAnthropicBlockText(depth)
		return s, n, err
	})
}
