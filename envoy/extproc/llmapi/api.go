package llmapi

import "strings"

// API identifies an LLM wire format by the request path that selects it.
type API int

// The APIs whose responses carry token usage tollgate understands.
const (
	Unknown API = iota
	ChatCompletions
	Completions
	Responses
	AnthropicMessages
)

func (a API) String() string {
	switch a {
	case ChatCompletions:
		return "chat_completions"
	case Completions:
		return "completions"
	case Responses:
		return "responses"
	case AnthropicMessages:
		return "anthropic_messages"
	default:
		return "unknown"
	}
}

// APIForPath maps a request path (":path", query string allowed) to its API. Only exact paths
// match: "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages" and
// "/anthropic/v1/messages"; a trailing slash or a sub-resource such as
// "/v1/messages/count_tokens" is Unknown, because those do not generate tokens.
func APIForPath(path string) API {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	switch path {
	case "/v1/chat/completions":
		return ChatCompletions
	case "/v1/completions":
		return Completions
	case "/v1/responses":
		return Responses
	case "/v1/messages", "/anthropic/v1/messages":
		return AnthropicMessages
	default:
		return Unknown
	}
}

// Paths lists the request paths APIForPath knows, in a fixed order: the only paths a gateway
// can meter.
func Paths() []string {
	return []string{"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/anthropic/v1/messages"}
}
