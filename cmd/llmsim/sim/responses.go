package sim

import (
	"context"
	"strings"
)

// responsesUsage is the usage object of the OpenAI Responses API.
type responsesUsage struct {
	InputTokens         tokenCount          `json:"input_tokens"`
	InputTokensDetails  promptTokensDetails `json:"input_tokens_details"`
	OutputTokens        tokenCount          `json:"output_tokens"`
	OutputTokensDetails outputTokensDetails `json:"output_tokens_details"`
	TotalTokens         tokenCount          `json:"total_tokens"`
}

type outputTokensDetails struct {
	ReasoningTokens tokenCount `json:"reasoning_tokens"`
}

// responseObject is a Responses API response; streams send it in progress (no output, null
// usage) in response.created and complete in response.completed.
type responseObject struct {
	ID        string          `json:"id"`
	Object    string          `json:"object"`
	CreatedAt int64           `json:"created_at"`
	Status    string          `json:"status"`
	Model     string          `json:"model"`
	Output    []responseItem  `json:"output"`
	Usage     *responsesUsage `json:"usage"`
}

type responseItem struct {
	Type    string            `json:"type"`
	ID      string            `json:"id"`
	Status  string            `json:"status"`
	Role    string            `json:"role"`
	Content []responseContent `json:"content"`
}

type responseContent struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
}

func newOutputText(text string) responseContent {
	return responseContent{Type: "output_text", Text: text, Annotations: []any{}}
}

// messageItemID derives the output message's id from the response id, e.g. resp_llmsim-7 →
// msg_llmsim-7, so it is unique without another counter.
func messageItemID(g *generation) string {
	return "msg_" + strings.TrimPrefix(g.id, "resp_")
}

func completedItem(g *generation, text string) responseItem {
	return responseItem{
		Type:    "message",
		ID:      messageItemID(g),
		Status:  "completed",
		Role:    "assistant",
		Content: []responseContent{newOutputText(text)},
	}
}

func responsesResponse(g *generation, text string) responseObject {
	return responseObject{
		ID:        g.id,
		Object:    "response",
		CreatedAt: g.created,
		Status:    "completed",
		Model:     g.model,
		Output:    []responseItem{completedItem(g, text)},
		Usage: &responsesUsage{
			InputTokens:         g.count(g.inputTokens),
			InputTokensDetails:  promptTokensDetails{CachedTokens: g.count(0)},
			OutputTokens:        g.count(g.outputTokens),
			OutputTokensDetails: outputTokensDetails{ReasoningTokens: g.count(0)},
			TotalTokens:         g.count(g.totalTokens()),
		},
	}
}

// Streaming event payloads. Every event carries its type and a sequence number.

type responseLifecycleEvent struct {
	Type           string         `json:"type"`
	SequenceNumber int            `json:"sequence_number"`
	Response       responseObject `json:"response"`
}

type responseItemEvent struct {
	Type           string       `json:"type"`
	SequenceNumber int          `json:"sequence_number"`
	OutputIndex    int          `json:"output_index"`
	Item           responseItem `json:"item"`
}

type responsePartEvent struct {
	Type           string          `json:"type"`
	SequenceNumber int             `json:"sequence_number"`
	ItemID         string          `json:"item_id"`
	OutputIndex    int             `json:"output_index"`
	ContentIndex   int             `json:"content_index"`
	Part           responseContent `json:"part"`
}

type responseTextDeltaEvent struct {
	Type           string `json:"type"`
	SequenceNumber int    `json:"sequence_number"`
	ItemID         string `json:"item_id"`
	OutputIndex    int    `json:"output_index"`
	ContentIndex   int    `json:"content_index"`
	Delta          string `json:"delta"`
}

type responseTextDoneEvent struct {
	Type           string `json:"type"`
	SequenceNumber int    `json:"sequence_number"`
	ItemID         string `json:"item_id"`
	OutputIndex    int    `json:"output_index"`
	ContentIndex   int    `json:"content_index"`
	Text           string `json:"text"`
}

// streamResponses sends the Responses API event sequence: response.created, response.in_progress,
// the output item and content part openers, one response.output_text.delta per token, their
// closers, and response.completed carrying the usage. Unlike chat streams there is no [DONE].
func (h *handler) streamResponses(ctx context.Context, o *output, g *generation) error {
	seq := -1
	next := func() int { seq++; return seq } // sequence numbers count events from 0
	itemID := messageItemID(g)
	inProgress := responseObject{
		ID: g.id, Object: "response", CreatedAt: g.created, Status: "in_progress", Model: g.model,
		Output: []responseItem{},
	}
	openItem := responseItem{Type: "message", ID: itemID, Status: "in_progress", Role: "assistant", Content: []responseContent{}}

	if err := o.event("response.created", responseLifecycleEvent{"response.created", next(), inProgress}); err != nil {
		return err
	}
	if err := o.event("response.in_progress", responseLifecycleEvent{"response.in_progress", next(), inProgress}); err != nil {
		return err
	}
	if err := o.event("response.output_item.added", responseItemEvent{"response.output_item.added", next(), 0, openItem}); err != nil {
		return err
	}
	if err := o.event("response.content_part.added",
		responsePartEvent{"response.content_part.added", next(), itemID, 0, 0, newOutputText("")}); err != nil {
		return err
	}

	var text strings.Builder
	err := h.emitTokens(ctx, g, func(token string) error {
		text.WriteString(token)
		return o.event("response.output_text.delta",
			responseTextDeltaEvent{"response.output_text.delta", next(), itemID, 0, 0, token})
	})
	if err != nil {
		return err
	}

	full := text.String()
	if err := o.event("response.output_text.done",
		responseTextDoneEvent{"response.output_text.done", next(), itemID, 0, 0, full}); err != nil {
		return err
	}
	if err := o.event("response.content_part.done",
		responsePartEvent{"response.content_part.done", next(), itemID, 0, 0, newOutputText(full)}); err != nil {
		return err
	}
	if err := o.event("response.output_item.done",
		responseItemEvent{"response.output_item.done", next(), 0, completedItem(g, full)}); err != nil {
		return err
	}
	if err := o.event("response.completed",
		responseLifecycleEvent{"response.completed", next(), responsesResponse(g, full)}); err != nil {
		return err
	}
	return o.finish()
}
