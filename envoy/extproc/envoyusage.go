package extproc

import (
	"fmt"
	"math"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
)

// usageFromMetadata reads the token usage Envoy's usage filter published for a response.
// Only a complete record counts as reported usage: a partial one may hold an earlier snapshot
// of a stream's counts, and charging it could undercharge. No record (the response reported
// no usage) is unknown usage without an error.
func usageFromMetadata(meta *corev3.Metadata) (llmapi.Usage, error) {
	typed, ok := meta.GetTypedFilterMetadata()[envoy.MetadataTokenUsage]
	if !ok {
		return llmapi.Usage{}, nil
	}
	var record aiv3.TokenUsage
	if err := typed.UnmarshalTo(&record); err != nil {
		return llmapi.Usage{}, fmt.Errorf("%s: %w", envoy.MetadataTokenUsage, err)
	}
	if record.GetExtractionStatus() != aiv3.TokenUsage_COMPLETE {
		return llmapi.Usage{}, fmt.Errorf("%s: extraction %s", envoy.MetadataTokenUsage, record.GetExtractionStatus())
	}
	if record.GetInputTokens() == nil || record.GetOutputTokens() == nil {
		return llmapi.Usage{}, fmt.Errorf("%s: input or output tokens missing", envoy.MetadataTokenUsage)
	}
	// Envoy's counts are inclusive (input covers cached reads and cache writes, output covers
	// reasoning), as llmapi's are. The total is the provider's own when it sent one, as when
	// tollgate reads the stream itself.
	total := record.GetProviderTotalTokens()
	if total == nil {
		total = record.GetTotalTokens()
	}
	return llmapi.Usage{
		Known:                    true,
		InputTokens:              count(record.GetInputTokens()),
		OutputTokens:             count(record.GetOutputTokens()),
		TotalTokens:              count(total),
		CachedInputTokens:        count(record.GetInputTokenDetails().GetCachedTokens()),
		CacheCreationInputTokens: count(record.GetInputTokenDetails().GetCacheCreationTokens()),
		ReasoningTokens:          count(record.GetOutputTokenDetails().GetReasoningTokens()),
	}, nil
}

// count is a count from the record; unset is 0.
func count(v *wrapperspb.UInt64Value) int64 {
	return int64(min(v.GetValue(), math.MaxInt64))
}
