package llmapi

// completions is OpenAI's legacy completions API, /v1/completions. Its bodies and streams have
// the chat completions shape, with the generated text in choices[].text, which the chat
// completions readers read too; only its name and GenAI operation differ.
type completions struct{ chatCompletions }

func (completions) Name() string      { return "completions" }
func (completions) Operation() string { return "text_completion" }

// EnvoyReadsStreamUsage is false: Envoy's usage filter does not know the legacy API, whose
// stream chunks therefore pass through the gateway's own parser.
func (completions) EnvoyReadsStreamUsage() bool { return false }
