package llmapi

// chatCompletions is the OpenAI chat completions API, /v1/chat/completions, which most
// self-hosted model servers (vLLM, llama.cpp, Ollama, ...) speak too. A response reports
// usage in a top-level "usage" object; a stream reports it in a last chunk, and only when the
// request set stream_options.include_usage.
type chatCompletions struct{}

func (chatCompletions) Name() string                { return "chat_completions" }
func (chatCompletions) Operation() string           { return "chat" }
func (chatCompletions) NeedsIncludeUsage() bool     { return true }
func (chatCompletions) EnvoyReadsStreamUsage() bool { return true }

func (chatCompletions) ParseRequest(body []byte, maxDepth int) (Request, error) {
	return ParseRequest(body, maxDepth)
}

func (f chatCompletions) UsageFromJSON(body []byte) (Usage, error) {
	return usageFromJSON(body, f.usage)
}

func (chatCompletions) usage(raw rawUsage) Usage { return openAIUsage(raw) }

// ResponseTextBytes counts choices[].message content, reasoning_content, reasoning and refusal
// strings, plus the raw length of a non-empty tool_calls array (or content parts array), and
// choices[].text (the completions API). Strings are measured decoded (escapes resolved,
// without building the string); the body is scanned once.
func (chatCompletions) ResponseTextBytes(body []byte) int64 {
	return memberTextBytes(body, "choices", choicesMessageText)
}

// readEvent reads one stream chunk: its usage (every chunk may carry one; vLLM's
// continuous_usage_stats sends it on each) and the output of its choices' deltas, which counts
// each choice's delta content, reasoning_content, reasoning and refusal strings, plus the raw
// length of a non-empty tool_calls array as sent, and each choice's text (completions).
func (chatCompletions) readEvent(data []byte, _ *eventName, r *eventResult) error {
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
		case "usage":
			err = d.s.readUsage(d.depth(), &r.usage)
		case "choices":
			r.output, r.text, err = d.s.readChoicesContent(d.depth(), "delta")
		default:
			err = d.skip()
		}
		if err != nil {
			return err
		}
	}
	return d.end()
}

// choicesMessageText measures the output in a complete response's choices, for memberTextBytes.
func choicesMessageText(s scanner, parentDepth int) (scanner, int64, error) {
	_, n, err := s.readChoicesContent(parentDepth, "message")
	return s, n, err
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
