package sim

import (
	"compress/gzip"
	"encoding/json"
	"net/http"
	"strconv"
)

// output writes one response body, optionally through gzip, and knows how to push a streamed
// event all the way to the client.
type output struct {
	w  http.ResponseWriter
	gz *gzip.Writer // nil unless the request asked for gzip

	// fault is the stream defect a test asked for (x-llmsim-sse-fault).
	fault sseFault
	// oversizeSent says the oversize-event fault has sent its one event.
	oversizeSent bool
	// openEvent says the previous event still lacks its ending blank line (unterminated fault).
	openEvent bool
}

func newOutput(w http.ResponseWriter, useGzip bool) *output {
	o := &output{w: w}
	if useGzip {
		o.gz = gzip.NewWriter(w)
	}
	return o
}

// start sends the status line and headers. length is the uncompressed body length, or -1 when
// unknown (streams); it is only sent when the body goes out uncompressed.
func (o *output) start(status int, contentType string, length int) {
	header := o.w.Header()
	header.Set("Content-Type", contentType)
	if o.gz != nil {
		header.Set("Content-Encoding", "gzip")
		header.Del("Content-Length")
	} else if length >= 0 {
		header.Set("Content-Length", strconv.Itoa(length))
	}
	o.w.WriteHeader(status)
}

func (o *output) Write(p []byte) (int, error) {
	if o.gz != nil {
		return o.gz.Write(p)
	}
	return o.w.Write(p)
}

// flush pushes everything written so far to the client. Through gzip this is a sync flush, so
// the client can decode each event as it arrives instead of waiting for the end of the stream.
func (o *output) flush() error {
	if o.gz != nil {
		if err := o.gz.Flush(); err != nil {
			return err
		}
	}
	return http.NewResponseController(o.w).Flush()
}

// finish completes the body; for gzip it writes the trailer. It is deliberately not deferred:
// an aborted stream must not end with a well-formed gzip trailer.
func (o *output) finish() error {
	if o.gz != nil {
		return o.gz.Close()
	}
	return nil
}

// sendJSON writes a complete JSON body with the given status.
func (o *output) sendJSON(status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	o.start(status, "application/json", len(body))
	if _, err := o.Write(body); err != nil {
		return err
	}
	return o.finish()
}

// startStream sends the headers of a server-sent events response.
func (o *output) startStream() error {
	o.w.Header().Set("Cache-Control", "no-cache")
	o.start(http.StatusOK, "text/event-stream", -1)
	return o.flush()
}

// event writes one server-sent event and flushes it. An empty name writes only the data line,
// which is how OpenAI's chat and completions streams look; the Responses and Anthropic streams
// name every event.
func (o *output) event(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, len(name)+len(data)+16)
	switch o.fault {
	case faultGarbage:
		buf = append(buf, garbageEvents...)
	case faultOversizeEvent:
		if !o.oversizeSent {
			o.oversizeSent = true
			buf = append(buf, oversizeEvent()...)
		}
	case faultUnterminated:
		// The blank line ending the previous event goes out only now that another event
		// follows, so the last one is never ended.
		if o.openEvent {
			buf = append(buf, '\n')
		}
	}
	if name != "" {
		buf = append(buf, "event: "...)
		buf = append(buf, name...)
		buf = append(buf, '\n')
	}
	buf = append(buf, "data: "...)
	buf = append(buf, data...)
	if o.fault == faultUnterminated {
		buf = append(buf, '\n')
		o.openEvent = true
	} else {
		buf = append(buf, "\n\n"...)
	}
	if _, err := o.Write(buf); err != nil {
		return err
	}
	return o.flush()
}

// done writes OpenAI's end-of-stream sentinel and completes the body. An unterminated stream
// gets no sentinel: it would end the open event and arrive as one more event.
func (o *output) done() error {
	if o.fault == faultUnterminated {
		if err := o.flush(); err != nil {
			return err
		}
		return o.finish()
	}
	if _, err := o.Write([]byte("data: [DONE]\n\n")); err != nil {
		return err
	}
	if err := o.flush(); err != nil {
		return err
	}
	return o.finish()
}

// writeRaw writes a small fixed body uncompressed.
func writeRaw(w http.ResponseWriter, status int, contentType string, body []byte) {
	o := output{w: w}
	o.start(status, contentType, len(body))
	// A write error means the client is gone; there is nobody left to tell.
	_, _ = o.Write(body)
}

// openAIError is OpenAI's error body: {"error":{"message","type","param","code"}}.
type openAIError struct {
	Error openAIErrorDetail `json:"error"`
}

type openAIErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// anthropicError is Anthropic's error body: {"type":"error","error":{"type","message"}}.
type anthropicError struct {
	Type  string                `json:"type"`
	Error anthropicErrorDetails `json:"error"`
}

type anthropicErrorDetails struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// writeError answers status with the error body of the API the client called. param and code
// are OpenAI fields; empty means JSON null.
func writeError(w http.ResponseWriter, useGzip bool, api apiKind, status int, message, param, code string) {
	o := newOutput(w, useGzip)
	var body any
	if api == apiMessages {
		body = anthropicError{Type: "error", Error: anthropicErrorDetails{Type: anthropicErrorType(status), Message: message}}
	} else {
		body = openAIError{Error: openAIErrorDetail{
			Message: message,
			Type:    openAIErrorType(status),
			Param:   nullIfEmpty(param),
			Code:    nullIfEmpty(code),
		}}
	}
	// A write error means the client is gone; there is nobody left to tell.
	_ = o.sendJSON(status, body)
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// openAIErrorType maps a status to the error type OpenAI uses for it.
func openAIErrorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

// anthropicErrorType maps a status to the error type Anthropic uses for it.
func anthropicErrorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == 529:
		return "overloaded_error"
	case status >= 500:
		return "api_error"
	default:
		return "invalid_request_error"
	}
}
