package envoy

import (
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
)

// When Envoy reads streams' token usage (the policy's extProc.streamUsage: envoy), its usage
// filter publishes it and ends the stream with trailers, and the ext_proc filter sends the
// server the response headers and those trailers instead of every chunk.
const (
	// FilterAIProtocolManager reads token usage from responses (JSON and SSE) into typed
	// metadata and ends a response with (empty) trailers once it is published.
	FilterAIProtocolManager = "envoy.filters.http.ai_protocol_manager"
	// MetadataTokenUsage is the typed metadata namespace FilterAIProtocolManager publishes a
	// response's envoy.data.ai.v3.TokenUsage in; it is forwarded to the ext_proc server.
	MetadataTokenUsage = "envoy.ai.token_usage"
	// HeaderStreamUsage marks a request whose stream Envoy is to read: the ext_proc server
	// sets it, and only the model routes that match it turn the usage filter on (it stays
	// off for JSON answers, which the ext_proc server reads itself: Envoy 1.40 stalls an
	// answer whose body both read). The route removes it before the request goes upstream.
	HeaderStreamUsage = "x-tollgate-stream-usage"
)

// ExtProcMode is how the ext_proc filter sends a request when tollgate reads the usage: the
// request headers and whole body, then the response body as it streams, its first chunk
// carrying the status as an attribute (no response headers message).
func ExtProcMode() *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{
		RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
		RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseBodyMode:    extprocfilterv3.ProcessingMode_STREAMED,
		ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
	}
}

// ExtProcEnvoyUsageMode is how the ext_proc filter sends a request when Envoy reads streams'
// usage: the request headers and whole body, the response headers (status, type, encoding),
// no response body, and the trailers FilterAIProtocolManager ends the response with, carrying
// the usage it read. A stream costs four messages, however many chunks it has. The server
// switches the body on, from the response headers answer, for an answer it reads itself (JSON,
// an API Envoy does not read).
func ExtProcEnvoyUsageMode() *extprocfilterv3.ProcessingMode {
	mode := ExtProcMode()
	mode.ResponseHeaderMode = extprocfilterv3.ProcessingMode_SEND
	mode.ResponseBodyMode = extprocfilterv3.ProcessingMode_NONE
	mode.ResponseTrailerMode = extprocfilterv3.ProcessingMode_SEND
	return mode
}
