package sim

import (
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
)

// HeaderSawAPIKey is "true" in every response when the request had an x-api-key header (never
// its value), so a test can check a gateway stripped the client's key.
const HeaderSawAPIKey = "x-llmsim-saw-api-key"

// RequireKey wraps the simulator like a hosted LLM API: every request except GET /healthz must
// carry "Authorization: Bearer <key>", or it gets a 401 OpenAI-style error that never echoes
// what was sent. An empty key requires nothing. Either way responses report
// HeaderSawAPIKey.
func RequireKey(key string, next http.Handler) http.Handler {
	want := []byte("Bearer " + key)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderSawAPIKey, strconv.FormatBool(len(r.Header.Values("X-Api-Key")) > 0))
		if key == "" || r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		got := r.Header.Values("Authorization")
		if len(got) != 1 || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got[0])), want) != 1 {
			api := apiChat
			if r.URL.Path == "/v1/messages" {
				api = apiMessages
			}
			writeError(w, false, api, http.StatusUnauthorized, "Incorrect API key provided.", "", "invalid_api_key")
			return
		}
		next.ServeHTTP(w, r)
	})
}
