package sim_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tollgate-dev/tollgate/cmd/llmsim/sim"
)

func TestRequireKey(t *testing.T) {
	const key = "sk-canary-sim-1234"
	srv := httptest.NewServer(sim.RequireKey(key, sim.NewHandler(sim.Options{}, nil)))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	tests := []struct {
		name    string
		headers []string
		status  int
	}{
		{"right key", []string{"Authorization", "Bearer " + key}, 200},
		{"no key", nil, 401},
		{"wrong key", []string{"Authorization", "Bearer sk-other"}, 401},
		{"key without scheme", []string{"Authorization", key}, 401},
		{"key in x-api-key only", []string{"X-Api-Key", key}, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := post(t, ctx, srv, "/v1/chat/completions", seedRequest, tt.headers...)
			body := readAll(t, resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 401 {
				var e struct {
					Error struct{ Type, Code string } `json:"error"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Type != "authentication_error" || e.Error.Code != "invalid_api_key" {
					t.Fatalf("401 body %s", body)
				}
				if strings.Contains(string(body), "sk-") {
					t.Fatalf("401 body echoes a key: %s", body)
				}
			}
			wantSaw := "false"
			if len(tt.headers) > 0 && tt.headers[0] == "X-Api-Key" {
				wantSaw = "true"
			}
			if got := resp.Header.Get(sim.HeaderSawAPIKey); got != wantSaw {
				t.Errorf("%s = %q, want %q", sim.HeaderSawAPIKey, got, wantSaw)
			}
		})
	}
	health, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = health.Body.Close()
	if health.StatusCode != 200 {
		t.Fatalf("/healthz without a key: %d", health.StatusCode)
	}
}
