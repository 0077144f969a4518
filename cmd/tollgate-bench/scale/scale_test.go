package scale

import (
	"context"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/policies"
)

func TestPolicyYAMLIsValidAndSized(t *testing.T) {
	p, err := policies.Parse("scale.yaml", PolicyYAML(7, 300), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Models) != 7 || len(p.Quotas) != 7 || len(p.Quotas[6].Overrides) != 1 {
		t.Fatalf("got %d models, %d quotas, want 7 each with one override", len(p.Models), len(p.Quotas))
	}
	if got := p.Quotas[6].Overrides[0].Limit.Count; got != 600 {
		t.Fatalf("override limit %d, want twice the quota's 300", got)
	}
}

func TestMeasureGrowsWithPolicy(t *testing.T) {
	ctx := context.Background()
	small, err := Measure(ctx, 5, 1)
	if err != nil {
		t.Fatal(err)
	}
	large, err := Measure(ctx, 50, 1)
	if err != nil {
		t.Fatal(err)
	}
	if small.Translate <= 0 || small.Publish <= 0 || small.Parse <= 0 {
		t.Fatalf("small policy: zero durations in %+v", small)
	}
	if large.RateLimitBytes <= small.RateLimitBytes || large.EnvoyBytes <= small.EnvoyBytes {
		t.Fatalf("snapshot bytes do not grow: small %+v, large %+v", small, large)
	}
	// One route configuration holds every model's route: the count stays, the bytes grow.
	if large.Resources != small.Resources || small.Resources == 0 {
		t.Fatalf("resource counts: small %d, large %d, want the same non-zero count", small.Resources, large.Resources)
	}
	if large.Allocated <= small.Allocated {
		t.Fatalf("allocations do not grow: small %d large %d", small.Allocated, large.Allocated)
	}
}

func TestPublishLoop(t *testing.T) {
	rounds, err := PublishLoop(context.Background(), 5, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rounds < 2 {
		t.Fatalf("%d rounds, want at least 2 so both versions get published", rounds)
	}
}
