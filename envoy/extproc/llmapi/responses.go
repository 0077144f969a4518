package llmapi

import "bytes"

// responses is the OpenAI Responses API, /v1/responses. A response reports usage in a
// top-level "usage" object named the Responses way (input_tokens, output_tokens); a stream
// reports it only in its terminal event (response.completed, response.incomplete or
// response.failed), inside the response object that event carries.
type responses struct{}

func (responses) Name() string                { return "responses" }
func (responses) Operation() string           { return "responses" }
func (responses) NeedsIncludeUsage() bool     { return false }
func (responses) EnvoyReadsStreamUsage() bool { return true }

func (responses) ParseRequest(body []byte, maxDepth int) (Request, error) {
	return ParseRequest(body, maxDepth)
}

func (f responses) UsageFromJSON(body []byte) (Usage, error) {
	return usageFromJSON(body, f.usage)
}

func (responses) usage(raw rawUsage) Usage { return openAIUsage(raw) }

// ResponseTextBytes counts, in output[] items, content[].text (output_text parts),
// content[].refusal, summary[].text (reasoning summaries) and function call arguments; the SDKs'
// output_text convenience field is not part of the wire format and is not read. Strings are
// measured decoded; the body is scanned once.
func (responses) ResponseTextBytes(body []byte) int64 {
	return memberTextBytes(body, "output", responsesOutputText)
}

// readEvent reads one stream event. A terminal event carries the usage in its response object
// and ends the stream; an event whose type ends in ".delta" carries output, the decoded length
// of its "delta" string. Usage anywhere else (response.created, response.in_progress) is not
// final and is not read.
func (responses) readEvent(data []byte, name *eventName, r *eventResult) error {
	var typ eventType
	var nested rawUsage
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
		case "delta":
			delta, err = d.s.readTextLen(d.depth())
		case "response":
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
	switch t := typ.of(name); string(t) {
	case "response.completed", "response.incomplete", "response.failed":
		r.usage, r.done = nested, true
	default:
		if bytes.HasSuffix(t, []byte(".delta")) {
			r.output, r.text = true, delta
		}
	}
	return nil
}

// responsesOutputText measures a Responses API output array, for memberTextBytes.
func responsesOutputText(s scanner, parentDepth int) (scanner, int64, error) {
	return elementsText(s, parentDepth, func(s scanner, depth int) (scanner, int64, error) {
		n, err := s.readResponsesItem(depth)
		return s, n, err
	})
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
