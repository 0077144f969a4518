// Package examples holds runnable tollgate policies and demos; its test keeps every example
// policy valid and servable.
package examples

import (
	"path/filepath"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

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
			var r xds.Resources
			for _, l := range out.Listeners {
				r.Listeners = append(r.Listeners, l)
			}
			for _, rc := range out.Routes {
				r.Routes = append(r.Routes, rc)
			}
			for _, c := range out.Clusters {
				r.Clusters = append(r.Clusters, c)
			}
			for _, c := range out.RateLimitConfigs {
				r.RateLimitConfigs = append(r.RateLimitConfigs, types.Resource(c))
			}
			if err := xds.Check(r); err != nil {
				t.Fatal(err)
			}
		})
	}
}
