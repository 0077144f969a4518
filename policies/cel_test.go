package policies

import (
	"strings"
	"testing"
)

// usage is a full set of CEL variables, as the ext_proc side provides them.
func usage(in, out int64) map[string]any {
	return map[string]any{
		CELInputTokens:       in,
		CELOutputTokens:      out,
		CELTotalTokens:       in + out,
		CELCachedInputTokens: int64(0),
		CELReasoningTokens:   int64(0),
		CELModel:             "gpt-4",
		CELBackend:           "sim",
	}
}

func TestCompileCostEvaluates(t *testing.T) {
	tests := []struct {
		expr string
		want any
	}{
		{"input_tokens * 2 + output_tokens", int64(2*6 + 6)},
		{"uint(total_tokens) + 1u", uint64(13)},
		{"model == 'gpt-4' && backend == 'sim' ? total_tokens * 10 : total_tokens", int64(120)},
		{"int(double(output_tokens) * 1.5)", int64(9)},
	}
	for _, tt := range tests {
		prg, err := CompileCost(tt.expr)
		if err != nil {
			t.Errorf("CompileCost(%q): %v", tt.expr, err)
			continue
		}
		out, _, err := prg.Eval(usage(6, 6))
		if err != nil {
			t.Errorf("Eval(%q): %v", tt.expr, err)
			continue
		}
		if got := out.Value(); got != tt.want {
			t.Errorf("%q = %v (%T), want %v (%T)", tt.expr, got, got, tt.want, tt.want)
		}
	}
}

func TestCompileCostRejects(t *testing.T) {
	tests := []struct{ expr, msg string }{
		{"", "column"},
		{"input_tokens +", "column"},
		{"input_tokens * 1.5", "no matching overload"},
		{"double(input_tokens)", "result must be int or uint, got double"},
		{"model", "result must be int or uint, got string"},
		{"input_tokens > 3", "result must be int or uint, got bool"},
		{"dyn(1)", "result must be int or uint, got dyn"},
		{"prompt_tokens", "undeclared reference to 'prompt_tokens'"},
	}
	for _, tt := range tests {
		_, err := CompileCost(tt.expr)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("CompileCost(%q) error = %v, want it to contain %q", tt.expr, err, tt.msg)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("CompileCost(%q) error spans lines: %q", tt.expr, err)
		}
	}
}

func TestCompileCostBoundsWork(t *testing.T) {
	list := "[" + strings.Repeat("1,", 29) + "1]"
	expr := list + ".map(a, " + list + ".map(b, " + list + ".map(c, " + list + ".map(d, a + b + c + d)))).size()"
	prg, err := CompileCost(expr)
	if err != nil {
		t.Fatalf("CompileCost: %v", err)
	}
	if _, _, err := prg.Eval(usage(1, 1)); err == nil || !strings.Contains(err.Error(), "cost limit") {
		t.Errorf("Eval of an expensive expression = %v, want a cost limit error", err)
	}
}

func TestCostEnvDeclaresVariables(t *testing.T) {
	env, err := CostEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CELInputTokens, CELOutputTokens, CELTotalTokens, CELCachedInputTokens, CELReasoningTokens, CELModel, CELBackend} {
		if _, iss := env.Compile(name); iss != nil && iss.Err() != nil {
			t.Errorf("variable %s not declared: %v", name, iss.Err())
		}
	}
}

func BenchmarkCompileCost(b *testing.B) {
	for b.Loop() {
		if _, err := CompileCost("input_tokens * 2 + output_tokens"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEvalCost(b *testing.B) {
	prg, err := CompileCost("input_tokens * 2 + output_tokens")
	if err != nil {
		b.Fatal(err)
	}
	vars := usage(100, 50)
	for b.Loop() {
		if _, _, err := prg.Eval(vars); err != nil {
			b.Fatal(err)
		}
	}
}
