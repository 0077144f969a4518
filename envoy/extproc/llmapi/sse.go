package llmapi

import (
	"bytes"
	"fmt"
)

// DefaultMaxEventBytes is the event size limit NewStream applies when given a limit below 1.
// Usage-bearing events are a few hundred bytes; the largest legitimate events are Responses
// API "done" events that repeat the whole output, so the limit is generous.
const DefaultMaxEventBytes = 1 << 20

// EventTooLargeError is the framing error of an SSE event whose data exceeds the limit.
type EventTooLargeError struct {
	Limit int
}

func (e *EventTooLargeError) Error() string {
	return fmt.Sprintf("SSE event data exceeds %d bytes", e.Limit)
}

// Where the parser is within the current line.
type linePhase uint8

const (
	phaseField linePhase = iota // reading the field name
	phaseSpace                  // just after the colon: one space may follow
	phaseValue                  // reading the value
)

// Where the current line's value goes.
type valueSink uint8

const (
	sinkIgnore valueSink = iota
	sinkData
	sinkEvent
)

// Stream parses a server-sent-event response incrementally and accumulates the token usage the
// events report. Lines are never buffered: the field name is matched as it arrives and the
// value streams straight into the event's data buffer (or is dropped), so memory is bounded by
// maxEventBytes however long the stream runs and however it is split into chunks.
//
// Framing follows the WHATWG EventSource rules: lines end in "\n", "\r\n" or "\r"; "data:"
// lines (one optional space after the colon) are joined with "\n"; "event:" sets the type;
// lines starting with ':' are comments; a field without a colon has an empty value; an empty
// line ends the event. A leading byte-order mark is not stripped (no LLM API sends one).
//
// A Stream is not safe for concurrent use.
type Stream struct {
	format        Format
	maxEventBytes int

	phase     linePhase
	sink      valueSink
	field     [5]byte // long enough for "event"; longer names are fields we ignore
	fieldLen  int
	fieldLong bool
	afterCR   bool // the previous byte was '\r', so a leading '\n' completes that line ending

	data      []byte // the current event's data, reused across events
	dataLines int
	name      eventName   // the current event's "event:" field
	event     eventResult // what the current event contributes, filled by the format

	usage         rawUsage
	done          bool
	outputEvents  int
	textBytes     int64
	skippedEvents int
	err           error
}

// NewStream returns a parser for a streamed response in the given format. maxEventBytes bounds
// the data of a single event (values below 1 mean DefaultMaxEventBytes).
func NewStream(format Format, maxEventBytes int) *Stream {
	if maxEventBytes < 1 {
		maxEventBytes = DefaultMaxEventBytes
	}
	return &Stream{format: format, maxEventBytes: maxEventBytes}
}

// Usage returns the usage merged from every event so far: for each counter, the last value
// reported wins, and a report that omits a counter keeps the earlier value.
func (s *Stream) Usage() Usage { return s.format.usage(s.usage) }

// Done reports whether the terminal event arrived: "data: [DONE]", a Responses
// response.completed, response.incomplete or response.failed event, or an Anthropic
// message_stop. Bytes after it are ignored.
func (s *Stream) Done() bool { return s.done }

// OutputEvents counts the events that carried generated output, as each format's readEvent
// tells: chat or completions chunks with non-empty content, reasoning, refusal, tool calls or
// text, Responses "*.delta" events, and Anthropic content_block_delta events.
func (s *Stream) OutputEvents() int { return s.outputEvents }

// OutputTextBytes is the byte length of the generated text the output events carried so far,
// for estimating output tokens when a stream ends without usage (a client that disconnects
// mid-stream, a backend that never reports it). It counts, per format:
//
//   - chat completions: each choice's delta content, reasoning_content, reasoning and refusal
//     strings, plus the raw length of a non-empty tool_calls array as sent;
//   - completions: each choice's text;
//   - Responses: the "delta" string of events whose type ends in ".delta";
//   - Anthropic Messages: delta.text, delta.thinking and delta.partial_json of
//     content_block_delta events.
//
// Strings count their decoded length (escapes such as \n or \u00e9 resolved to the UTF-8 bytes
// they stand for), measured in place without building the string.
func (s *Stream) OutputTextBytes() int64 { return s.textBytes }

// SkippedEvents counts events whose data was neither "[DONE]" nor a JSON object. They are
// skipped and parsing continues.
func (s *Stream) SkippedEvents() int { return s.skippedEvents }

// Err returns the first framing error (an *EventTooLargeError); once set, Write ignores its input.
func (s *Stream) Err() error { return s.err }

// Write parses the next bytes of the stream; chunks may split the stream anywhere. It returns
// the framing error that stops parsing, if any (also available from Err).
func (s *Stream) Write(chunk []byte) error {
	for i := 0; i < len(chunk) && s.err == nil && !s.done; {
		c := chunk[i]
		if s.afterCR {
			s.afterCR = false
			if c == '\n' {
				i++
				continue
			}
		}
		if c == '\r' || c == '\n' {
			s.afterCR = c == '\r'
			s.endLine()
			i++
			continue
		}
		switch s.phase {
		case phaseField:
			if c == ':' {
				s.startValue()
			} else if s.fieldLen < len(s.field) {
				s.field[s.fieldLen] = c
				s.fieldLen++
			} else {
				s.fieldLong = true
			}
			i++
		case phaseSpace:
			s.phase = phaseValue
			if c == ' ' {
				i++
			}
		case phaseValue:
			end := lineEnd(chunk[i:])
			s.appendValue(chunk[i : i+end])
			i += end
		}
	}
	return s.err
}

// startValue runs at the colon ending a field name and picks where the value goes.
func (s *Stream) startValue() {
	s.phase = phaseSpace
	switch {
	case s.fieldLen == 0 && !s.fieldLong: // a comment line
		s.sink = sinkIgnore
		s.phase = phaseValue
	case s.fieldIs("data"):
		s.sink = sinkData
		s.startDataLine()
	case s.fieldIs("event"):
		s.sink = sinkEvent
		s.name.n, s.name.long = 0, false
	default: // id, retry and unknown fields do not affect usage
		s.sink = sinkIgnore
	}
}

func (s *Stream) fieldIs(name string) bool {
	return !s.fieldLong && string(s.field[:s.fieldLen]) == name
}

// startDataLine joins a new data line to the previous ones with a newline.
func (s *Stream) startDataLine() {
	if s.dataLines > 0 {
		s.appendData([]byte{'\n'})
	}
	s.dataLines++
}

func (s *Stream) appendValue(v []byte) {
	switch s.sink {
	case sinkData:
		s.appendData(v)
	case sinkEvent:
		n := copy(s.name.buf[s.name.n:], v)
		s.name.n += n
		if n < len(v) {
			s.name.long = true
		}
	}
}

func (s *Stream) appendData(v []byte) {
	if s.err != nil {
		return
	}
	need := len(s.data) + len(v)
	if need > s.maxEventBytes {
		s.err = &EventTooLargeError{Limit: s.maxEventBytes}
		s.data = nil // release the buffer; nothing more will be parsed
		return
	}
	if need > cap(s.data) {
		// Grow geometrically but never beyond the limit, so the buffer stays bounded.
		newCap := max(2*cap(s.data), need, 512)
		newCap = min(newCap, s.maxEventBytes)
		grown := make([]byte, len(s.data), newCap)
		copy(grown, s.data)
		s.data = grown
	}
	s.data = append(s.data, v...)
}

// endLine handles a line ending.
func (s *Stream) endLine() {
	if s.phase == phaseField {
		switch {
		case s.fieldLen == 0 && !s.fieldLong:
			s.dispatch()
		case s.fieldIs("data"): // "data" without a colon: an empty data line
			s.startDataLine()
		case s.fieldIs("event"):
			s.name.n, s.name.long = 0, false
		}
	}
	s.phase = phaseField
	s.sink = sinkIgnore
	s.fieldLen, s.fieldLong = 0, false
}

// dispatch handles a complete event and resets the event state.
func (s *Stream) dispatch() {
	defer func() {
		s.data = s.data[:0]
		s.dataLines = 0
		s.name.n, s.name.long = 0, false
	}()
	if s.dataLines == 0 || s.err != nil {
		return // an event without data is not dispatched
	}
	data := bytes.TrimSpace(s.data)
	if len(data) == 0 {
		return // keep-alive style empty data carries nothing to skip or count
	}
	if string(data) == "[DONE]" {
		s.done = true
		return
	}
	r := &s.event
	*r = eventResult{}
	if err := s.format.readEvent(data, &s.name, r); err != nil {
		s.skippedEvents++
		return
	}
	s.usage.merge(&r.usage)
	if r.output {
		s.outputEvents++
	}
	s.textBytes += r.text
	s.done = r.done
}

// lineEnd returns the offset of the first '\r' or '\n' in b, or len(b) when there is none.
func lineEnd(b []byte) int {
	end := bytes.IndexByte(b, '\n')
	if end < 0 {
		end = len(b)
	}
	if cr := bytes.IndexByte(b[:end], '\r'); cr >= 0 {
		return cr
	}
	return end
}
