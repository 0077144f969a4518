package policies

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/cel-go/cel"
)

// CEL variables a cost expression can read. Token counts are int rather than uint so operators
// can write "input_tokens * 2 + output_tokens" without "u" suffixes on every literal.
const (
	CELInputTokens       = "input_tokens"
	CELOutputTokens      = "output_tokens"
	CELTotalTokens       = "total_tokens"
	CELCachedInputTokens = "cached_input_tokens"
	CELReasoningTokens   = "reasoning_tokens"
	CELModel             = "model"
	CELBackend           = "backend"
)

// celCostLimit bounds the work one evaluation may do. Costs are evaluated on every response,
// and comprehension macros over list literals can multiply work far beyond the expression's
// length; an expression that needs more than this is a policy mistake, not a workload.
const celCostLimit = 100_000

// CostEnv returns the CEL environment cost expressions are checked in. The ext_proc server
// evaluates programs built here (CostProgram.Eval), so both sides always agree on variable names
// and types.
func CostEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(CELInputTokens, cel.IntType),
		cel.Variable(CELOutputTokens, cel.IntType),
		cel.Variable(CELTotalTokens, cel.IntType),
		cel.Variable(CELCachedInputTokens, cel.IntType),
		cel.Variable(CELReasoningTokens, cel.IntType),
		cel.Variable(CELModel, cel.StringType),
		cel.Variable(CELBackend, cel.StringType),
	)
}

// CostVars are the values a cost expression is evaluated over: a response's token usage, the
// request's model and the backend serving it.
type CostVars struct {
	InputTokens, OutputTokens, TotalTokens, CachedInputTokens, ReasoningTokens int64
	Model, Backend                                                             string
}

// CostProgram is a compiled cost expression. It is safe for concurrent use.
type CostProgram struct{ program cel.Program }

// maxCost bounds a uint result to what a float64 holds exactly, as costs are published as
// numbers in Envoy's dynamic metadata.
const maxCost = 1 << 53

// Eval computes the cost of one response. The result must be a non-negative integer; anything
// else (a negative int, an evaluation error such as a division by zero, a result over the cost
// limit) is an error, and the caller charges nothing it cannot trust.
func (p *CostProgram) Eval(ctx context.Context, v CostVars) (int64, error) {
	out, _, err := p.program.ContextEval(ctx, map[string]any{
		CELInputTokens:       v.InputTokens,
		CELOutputTokens:      v.OutputTokens,
		CELTotalTokens:       v.TotalTokens,
		CELCachedInputTokens: v.CachedInputTokens,
		CELReasoningTokens:   v.ReasoningTokens,
		CELModel:             v.Model,
		CELBackend:           v.Backend,
	})
	if err != nil {
		return 0, err
	}
	switch n := out.Value().(type) {
	case int64:
		if n < 0 {
			return 0, fmt.Errorf("result %d is negative", n)
		}
		return n, nil
	case uint64:
		if n > maxCost {
			return 0, fmt.Errorf("result %d is too large", n)
		}
		return int64(n), nil
	default:
		return 0, fmt.Errorf("result %v is %s, want a non-negative int", out, out.Type().TypeName())
	}
}

// CompileCost compiles and type-checks a cost expression. The result type must be int or uint:
// a double would have to be rounded somewhere, and dyn would defer a type error to the first
// response that is charged. Programs carry a cost limit, so a pathological expression fails its
// evaluation instead of stalling the request.
func CompileCost(expr string) (*CostProgram, error) {
	env, err := CostEnv()
	if err != nil {
		return nil, fmt.Errorf("build CEL environment: %w", err)
	}
	return compileCost(env, expr)
}

func compileCost(env *cel.Env, expr string) (*CostProgram, error) {
	ast, issues := env.Compile(expr)
	if issues != nil && issues.Err() != nil {
		return nil, compactIssues(issues)
	}
	out := ast.OutputType()
	if !out.IsExactType(cel.IntType) && !out.IsExactType(cel.UintType) {
		return nil, fmt.Errorf("result must be int or uint, got %s (convert with int(...) or uint(...))", out)
	}
	prg, err := env.Program(ast, cel.CostLimit(celCostLimit))
	if err != nil {
		return nil, err
	}
	return &CostProgram{program: prg}, nil
}

// compactIssues renders CEL's multi-line error report (with its ASCII caret art) as one line per
// problem, which reads better inside "file:line: costs[3].cel: ..." messages.
func compactIssues(issues *cel.Issues) error {
	var msgs []string
	for _, e := range issues.Errors() {
		// Cost expressions have no container; saying so only adds noise.
		msg := strings.TrimSuffix(e.Message, " (in container '')")
		if loc := e.Location; loc != nil && loc.Line() > 0 {
			if loc.Line() > 1 {
				msg = fmt.Sprintf("line %d column %d: %s", loc.Line(), loc.Column()+1, msg)
			} else {
				msg = fmt.Sprintf("column %d: %s", loc.Column()+1, msg)
			}
		}
		msgs = append(msgs, msg)
	}
	if len(msgs) == 0 {
		return issues.Err()
	}
	return errors.New(strings.Join(msgs, "; "))
}
