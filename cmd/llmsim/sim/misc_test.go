package sim_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := rawClient(t).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	return resp, readAll(t, resp.Body)
}

func TestModels(t *testing.T) {
	for _, c := range []struct {
		name string
		opts sim.Options
		want []string
	}{
		{"defaults", sim.Options{}, []string{"qwen3", "gpt-4", "gpt-3.5-turbo"}},
		{"configured", sim.Options{Models: []string{"a", "b"}}, []string{"a", "b"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := startServer(t, c.opts)
			resp, raw := get(t, srv.URL+"/v1/models")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			body := decodeJSON(t, raw)
			if got := field(t, body, "object"); got != "list" {
				t.Errorf("object %v", got)
			}
			data, _ := field(t, body, "data").([]any)
			if len(data) != len(c.want) {
				t.Fatalf("%d models, want %d", len(data), len(c.want))
			}
			for i, id := range c.want {
				if got := field(t, data, i, "id"); got != id {
					t.Errorf("model %d is %v, want %s", i, got, id)
				}
				if got := field(t, data, i, "object"); got != "model" {
					t.Errorf("model %d object %v", i, got)
				}
			}
			resp, raw = get(t, srv.URL+"/v1/models/"+c.want[0])
			if resp.StatusCode != http.StatusOK || field(t, decodeJSON(t, raw), "id") != c.want[0] {
				t.Errorf("GET one model: %d %s", resp.StatusCode, raw)
			}
			resp, raw = get(t, srv.URL+"/v1/models/nope")
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("unknown model: status %d", resp.StatusCode)
			}
			checkOpenAIError(t, decodeJSON(t, raw), "nope")
		})
	}
}

func TestHealthz(t *testing.T) {
	srv := startServer(t, sim.Options{})
	resp, body := get(t, srv.URL+"/healthz")
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
}

func TestConcurrentRequestsGetDistinctIDs(t *testing.T) {
	srv := startServer(t, sim.Options{})
	client := rawClient(t)
	const n = 16
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// No t.Fatal off the test goroutine: failures report an empty id instead.
			var answer struct {
				ID string `json:"id"`
			}
			resp, err := client.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(seedRequest))
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&answer)
				_ = resp.Body.Close()
			}
			if err != nil {
				t.Error(err)
			}
			ids <- answer.ID
		})
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if id == "" || seen[id] {
			t.Errorf("id %q is empty or repeated", id)
		}
		seen[id] = true
	}
}

func TestDebugLogsOneLinePerRequest(t *testing.T) {
	for _, c := range []struct {
		level     slog.Level
		wantLines int
	}{
		{slog.LevelDebug, 2},
		{slog.LevelInfo, 0},
	} {
		t.Run(c.level.String(), func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: c.level}))
			h := sim.NewHandler(sim.Options{}, logger)
			// Served synchronously through a recorder, so the log line is written when ServeHTTP returns.
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(seedRequest)))
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader("{")))

			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if buf.Len() == 0 {
				lines = nil
			}
			if len(lines) != c.wantLines {
				t.Fatalf("%d log lines, want %d:\n%s", len(lines), c.wantLines, buf.String())
			}
			if c.wantLines == 0 {
				return
			}
			for _, want := range []string{"path=/v1/chat/completions", "model=qwen3", "status=200"} {
				if !strings.Contains(lines[0], want) {
					t.Errorf("first line %q lacks %q", lines[0], want)
				}
			}
			if !strings.Contains(lines[1], "status=400") {
				t.Errorf("second line %q lacks status=400", lines[1])
			}
		})
	}
}
