//go:build demo

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// TestDemo runs the README's first command, `task demo`, as a newcomer would (it uses the
// demo's fixed ports, 8080 and friends, so nothing else may hold them) and checks the seed
// scenario shows what the seed's own run never did: 200s turning into 429s, with non-zero
// token counts in the metrics view, and that it prints what the READMEs' transcripts show. It
// has a build tag of its own, demo (`task test-demo`), apart from the e2e suite: it runs the
// whole demo and needs the demo's ports.
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
	// What a newcomer reads is what the demo prints: the walk-through's transcript line by line,
	// and the README's excerpt as one unbroken run of those lines.
	norm := newNormalizer()
	got := norm.lines(demoLines(text))
	walkThrough := norm.lines(transcript(t, filepath.Join(root, "examples", "usage-based-rate-limiting", "README.md"), "<!-- demo transcript: begin -->"))
	if err := sameLines(walkThrough, got); err != nil {
		t.Errorf("examples/usage-based-rate-limiting/README.md's transcript and the demo's output differ: %v", err)
	}
	excerpt := norm.lines(transcript(t, filepath.Join(root, "README.md"), "## The seed scenario"))
	if !containsRun(got, excerpt) {
		t.Errorf("README.md's seed scenario transcript is not in the demo's output:\n%s", strings.Join(excerpt, "\n"))
	}
	if t.Failed() {
		t.Logf("task demo output:\n%s", text)
	}
}

// normalizer replaces what differs from run to run, each by a placeholder of its own.
type normalizer []struct {
	re          *regexp.Regexp
	placeholder string
}

func newNormalizer() normalizer {
	return normalizer{
		{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`), "<time>"},
		{regexp.MustCompile(`\(in (\d+h)?(\d+m)?\d+s\)`), "(in <duration>)"},
		{regexp.MustCompile(`resets at (\d{4}-\d\d-\d\d )?\d\d:\d\d [A-Z]+, in [0-9a-z ]+\.`), "resets at <time>, in <duration>."},
		{regexp.MustCompile(`"created":\d+`), `"created":<n>`},
		{regexp.MustCompile(`\b[0-9a-f]{16}\b`), "<version>"},
		// Envoy's default heap bound is a share of the machine's memory.
		{regexp.MustCompile(`heap \d+(B|KiB|MiB|GiB) `), "heap <size> "},
	}
}

func (n normalizer) lines(lines []string) []string {
	out := make([]string, len(lines))
	for i, line := range lines {
		for _, v := range n {
			line = v.re.ReplaceAllString(line, v.placeholder)
		}
		out[i] = strings.TrimRight(line, " ")
	}
	return out
}

// demoLines is the demo's output without what `task setup` printed: that depends on what the
// machine already had.
func demoLines(output string) []string {
	var lines []string
	inSetup := false
	for _, line := range strings.Split(strings.TrimRight(output, "\n"), "\n") {
		if strings.HasPrefix(line, "$ ") {
			inSetup = line == "$ task setup"
		} else if inSetup {
			continue
		}
		lines = append(lines, line)
	}
	return lines
}

// transcript returns the lines of the first fenced block after the line marker in a Markdown
// file.
func transcript(t *testing.T, path, marker string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, after, found := strings.Cut(string(data), "\n"+marker+"\n")
	if !found {
		t.Fatalf("%s has no line %q", path, marker)
	}
	_, block, found := strings.Cut(after, "```\n")
	if found {
		block, _, found = strings.Cut(block, "\n```\n")
	}
	if !found {
		t.Fatalf("%s has no fenced block after %q", path, marker)
	}
	return strings.Split(block, "\n")
}

// sameLines says where want and got first differ.
func sameLines(want, got []string) error {
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			return fmt.Errorf("line %d: transcript %q, demo %q", i+1, want[i], got[i])
		}
	}
	if len(want) != len(got) {
		return fmt.Errorf("the transcript has %d lines, the demo printed %d", len(want), len(got))
	}
	return nil
}

// containsRun reports whether run occurs in lines as consecutive lines.
func containsRun(lines, run []string) bool {
	for start := 0; start+len(run) <= len(lines); start++ {
		if sameLines(run, lines[start:start+len(run)]) == nil {
			return true
		}
	}
	return false
}
