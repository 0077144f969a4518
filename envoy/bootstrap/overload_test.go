package bootstrap

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestOverloadBoundsAreInTheBootstrap(t *testing.T) {
	b, err := Build(Options{Overload: Overload{MaxHeapBytes: 256 << 20, MaxConnections: 1234}})
	if err != nil {
		t.Fatal(err)
	}
	om := b.GetOverloadManager()
	var heap fixedheapv3.FixedHeapConfig
	if err := om.GetResourceMonitors()[0].GetTypedConfig().UnmarshalTo(&heap); err != nil {
		t.Fatal(err)
	}
	if heap.GetMaxHeapSizeBytes() != 256<<20 {
		t.Errorf("heap bound %d, want %d", heap.GetMaxHeapSizeBytes(), 256<<20)
	}
	actions := map[string]bool{}
	for _, a := range om.GetActions() {
		actions[a.GetName()] = true
		for _, tr := range a.GetTriggers() {
			if tr.GetName() != monitorHeap {
				t.Errorf("action %s triggered by %s, which is not a configured monitor", a.GetName(), tr.GetName())
			}
		}
	}
	for _, want := range []string{"envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.shrink_heap"} {
		if !actions[want] {
			t.Errorf("no %s action", want)
		}
	}
	if b.GetMemoryAllocatorManager().GetBytesToRelease() == 0 {
		t.Error("Envoy keeps freed memory for good: no background release")
	}
}

func TestOverloadDefaultsFollowTheMachine(t *testing.T) {
	o := Overload{}.withDefaults()
	if o.MaxHeapBytes < MinMaxHeapBytes {
		t.Errorf("default heap bound %d is below the floor %d", o.MaxHeapBytes, MinMaxHeapBytes)
	}
	if limit := memoryLimit(); limit > 0 && o.MaxHeapBytes > max(limit/heapShareOfMemory, MinMaxHeapBytes) {
		t.Errorf("default heap bound %d exceeds a quarter of the memory limit %d", o.MaxHeapBytes, limit)
	}
	if o.MaxConnections != DefaultMaxConnections {
		t.Errorf("default connections %d, want %d", o.MaxConnections, DefaultMaxConnections)
	}
}

func TestOverloadBoundsAreChecked(t *testing.T) {
	for _, o := range []Overload{{MaxHeapBytes: 1 << 20}, {MaxConnections: -1}} {
		if _, err := Build(Options{Overload: o}); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
}

// Envoy itself accepts the overload manager as rendered, monitors and actions by name.
func TestEnvoyValidatesOverloadBootstrap(t *testing.T) {
	bin := testutil.Envoy(t)
	y, err := YAML(Options{Overload: Overload{MaxHeapBytes: 128 << 20, MaxConnections: 100}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "envoy.yaml")
	if err := os.WriteFile(path, y, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--mode", "validate", "-c", path, "--disable-hot-restart").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("envoy --mode validate: %v\n%s\n%s", err, out, y)
	}
}
