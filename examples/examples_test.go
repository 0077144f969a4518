// Package examples holds runnable tollgate policies and demos; its test keeps every example
// policy valid and servable.
package examples

import (
	"path/filepath"
	"testing"

	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// TestExamplePoliciesAreValid parses, translates and checks every example policy the way a
// reload does before publishing.
func TestExamplePoliciesAreValid(t *testing.T) {
	paths, err := filepath.Glob("*/policy.yaml")
	if err != nil || len(paths) < 2 {
		t.Fatalf("expected example policies, found %v (%v)", paths, err)
	}
	noEnv := func(string) (string, bool) { return "", false }
	for _, path := range paths {
		t.Run(filepath.Dir(path), func(t *testing.T) {
			p, _, err := policies.Load(path, noEnv)
			if err != nil {
				t.Fatal(err)
			}
			out, err := translate.Translate(p)
			if err != nil {
				t.Fatal(err)
			}
			r := xds.NewResources(out.Listeners, out.Routes, out.Clusters, out.RateLimitConfigs)
			if err := xds.Check(r); err != nil {
				t.Fatal(err)
			}
		})
	}
}
