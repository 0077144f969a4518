// Package llmapi knows the wire formats of the LLM APIs tollgate meters: what the ext_proc server
// has to read from a client's request body (model, stream flags), how to make a streaming request
// report its usage, and how to pull token usage out of JSON and server-sent-event (SSE) responses
// of the OpenAI chat completions, completions and Responses APIs and the Anthropic Messages API.
//
// Each API is one Format, in a file of its own (chat.go, completions.go, responses.go,
// anthropic.go); format.go holds the interface and the one table from request path to format.
// What the formats share stays shared: the request scanner (request.go), the SSE framing
// (sse.go), the usage counters (usage.go) and the JSON scanner under all of them (jsonscan.go).
//
// Everything here is a pure function or a small push-style parser with no gRPC and no Envoy, so
// it can be tested byte by byte and fuzzed. Bodies can be large chat histories and streams can
// run for minutes, so the parsers read only the fields they need with a hand-written,
// allocation-light JSON scanner, bound JSON nesting depth and SSE event size, and never buffer a
// whole stream.
package llmapi
