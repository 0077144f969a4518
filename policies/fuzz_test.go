package policies

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that its answer is always one of: a policy that
// passes validation again, or *Errors whose every entry says something.
func FuzzParse(f *testing.F) {
	f.Add(seedPolicy)
	f.Add("")
	f.Add("---\n")
	f.Add("listener: {port: 0}\n")
	f.Add("a: &a [*a]\n")
	f.Add("backends:\n  - &b {name: a, url: \"http://h\"}\n  - <<: [*b, *b]\n    name: c\nmodels: [{name: m, backend: a}]\n")
	f.Add(strings.Replace(seedPolicy, "listener: {port: 8080}", "listener: {port: 8080}\nextProc: {port: 99999}", 1))
	f.Add(strings.Replace(seedPolicy, "    url: http://127.0.0.1:8000\n", "    url: http://127.0.0.1:8000\n    apiKey: ${KEY}\n", 1))
	f.Add(strings.Replace(seedPolicy, "input_tokens * 2 + output_tokens", "[1,2].map(x, x * input_tokens).size()", 1))
	env := envOf(map[string]string{"KEY": canary})

	f.Fuzz(func(t *testing.T, src string) {
		p, err := Parse("fuzz.yaml", []byte(src), env)
		if err != nil {
			if p != nil {
				t.Fatalf("policy returned along with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) || len(errs.List) == 0 {
				t.Fatalf("error %T %v is not a non-empty *Errors", err, err)
			}
			for _, fe := range errs.List {
				if fe.Message == "" || fe.File != "fuzz.yaml" {
					t.Fatalf("incomplete field error %#v", fe)
				}
			}
			if strings.Contains(err.Error(), canary) {
				t.Fatalf("error leaks a secret: %v", err)
			}
			return
		}
		if p == nil {
			t.Fatal("nil policy without an error")
		}
		celEnv, celErr := CostEnv()
		if problems := validate(p, celEnv, celErr); len(problems) > 0 {
			t.Fatalf("accepted policy fails validation: %v", problems)
		}
	})
}
