package extproc

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/extproc/llmapi"
	"github.com/tollgate-dev/tollgate/envoy/launch"
	tgtest "github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// The tests in this file run the server behind a real Envoy, configured as tollgate configures
// it, to pin down the parts of the contract only Envoy can confirm: which header fields it
// reads, what it does with content-length after a body mutation, that mode overrides and
// dynamic metadata take effect. They are skipped when no Envoy binary is found.

// envoyConfig routes on the model header: qwen3 goes to the fake backend, any other model (or
// none) gets a 404, as tollgate's catch-all route does. The access log prints the metadata
// the ext_proc server published.
var envoyConfig = template.Must(template.New("envoy").Parse(`
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: test
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {{.AccessLog}}
              log_format:
                json_format:
                  id: "%REQ(x-test-id)%"
                  status: "%RESPONSE_CODE%"
                  model: "%DYNAMIC_METADATA({{.Namespace}}:model)%"
                  total: "%DYNAMIC_METADATA({{.Namespace}}:llm_total_token)%"
                  custom: "%DYNAMIC_METADATA({{.Namespace}}:custom_cost)%"
          route_config:
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - match:
                  prefix: /
                  headers: [{name: {{.ModelHeader}}, string_match: {exact: qwen3}}]
                route: {cluster: backend, timeout: 30s}
              - match: {prefix: /}
                direct_response: {status: 404, body: {inline_string: "unknown model"}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {cluster_name: extproc}
                timeout: 10s
              failure_mode_allow: false
              message_timeout: 10s
              processing_mode:
                request_header_mode: SEND
                request_body_mode: BUFFERED
                request_trailer_mode: SKIP
                response_header_mode: SKIP
                response_body_mode: STREAMED
                response_trailer_mode: SKIP
              response_attributes: {{.ResponseAttributes}}
              metadata_options:
                receiving_namespaces: {untyped: [{{.Namespace}}]}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{.BackendPort}}}}}}]}]
  - name: extproc
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: extproc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{.ExtProcPort}}}}}}]}]
`))

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// backendRequest is what the fake LLM backend received.
type backendRequest struct {
	header http.Header
	body   []byte
	length int64
}

// fakeBackend answers chat completions as JSON or SSE (when the body asks for a stream),
// gzip-compressed when the request carries x-test-gzip, and records every request by
// x-test-id.
type fakeBackend struct {
	mu       sync.Mutex
	requests map[string]backendRequest
}

func (b *fakeBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.requests[r.Header.Get("x-test-id")] = backendRequest{header: r.Header.Clone(), body: body, length: r.ContentLength}
	b.mu.Unlock()

	if status := r.Header.Get("x-test-status"); status != "" {
		code, _ := strconv.Atoi(status)
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":{"message":"upstream says no"},"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
		return
	}
	parsed, err := llmapi.ParseRequest(body, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var out io.Writer = w
	var zw *gzip.Writer
	if r.Header.Get("x-test-gzip") != "" {
		w.Header().Set("content-encoding", "gzip")
		zw = gzip.NewWriter(w)
		out = zw
	}
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if zw != nil {
			_ = zw.Flush()
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	if !parsed.Stream {
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(out, `{"id":"c1","object":"chat.completion","model":"qwen3","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":6,"total_tokens":12}}`)
	} else {
		w.Header().Set("content-type", "text/event-stream")
		for i := range 3 {
			_, _ = fmt.Fprintf(out, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			flush()
			if r.Header.Get("x-test-hang") != "" {
				// A slow generation the client gives up on: Envoy resets the upstream.
				<-r.Context().Done()
				return
			}
		}
		if parsed.IncludeUsage {
			_, _ = io.WriteString(out, `data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":7,"total_tokens":17}}`+"\n\n")
		}
		_, _ = io.WriteString(out, "data: [DONE]\n\n")
	}
	if zw != nil {
		_ = zw.Close()
	}
}

func (b *fakeBackend) request(id string) (backendRequest, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.requests[id]
	return r, ok
}

// envoyRig is Envoy in front of the fake backend, with the ext_proc server under test.
type envoyRig struct {
	url       string
	backend   *fakeBackend
	accessLog string
	harness   *harness
}

func startEnvoyRig(t *testing.T) *envoyRig {
	t.Helper()
	bin := tgtest.Envoy(t)
	h := newHarness(t, testConfig(t))

	backend := &fakeBackend{requests: map[string]backendRequest{}}
	upstream := httptest.NewServer(backend)
	t.Cleanup(upstream.Close)

	dir := t.TempDir()
	rig := &envoyRig{backend: backend, accessLog: filepath.Join(dir, "access.log"), harness: h}
	var cfg bytes.Buffer
	err := envoyConfig.Execute(&cfg, map[string]any{
		"AccessLog":   rig.accessLog,
		"Namespace":   envoy.MetadataNamespace,
		"ModelHeader": policies.DefaultModelHeader,
		"BackendPort": upstream.Listener.Addr().(*net.TCPAddr).Port,
		"ExtProcPort": h.addr.Port,
		// A JSON list of strings is a YAML flow sequence.
		"ResponseAttributes": mustJSON(t, []string{envoy.AttributeResponseCode}),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "envoy.yaml")
	adminPath := filepath.Join(dir, "admin.address")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	var envoyLog tgtest.Buffer
	proc, err := launch.StartChild(launch.ChildOptions{
		Path: bin,
		Args: []string{"-c", cfgPath, "--disable-hot-restart", "--use-dynamic-base-id",
			"--admin-address-path", adminPath, "--file-flush-interval-msec", "20", "-l", "warning"},
		Stdout: &envoyLog, Stderr: &envoyLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	exited := proc.Done()
	t.Cleanup(func() {
		_ = proc.Kill()
		if t.Failed() {
			t.Logf("envoy log:\n%s", envoyLog.String())
		}
	})

	var admin string
	tgtest.Eventually(t, 10*time.Second, "Envoy's admin address", func() bool {
		select {
		case <-exited:
			t.Fatalf("envoy exited:\n%s", envoyLog.String())
		default:
		}
		b, err := os.ReadFile(adminPath)
		admin = strings.TrimSpace(string(b))
		return err == nil && admin != ""
	})
	tgtest.Eventually(t, 10*time.Second, "Envoy's listener", func() bool {
		resp, err := http.Get("http://" + admin + "/listeners?format=json")
		if err != nil {
			return false
		}
		defer func() { _ = resp.Body.Close() }()
		var listeners struct {
			ListenerStatuses []struct {
				LocalAddress struct {
					SocketAddress struct {
						PortValue int `json:"port_value"`
					} `json:"socket_address"`
				} `json:"local_address"`
			} `json:"listener_statuses"`
		}
		if json.NewDecoder(resp.Body).Decode(&listeners) != nil || len(listeners.ListenerStatuses) == 0 {
			return false
		}
		port := listeners.ListenerStatuses[0].LocalAddress.SocketAddress.PortValue
		rig.url = fmt.Sprintf("http://127.0.0.1:%d", port)
		return port != 0
	})
	return rig
}

// post sends a request through Envoy and returns the status and the whole response body.
func (r *envoyRig) post(t *testing.T, id, path, body string, headers ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-test-id", id)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	// Transparent decompression would hide what the backend sent.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, out
}

// logEntry waits for the access log line of request id.
func (r *envoyRig) logEntry(t *testing.T, id string) map[string]any {
	t.Helper()
	var entry map[string]any
	tgtest.Eventually(t, 10*time.Second, "access log entry "+id, func() bool {
		f, err := os.Open(r.accessLog)
		if err != nil {
			return false
		}
		defer func() { _ = f.Close() }()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil && e["id"] == id {
				entry = e
				return true
			}
		}
		return false
	})
	return entry
}

func TestBehindEnvoy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Envoy")
	}
	rig := startEnvoyRig(t)

	t.Run("body model routes and overrides the client header", func(t *testing.T) {
		status, _, _ := rig.post(t, "route", "/v1/chat/completions", `{"model":"qwen3","messages":[]}`,
			policies.DefaultIdentityHeader, "alice", policies.DefaultModelHeader, "gpt-4", "accept-encoding", "gzip")
		if status != http.StatusOK {
			t.Fatalf("status = %d, want 200 via the qwen3 route", status)
		}
		got, _ := rig.backend.request("route")
		if v := got.header.Values(policies.DefaultModelHeader); len(v) != 1 || v[0] != "qwen3" {
			t.Fatalf("backend saw %s = %v, want exactly [qwen3]", policies.DefaultModelHeader, v)
		}
		if v := got.header.Get("accept-encoding"); v != "identity" {
			t.Fatalf("backend saw accept-encoding %q, want identity", v)
		}
		entry := rig.logEntry(t, "route")
		if entry["total"] != 12.0 || entry["custom"] != 18.0 || entry["model"] != "qwen3" {
			t.Fatalf("access log metadata = %v, want total 12, custom 18, model qwen3", entry)
		}
	})

	t.Run("unknown body model takes the catch-all route", func(t *testing.T) {
		status, _, _ := rig.post(t, "unknown", "/v1/chat/completions", `{"model":"nope"}`,
			policies.DefaultIdentityHeader, "alice", policies.DefaultModelHeader, "qwen3")
		if status != http.StatusNotFound {
			t.Fatalf("status = %d, want 404: the client's header must not pick the route", status)
		}
	})

	t.Run("missing user is 401 JSON", func(t *testing.T) {
		status, header, body := rig.post(t, "anon", "/v1/chat/completions", `{"model":"qwen3"}`)
		if status != http.StatusUnauthorized || header.Get("content-type") != "application/json" {
			t.Fatalf("got %d %q, want 401 application/json", status, header.Get("content-type"))
		}
		var e errorBody
		if err := json.Unmarshal(body, &e); err != nil || e.Error.Type != "authentication_error" {
			t.Fatalf("body %q is not an authentication_error (%v)", body, err)
		}
		if _, reached := rig.backend.request("anon"); reached {
			t.Fatal("the request reached the backend")
		}
	})

	t.Run("malformed JSON is 400", func(t *testing.T) {
		status, _, body := rig.post(t, "bad", "/v1/chat/completions", `{"model":`, policies.DefaultIdentityHeader, "alice")
		if status != http.StatusBadRequest || !bytes.Contains(body, []byte("invalid_request_error")) {
			t.Fatalf("got %d %s, want 400 invalid_request_error", status, body)
		}
	})

	for _, gz := range []bool{false, true} {
		name := "stream gets include_usage and a matching content-length"
		var extra []string
		if gz {
			name += ", gzip response"
			extra = []string{"x-test-gzip", "1"}
		}
		t.Run(name, func(t *testing.T) {
			id := fmt.Sprintf("stream-%v", gz)
			status, _, body := rig.post(t, id, "/v1/chat/completions", `{"model":"qwen3","stream":true,"messages":[]}`,
				append([]string{policies.DefaultIdentityHeader, "alice"}, extra...)...)
			if status != http.StatusOK {
				t.Fatalf("status = %d: %s", status, body)
			}
			got, _ := rig.backend.request(id)
			parsed, err := llmapi.ParseRequest(got.body, 0)
			if err != nil || !parsed.IncludeUsage {
				t.Fatalf("backend body %q: include_usage not forced (%v)", got.body, err)
			}
			if got.length != int64(len(got.body)) {
				t.Fatalf("backend content-length %d, body %d bytes", got.length, len(got.body))
			}
			entry := rig.logEntry(t, id)
			if entry["total"] != 17.0 || entry["custom"] != 27.0 {
				t.Fatalf("access log metadata = %v, want total 17, custom 27", entry)
			}
		})
	}

	t.Run("client disconnect mid-stream releases the ext_proc stream", func(t *testing.T) {
		metrics := rig.harness.srv.metrics
		cancelledBefore := testutil.ToFloat64(metrics.requests.WithLabelValues(outcomeCancelled))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, rig.url+"/v1/chat/completions",
			strings.NewReader(`{"model":"qwen3","stream":true}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(policies.DefaultIdentityHeader, "alice")
		req.Header.Set("x-test-hang", "1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		first, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || !strings.HasPrefix(first, "data: ") {
			t.Fatalf("first event line %q, %v", first, err)
		}
		if n := testutil.ToFloat64(metrics.activeStreams); n < 1 {
			t.Fatalf("active streams = %v during the response, want at least this one", n)
		}
		cancel()
		_ = resp.Body.Close()
		tgtest.Eventually(t, 10*time.Second, "the ext_proc stream to end", func() bool {
			return testutil.ToFloat64(metrics.activeStreams) == 0 &&
				testutil.ToFloat64(metrics.requests.WithLabelValues(outcomeCancelled)) == cancelledBefore+1
		})
	})

	t.Run("upstream error is not charged", func(t *testing.T) {
		status, _, _ := rig.post(t, "err", "/v1/chat/completions", `{"model":"qwen3"}`,
			policies.DefaultIdentityHeader, "alice", "x-test-status", "500")
		if status != http.StatusInternalServerError {
			t.Fatalf("status = %d, want the backend's 500", status)
		}
		if entry := rig.logEntry(t, "err"); entry["total"] != nil {
			t.Fatalf("error response charged: %v", entry)
		}
	})
}
