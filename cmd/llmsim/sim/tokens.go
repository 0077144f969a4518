package sim

import "strings"

// vocabularySize is the number of words in the fixed sentence every answer is made of:
// "Hello from the LLM simulator today." Six words, so the default answer is the sentence once;
// longer answers repeat it.
const vocabularySize = 6

// tokenAt returns token i of every answer, one word per token, with the space that separates it
// from the previous token so that concatenated stream deltas equal the non-streamed text. The
// words are string constants, so producing a token never allocates.
func tokenAt(i int) string {
	if i == 0 {
		return "Hello"
	}
	switch i % vocabularySize {
	case 0:
		return " Hello"
	case 1:
		return " from"
	case 2:
		return " the"
	case 3:
		return " LLM"
	case 4:
		return " simulator"
	default:
		return " today."
	}
}

// completionText returns the full text of an answer with n tokens.
func completionText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(tokenAt(i))
	}
	return b.String()
}
