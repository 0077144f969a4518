package sim

import (
	"context"
	"encoding/json"
)

// openAIUsage is the usage object of the Chat Completions and Completions APIs.
type openAIUsage struct {
	PromptTokens            tokenCount              `json:"prompt_tokens"`
	CompletionTokens        tokenCount              `json:"completion_tokens"`
	TotalTokens             tokenCount              `json:"total_tokens"`
	PromptTokensDetails     promptTokensDetails     `json:"prompt_tokens_details"`
	CompletionTokensDetails completionTokensDetails `json:"completion_tokens_details"`
}

type promptTokensDetails struct {
	CachedTokens tokenCount `json:"cached_tokens"`
}

type completionTokensDetails struct {
	ReasoningTokens tokenCount `json:"reasoning_tokens"`
}

func newOpenAIUsage(g *generation) *openAIUsage {
	return &openAIUsage{
		PromptTokens:            g.count(g.inputTokens),
		CompletionTokens:        g.count(g.outputTokens),
		TotalTokens:             g.count(g.totalTokens()),
		PromptTokensDetails:     promptTokensDetails{CachedTokens: g.count(0)},
		CompletionTokensDetails: completionTokensDetails{ReasoningTokens: g.count(0)},
	}
}

// jsonNull is what OpenAI puts in "usage" of every chunk but the last when include_usage is on.
// Emitting it keeps usage parsers honest about null.
func jsonNull() json.RawMessage { return json.RawMessage("null") }

// --- Chat Completions ---

type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *openAIUsage `json:"usage"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     any         `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func chatResponse(g *generation, text string) chatCompletion {
	return chatCompletion{
		ID:      g.id,
		Object:  "chat.completion",
		Created: g.created,
		Model:   g.model,
		Choices: []chatChoice{{Message: chatMessage{Role: "assistant", Content: text}, FinishReason: "stop"}},
		Usage:   newOpenAIUsage(g),
	}
}

type chatChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"`
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []chatChunkChoice `json:"choices"`
	// Usage is absent without include_usage, null on ordinary chunks with it, and the usage
	// object on the final usage chunk.
	Usage any `json:"usage,omitempty"`
}

type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     any       `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

func (h *handler) streamChat(ctx context.Context, o *output, g *generation) error {
	chunk := chatChunk{ID: g.id, Object: "chat.completion.chunk", Created: g.created, Model: g.model}
	if g.includeUsage {
		chunk.Usage = jsonNull()
	}
	first := true
	err := h.emitTokens(ctx, g, func(token string) error {
		delta := chatDelta{Content: &token}
		if first {
			delta.Role = "assistant" // OpenAI names the role once, in the first chunk.
			first = false
		}
		chunk.Choices = []chatChunkChoice{{Delta: delta}}
		return o.event("", chunk)
	})
	if err != nil {
		return err
	}
	stop := "stop"
	finalDelta := chatDelta{}
	if first {
		finalDelta.Role = "assistant"
	}
	chunk.Choices = []chatChunkChoice{{Delta: finalDelta, FinishReason: &stop}}
	if err := o.event("", chunk); err != nil {
		return err
	}
	if g.includeUsage {
		chunk.Choices = []chatChunkChoice{}
		chunk.Usage = newOpenAIUsage(g)
		if err := o.event("", chunk); err != nil {
			return err
		}
	}
	return o.done()
}

// --- Completions (legacy) ---

type textCompletion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   any                `json:"usage,omitempty"`
}

type completionChoice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

func completionsResponse(g *generation, text string) textCompletion {
	stop := "stop"
	return textCompletion{
		ID:      g.id,
		Object:  "text_completion",
		Created: g.created,
		Model:   g.model,
		Choices: []completionChoice{{Text: text, FinishReason: &stop}},
		Usage:   newOpenAIUsage(g),
	}
}

// streamCompletions streams text_completion chunks with the same framing as chat: one event per
// token, a finish event, the usage chunk when asked for, then [DONE].
func (h *handler) streamCompletions(ctx context.Context, o *output, g *generation) error {
	chunk := textCompletion{ID: g.id, Object: "text_completion", Created: g.created, Model: g.model}
	if g.includeUsage {
		chunk.Usage = jsonNull()
	}
	err := h.emitTokens(ctx, g, func(token string) error {
		chunk.Choices = []completionChoice{{Text: token}}
		return o.event("", chunk)
	})
	if err != nil {
		return err
	}
	stop := "stop"
	chunk.Choices = []completionChoice{{FinishReason: &stop}}
	if err := o.event("", chunk); err != nil {
		return err
	}
	if g.includeUsage {
		chunk.Choices = []completionChoice{}
		chunk.Usage = newOpenAIUsage(g)
		if err := o.event("", chunk); err != nil {
			return err
		}
	}
	return o.done()
}
