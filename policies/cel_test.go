package policies

import (
	"context"
	"strings"
	"testing"
)

// usage is a full set of CEL variables, as the ext_proc side provides them.
func usage(in, out int64) CostVars {
	return CostVars{InputTokens: in, OutputTokens: out, TotalTokens: in + out, Model: "gpt-4", Backend: "sim"}
}

func TestCompileCostEvaluates(t *testing.T) {
	tests := []struct {
		expr string
		want int64
	}{
		{"input_tokens * 2 + output_tokens", 2*6 + 6},
		{"uint(total_tokens) + 1u", 13},
		{"model == 'gpt-4' && backend == 'sim' ? total_tokens * 10 : total_tokens", 120},
		{"int(double(output_tokens) * 1.5)", 9},
	}
	for _, tt := range tests {
		prg, err := CompileCost(tt.expr)
		if err != nil {
			t.Errorf("CompileCost(%q): %v", tt.expr, err)
			continue
		}
		got, err := prg.Eval(context.Background(), usage(6, 6))
		if err != nil {
			t.Errorf("Eval(%q): %v", tt.expr, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%q = %d, want %d", tt.expr, got, tt.want)
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

// TestEvalRefusesUntrustedResults: a result that is not a non-negative integer that a float64
// holds exactly, or an evaluation error, is an error: nothing is charged from it. (Compilation
// already refuses non-integer result types; the check at evaluation holds whatever compiled.)
func TestEvalRefusesUntrustedResults(t *testing.T) {
	env, err := CostEnv()
	if err != nil {
		t.Fatal(err)
	}
	unchecked := func(expr string) *CostProgram {
		ast, iss := env.Compile(expr)
		if iss != nil && iss.Err() != nil {
			t.Fatal(iss.Err())
		}
		prg, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		return &CostProgram{program: prg}
	}
	tests := []struct {
		prg  *CostProgram
		want string
	}{
		{unchecked("input_tokens - 1000"), "negative"},
		{unchecked("input_tokens / (output_tokens - 6)"), "division by zero"},
		{unchecked("double(input_tokens) * 1.5"), "want a non-negative int"},
		{unchecked("uint(9007199254740993)"), "too large"},
	}
	for _, tt := range tests {
		if got, err := tt.prg.Eval(context.Background(), usage(6, 6)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Eval = %d, %v; want an error containing %q", got, err, tt.want)
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
	if _, err := prg.Eval(context.Background(), usage(1, 1)); err == nil || !strings.Contains(err.Error(), "cost limit") {
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
	ctx := context.Background()
	for b.Loop() {
		if _, err := prg.Eval(ctx, vars); err != nil {
			b.Fatal(err)
		}
	}
}
