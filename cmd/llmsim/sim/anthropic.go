package sim

import "context"

// anthropicUsage is the usage object of the Anthropic Messages API.
type anthropicUsage struct {
	InputTokens              tokenCount `json:"input_tokens"`
	CacheCreationInputTokens tokenCount `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     tokenCount `json:"cache_read_input_tokens"`
	OutputTokens             tokenCount `json:"output_tokens"`
}

func newAnthropicUsage(g *generation, outputTokens int) anthropicUsage {
	return anthropicUsage{
		InputTokens:              g.count(g.inputTokens),
		CacheCreationInputTokens: g.count(0),
		CacheReadInputTokens:     g.count(0),
		OutputTokens:             g.count(outputTokens),
	}
}

type anthropicMessage struct {
	ID           string                  `json:"id"`
	Type         string                  `json:"type"`
	Role         string                  `json:"role"`
	Model        string                  `json:"model"`
	Content      []anthropicContentBlock `json:"content"`
	StopReason   *string                 `json:"stop_reason"`
	StopSequence *string                 `json:"stop_sequence"`
	Usage        anthropicUsage          `json:"usage"`
}

type anthropicContentBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func messagesResponse(g *generation, text string) anthropicMessage {
	endTurn := "end_turn"
	return anthropicMessage{
		ID:         g.id,
		Type:       "message",
		Role:       "assistant",
		Model:      g.model,
		Content:    []anthropicContentBlock{{Type: "text", Text: text}},
		StopReason: &endTurn,
		Usage:      newAnthropicUsage(g, g.outputTokens),
	}
}

// Streaming event payloads.

type anthropicMessageStart struct {
	Type    string           `json:"type"`
	Message anthropicMessage `json:"message"`
}

type anthropicBlockStart struct {
	Type         string                `json:"type"`
	Index        int                   `json:"index"`
	ContentBlock anthropicContentBlock `json:"content_block"`
}

type anthropicBlockDelta struct {
	Type  string             `json:"type"`
	Index int                `json:"index"`
	Delta anthropicTextDelta `json:"delta"`
}

type anthropicTextDelta struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicBlockStop struct {
	Type  string `json:"type"`
	Index int    `json:"index"`
}

type anthropicMessageDelta struct {
	Type  string                   `json:"type"`
	Delta anthropicStopDelta       `json:"delta"`
	Usage anthropicOutputUsageOnly `json:"usage"`
}

type anthropicStopDelta struct {
	StopReason   string  `json:"stop_reason"`
	StopSequence *string `json:"stop_sequence"`
}

// anthropicOutputUsageOnly is message_delta's usage: the cumulative output token count.
type anthropicOutputUsageOnly struct {
	OutputTokens tokenCount `json:"output_tokens"`
}

// anthropicTypeOnly is the payload of events that carry nothing but their type.
type anthropicTypeOnly struct {
	Type string `json:"type"`
}

// streamMessages sends Anthropic's event sequence: message_start (input tokens, and the 1 output
// token Anthropic reports there), content_block_start, ping, one content_block_delta per token,
// content_block_stop, message_delta with the cumulative output tokens, message_stop.
func (h *handler) streamMessages(ctx context.Context, o *output, g *generation) error {
	start := anthropicMessage{
		ID:      g.id,
		Type:    "message",
		Role:    "assistant",
		Model:   g.model,
		Content: []anthropicContentBlock{},
		Usage:   newAnthropicUsage(g, min(1, g.outputTokens)),
	}
	if err := o.event("message_start", anthropicMessageStart{Type: "message_start", Message: start}); err != nil {
		return err
	}
	if err := o.event("content_block_start", anthropicBlockStart{
		Type: "content_block_start", ContentBlock: anthropicContentBlock{Type: "text"},
	}); err != nil {
		return err
	}
	if err := o.event("ping", anthropicTypeOnly{Type: "ping"}); err != nil {
		return err
	}
	err := h.emitTokens(ctx, g, func(token string) error {
		return o.event("content_block_delta", anthropicBlockDelta{
			Type: "content_block_delta", Delta: anthropicTextDelta{Type: "text_delta", Text: token},
		})
	})
	if err != nil {
		return err
	}
	if err := o.event("content_block_stop", anthropicBlockStop{Type: "content_block_stop"}); err != nil {
		return err
	}
	if err := o.event("message_delta", anthropicMessageDelta{
		Type:  "message_delta",
		Delta: anthropicStopDelta{StopReason: "end_turn"},
		Usage: anthropicOutputUsageOnly{OutputTokens: g.count(g.outputTokens)},
	}); err != nil {
		return err
	}
	if err := o.event("message_stop", anthropicTypeOnly{Type: "message_stop"}); err != nil {
		return err
	}
	return o.finish()
}
