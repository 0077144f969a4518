package sim

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// sseFault is a deliberate defect in a streamed answer, asked for with x-llmsim-sse-fault. Real
// upstreams produce each of them now and then (buggy proxies, crashes, oversized tool output);
// the gateway in front must survive them, pass the stream on, and account for what it can.
type sseFault int

const (
	faultNone sseFault = iota
	// faultGarbage precedes every real event with events and lines no LLM API defines: a
	// comment, an id without a value, a retry that is not a number, data that is not JSON, a
	// named event whose data is a JSON array, a JSON string, and empty data lines. The real
	// events, usage included, follow unchanged.
	faultGarbage
	// faultOversizeEvent sends one event whose data is OversizeEventBytes long before the first
	// real event.
	faultOversizeEvent
	// faultUnterminated never sends the blank line that ends the last event, nor OpenAI's
	// [DONE]; the body then ends normally. By the SSE rules the unterminated event (the usage
	// chunk, or Anthropic's message_stop, or Responses' response.completed) is never dispatched.
	faultUnterminated
)

// SSE fault names accepted by the x-llmsim-sse-fault knob.
const (
	SSEFaultGarbage       = "garbage"
	SSEFaultOversizeEvent = "oversize-event"
	SSEFaultUnterminated  = "unterminated"
)

// OversizeEventBytes is the data size of the event the oversize-event fault sends: twice the
// 1 MiB per-event cap a gateway typically applies, so it overflows any such cap.
const OversizeEventBytes = 2 << 20

// garbageEvents is what faultGarbage writes before each real event. None of it is a JSON object,
// so a tolerant parser skips all of it.
const garbageEvents = ": llmsim garbage follows\n" +
	"id\n" +
	"retry: soon\n" +
	"data: {not json\n\n" +
	"event: llmsim.garbage\ndata: [1, 2, 3]\n\n" +
	"data: \"a string\"\n\n" +
	"data:\ndata:\n\n"

func parseSSEFault(value string) (sseFault, error) {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case SSEFaultGarbage:
		return faultGarbage, nil
	case SSEFaultOversizeEvent:
		return faultOversizeEvent, nil
	case SSEFaultUnterminated:
		return faultUnterminated, nil
	}
	return faultNone, errors.New(HeaderSSEFault + ": want " +
		strings.Join([]string{SSEFaultGarbage, SSEFaultOversizeEvent, SSEFaultUnterminated}, ", ") +
		", got " + strconv.Quote(value))
}

// oversizeEvent returns an event of OversizeEventBytes of data: a JSON object with one padding
// string, so only its size is wrong.
func oversizeEvent() []byte {
	const head, tail = `data: {"llmsim_padding":"`, "\"}\n\n"
	padding := OversizeEventBytes - (len(head) - len("data: ")) - (len(tail) - len("\n\n"))
	buf := make([]byte, 0, len(head)+padding+len(tail))
	buf = append(buf, head...)
	for range padding {
		buf = append(buf, 'x')
	}
	return append(buf, tail...)
}

// isCredentialHeader names the headers x-llmsim-echo-headers never echoes: the simulator must
// not be the place a credential ends up in a response, a log or a test failure message.
func isCredentialHeader(name string) bool {
	switch name {
	case "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key":
		return true
	}
	return false
}

// parseEchoHeaders reads the comma-separated header names of x-llmsim-echo-headers.
func parseEchoHeaders(value string) ([]string, error) {
	var names []string
	for name := range strings.SplitSeq(value, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		if !validHeaderName(name) {
			return nil, errors.New(HeaderEchoHeaders + ": " + strconv.Quote(name) + " is not a header name")
		}
		if isCredentialHeader(name) {
			return nil, errors.New(HeaderEchoHeaders + ": " + name + " carries credentials and is never echoed")
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		return nil, errors.New(HeaderEchoHeaders + ": name at least one header")
	}
	return names, nil
}

// validHeaderName accepts the token characters of RFC 9110 that header names use in practice.
func validHeaderName(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return name != ""
}

// echoHeaders copies every value of each named request header into a response header
// x-llmsim-echo-<name>, one line per value, so a test can see exactly what reached the backend.
// A header the request lacks is not echoed at all.
func echoHeaders(w http.ResponseWriter, r *http.Request, names []string) {
	for _, name := range names {
		for _, v := range r.Header.Values(name) {
			w.Header().Add(HeaderEchoPrefix+name, v)
		}
	}
}
