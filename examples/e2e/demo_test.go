//go:build demo

package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestDemo runs the README's first command, `task demo`, as a newcomer would (it uses the
// demo's fixed ports, 8080 and friends, so nothing else may hold them) and checks the seed
// scenario shows what the seed's own run never did: 200s turning into 429s, with non-zero
// token counts in the metrics view. It has a build tag of its own, demo (`task test-demo`),
// apart from the e2e suite: it runs the whole demo and needs the demo's ports.
func TestDemo(t *testing.T) {
	testutil.Envoy(t)
	// The module root: this package is examples/e2e.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "github.com/go-task/task/v3/cmd/task@v3.54.0", "demo", "--silent")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("task demo: %v\n%s", err, text)
	}
	for _, want := range []string{
		"request 5: 200  tokens=12",
		"request 6: 429",
		`"type":"rate_limit_exceeded"`,
		"qwen3: input=30 output=30 total=60 count=5 (limit=50/hour)",
		"qwen3: allowed=5 blocked=6",
		"over limit: requests get 429",
		"stopped tollgate",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("task demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("task demo output:\n%s", text)
	}
}
