package translate_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// FuzzTranslate: every policy that validation accepts translates into resources that pass all
// of the checks a publish runs. Validation, not Envoy, must be where a bad policy stops.
func FuzzTranslate(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	for _, in := range inputs {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := policies.Parse("fuzz.yaml", data, testEnv)
		if err != nil {
			return
		}
		out, err := translate.Translate(p)
		if err != nil {
			t.Fatalf("a valid policy failed to translate: %v\n%s", err, data)
		}
		r := xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)
		if err := xds.Check(r); err != nil {
			t.Fatalf("a valid policy translated into resources that fail the publish checks: %v\n%s", err, data)
		}
	})
}
