package reload

import (
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond} {
		if got := Percentile(ds, q); got != want {
			t.Errorf("p%.0f = %s, want %s", 100*q, got, want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Fatal("Percentile reordered its input")
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Fatalf("percentile of nothing = %s, want 0", got)
	}
}
