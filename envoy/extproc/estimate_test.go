package extproc

import (
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
)

// The upper bound of a response that did not complete counts its served output in steps, up
// to the request's ceiling; a completed one without usage counts it as it is.
func TestBillableRoundsBrokenOffOutputUpToAStep(t *testing.T) {
	ex := &exchange{promptBytes: 100, maxOutput: 300}
	const input = 100 + promptFraming
	for _, tc := range []struct {
		name     string
		out      served
		complete bool
		want     int64 // output tokens charged
	}{
		{"nothing served yet", served{}, false, 300},
		{"one event", served{outputEvents: 1, outputTextBytes: 1}, false, brokenOffStep},
		{"a step exactly", served{outputEvents: 20, outputTextBytes: brokenOffStep}, false, brokenOffStep},
		{"one byte past a step", served{outputEvents: 20, outputTextBytes: brokenOffStep + 1}, false, 2 * brokenOffStep},
		{"more events than bytes", served{outputEvents: 70, outputTextBytes: 60}, false, 2 * brokenOffStep},
		{"capped by the ceiling", served{outputEvents: 80, outputTextBytes: 290}, false, 300},
		{"completed without usage: not rounded", served{outputEvents: 20, outputTextBytes: 65}, true, 65},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, basis := ex.billable(llmapi.Usage{}, tc.out, tc.complete)
			if basis != basisEstimate || got.OutputTokens != tc.want || got.InputTokens != input || got.TotalTokens != input+tc.want {
				t.Errorf("billable = %+v (%s), want output %d, input %d, estimated", got, basis, tc.want, input)
			}
		})
	}
	// A report that covers what was served is charged as it is, rounded or not.
	reported := llmapi.Usage{Known: true, InputTokens: 10, OutputTokens: 7, TotalTokens: 17}
	if got, basis := ex.billable(reported, served{outputEvents: 7, outputTextBytes: 30}, false); basis != basisUsage || got != reported {
		t.Errorf("billable with a covering report = %+v (%s), want the report", got, basis)
	}
}
