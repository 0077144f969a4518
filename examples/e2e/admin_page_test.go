//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

// chromium returns the Chromium (or Chrome) binary the browser test drives.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	testutil.Missing(t, "Chromium is not installed (task setup installs Debian's chromium)")
	return ""
}

// TestAdminPageInABrowser drives the operator's page in headless Chromium against the real
// stack: without the token it is refused; signed in, it shows alice's spend after her
// requests and her refusal once her quota is gone, and a broken policy edit's error; and the
// browser logs no console error. With TOLLGATE_SCREENSHOT set it saves the page there, as a PNG.
func TestAdminPageInABrowser(t *testing.T) {
	browser := chromium(t)
	s, adminURL := adminStack(t, seedPolicy)
	page := adminURL + "/admin/"
	if r := mustDo(t, "GET", page, nil, ""); r.status != 401 || strings.Contains(string(r.body), "Last refusals") {
		t.Fatalf("the page without the token: %d", r.status)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.WindowSize(1280, 1400))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelTimeout()
	var mu sync.Mutex
	var consoleErrors []string
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(selector string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(selector)))
		if err != nil {
			t.Fatalf("reading %s: %v", selector, err)
		}
		return v
	}
	do("start the browser", chromedp.Navigate("about:blank"))
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				consoleErrors = append(consoleErrors, fmt.Sprint(e.Args))
			}
		case *runtime.EventExceptionThrown:
			consoleErrors = append(consoleErrors, fmt.Sprintf("%s (%s:%d)", e.ExceptionDetails.Text, e.ExceptionDetails.URL, e.ExceptionDetails.LineNumber))
		}
	}); err != nil {
		t.Fatal(err)
	}
	do("sign in",
		chromedp.Navigate(page),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
		chromedp.Submit(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#refusals")))
	if policy := text("#policy"); !strings.Contains(policy, "ok") {
		t.Errorf("policy table: %q", policy)
	}

	if got := fmt.Sprint(sendBackToBack(t, s, "alice", "qwen3", 6, false)); got != "[200 200 200 200 200 429]" {
		t.Fatalf("alice: %s", got)
	}
	awaitCounter(t, addr(s.redisPort), "alice", 60)
	do("alice's spend", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#refusals")))
	if top := text(`table.top[data-quota="qwen3-llm_total_token-per-hour"]`); !strings.Contains(top, "alice") || !strings.Contains(top, "60") {
		t.Errorf("alice's spend is not on the page:\n%s", top)
	}
	if refusals := text("#refusals"); !strings.Contains(refusals, "alice") || !strings.Contains(refusals, "429") || !strings.Contains(refusals, "has used all 50 qwen3 tokens") {
		t.Errorf("alice's refusal is not on the page:\n%s", refusals)
	}

	// A broken edit: the page shows its error, and that the last good policy is still served.
	s.writePolicy(t, strings.Replace(seedPolicy, "limit: 50, per: hour", "limit: 0, per: hour", 1))
	testutil.Eventually(t, 15*time.Second, "the reload error on the page", func() error {
		if err := chromedp.Do(ctx, chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#refusals"))); err != nil {
			return err
		}
		errs, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("reload-errors") || {innerText: ""}).innerText`))
		if err != nil {
			return err
		}
		if !strings.Contains(errs, "limit") {
			return fmt.Errorf("reload errors %q", errs)
		}
		return nil
	})
	if path := os.Getenv("TOLLGATE_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(consoleErrors) > 0 {
		t.Errorf("console errors: %v", consoleErrors)
	}
}
