package llmapi

// ResponseMaxDepth bounds JSON nesting in response bodies and stream events. Usage sits at most
// three levels down; the limit only exists so a hostile or broken backend cannot make the parser
// walk an unbounded structure.
const ResponseMaxDepth = 128

// Usage is token usage as reported by the backend.
//
// InputTokens counts every prompt token, cached or not. OpenAI-style APIs report it that way;
// for the Anthropic Messages API, whose input_tokens excludes cache reads and writes, it is
// input_tokens + cache_read_input_tokens + cache_creation_input_tokens, so a quota on input
// tokens means the same thing whichever API the request used. TotalTokens is the backend's
// total_tokens when it reports one, else InputTokens + OutputTokens.
type Usage struct {
	InputTokens, OutputTokens, TotalTokens, CachedInputTokens, ReasoningTokens int64
	// CacheCreationInputTokens is Anthropic's cache_creation_input_tokens (prompt tokens written
	// to the cache); it is already part of InputTokens.
	CacheCreationInputTokens int64
	Known                    bool // a usage object was seen
}

// usageField indexes the raw counters a usage object can carry.
type usageField int

const (
	fieldInput usageField = iota
	fieldOutput
	fieldTotal
	fieldCached        // OpenAI *_tokens_details.cached_tokens
	fieldReasoning     // OpenAI *_tokens_details.reasoning_tokens
	fieldCacheRead     // Anthropic cache_read_input_tokens
	fieldCacheCreation // Anthropic cache_creation_input_tokens
	numUsageFields
)

// rawUsage holds counters exactly as the backend named them, with a bit per field that was set,
// so that merging several usage reports of one stream can keep the latest value of each field
// without a later partial report erasing an earlier field.
type rawUsage struct {
	values [numUsageFields]int64
	set    uint8
	known  bool
}

func (u *rawUsage) put(f usageField, v int64) {
	u.values[f] = v
	u.set |= 1 << f
}

func (u *rawUsage) has(f usageField) bool { return u.set&(1<<f) != 0 }

// merge overwrites u's fields with those set in later.
func (u *rawUsage) merge(later *rawUsage) {
	if !later.known {
		return
	}
	u.known = true
	for f := range numUsageFields {
		if later.has(f) {
			u.put(f, later.values[f])
		}
	}
}

// openAIUsage converts counters named the OpenAI way (prompt_tokens or input_tokens, with
// cached tokens among the *_tokens_details) to the normalized Usage.
func openAIUsage(u rawUsage) Usage {
	if !u.known {
		return Usage{}
	}
	v := &u.values
	out := Usage{
		InputTokens:       v[fieldInput],
		OutputTokens:      v[fieldOutput],
		ReasoningTokens:   v[fieldReasoning],
		CachedInputTokens: v[fieldCached],
		Known:             true,
	}
	if u.has(fieldTotal) {
		out.TotalTokens = v[fieldTotal]
	} else {
		out.TotalTokens = out.InputTokens + out.OutputTokens
	}
	return out
}

// readUsage reads a usage value into u: an object marks u known, null (or any other non-object,
// which some backends emit as a placeholder) leaves it untouched. Both the OpenAI chat naming
// (prompt_tokens, completion_tokens) and the Responses/Anthropic naming (input_tokens,
// output_tokens) are understood; which cache fields count is decided by each format's usage method.
func (s *scanner) readUsage(parentDepth int, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	u.known = true
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		var field usageField
		switch string(key) {
		case "prompt_tokens", "input_tokens":
			field = fieldInput
		case "completion_tokens", "output_tokens":
			field = fieldOutput
		case "total_tokens":
			field = fieldTotal
		case "cache_read_input_tokens":
			field = fieldCacheRead
		case "cache_creation_input_tokens":
			field = fieldCacheCreation
		case "prompt_tokens_details", "input_tokens_details":
			err = s.readTokenDetail(it.depth, "cached_tokens", fieldCached, u)
			if err != nil {
				return err
			}
			continue
		case "completion_tokens_details", "output_tokens_details":
			err = s.readTokenDetail(it.depth, "reasoning_tokens", fieldReasoning, u)
			if err != nil {
				return err
			}
			continue
		default:
			if err := s.skipValue(it.depth); err != nil {
				return err
			}
			continue
		}
		n, ok, err := s.readTokenCount(it.depth)
		if err != nil {
			return err
		}
		if ok {
			u.put(field, n)
		}
	}
}

// readTokenDetail reads one counter out of a *_tokens_details object.
func (s *scanner) readTokenDetail(parentDepth int, name string, field usageField, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		if string(key) != name {
			if err := s.skipValue(it.depth); err != nil {
				return err
			}
			continue
		}
		n, ok, err := s.readTokenCount(it.depth)
		if err != nil {
			return err
		}
		if ok {
			u.put(field, n)
		}
	}
}

// readNestedUsage reads the "usage" member of an object (response or message).
func (s *scanner) readNestedUsage(parentDepth int, u *rawUsage) error {
	if s.peek() != '{' {
		return s.skipValue(parentDepth)
	}
	it, err := s.enterObject(parentDepth)
	if err != nil {
		return err
	}
	for {
		key, ok, err := s.next(&it)
		if err != nil || !ok {
			return err
		}
		if string(key) == "usage" {
			err = s.readUsage(it.depth, u)
		} else {
			err = s.skipValue(it.depth)
		}
		if err != nil {
			return err
		}
	}
}
