package extproc

import "github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"

// What a request may cost, before it runs and when its backend reported no usage.
//
// Before a request goes upstream, admission reserves its worst case: the prompt as estimated
// (about four bytes of text per token, what OpenAI advises for English) plus the most output
// the request allows (its max_tokens or the like, else the policy's default). When it ends, the
// reservation is replaced by what it really cost: the usage its backend reported, or, when
// there is none (no usage in the answer, an answer that could not be read, a client that left
// early), an upper bound that never errs low:
//   - the prompt at one token per byte of the request's text, plus promptFraming for the
//     message framing (every token of a byte-level tokenizer is at least one byte), unless
//     the backend already reported its prompt count;
//   - the output at one token per byte of the output text served (or one per output event, or
//     what the backend reported so far, whichever is most), at most the request's output
//     ceiling; and the whole ceiling when no output was seen at all, since the backend may
//     still be producing it.

// bytesPerToken is the estimate's exchange rate for reservations.
const bytesPerToken = 4

// promptFraming covers the tokens a chat API adds around the messages (roles, separators),
// which the request's text does not show.
const promptFraming = 8

func tokensForBytes(n int64) int64 { return (n + bytesPerToken - 1) / bytesPerToken }

// brokenOffStep is the step the output of a response that did not complete is rounded up to.
const brokenOffStep = 64

func roundUp(n, step int64) int64 { return (n + step - 1) / step * step }

// served is what a response had delivered when it ended.
type served struct {
	outputEvents    int64
	outputTextBytes int64
}

// worstCase is the most the request may cost as far as can be told before it runs: its prompt
// as estimated and all the output it allows. Admission reserves it.
func (ex *exchange) worstCase() llmapi.Usage {
	u := llmapi.Usage{Known: true, InputTokens: tokensForBytes(int64(ex.promptBytes)), OutputTokens: ex.maxOutput}
	u.TotalTokens = u.InputTokens + u.OutputTokens
	return u
}

// billable returns the usage to charge and its basis. A response that completed is charged
// the usage its backend reported; so is one whose report already covers every streamed event
// (OpenAI's usage chunk, which comes after the content). Anything else is charged the upper
// bound described above.
func (ex *exchange) billable(reported llmapi.Usage, out served, complete bool) (llmapi.Usage, string) {
	if reported.Known && (complete || reported.OutputTokens >= out.outputEvents) {
		if reported.TotalTokens == 0 {
			reported.TotalTokens = reported.InputTokens + reported.OutputTokens
		}
		return reported, basisUsage
	}
	bound := llmapi.Usage{Known: true, InputTokens: int64(ex.promptBytes) + promptFraming}
	if reported.Known && reported.InputTokens > 0 {
		bound.InputTokens = reported.InputTokens
		bound.CachedInputTokens = reported.CachedInputTokens
		bound.CacheCreationInputTokens = reported.CacheCreationInputTokens
	}
	if servedOutput := max(out.outputEvents, out.outputTextBytes); servedOutput > 0 {
		if !complete {
			servedOutput = roundUp(servedOutput, brokenOffStep)
		}
		bound.OutputTokens = min(ex.maxOutput, servedOutput)
	} else {
		bound.OutputTokens = ex.maxOutput
	}
	bound.OutputTokens = max(bound.OutputTokens, reported.OutputTokens)
	bound.TotalTokens = bound.InputTokens + bound.OutputTokens
	return bound, basisEstimate
}
