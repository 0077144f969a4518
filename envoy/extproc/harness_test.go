package extproc

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/internal/testutil"
	"github.com/tollgate-dev/tollgate/policies"
)

// harness is an ext_proc server on a real gRPC connection, with its own metrics registry and a
// log buffer.
type harness struct {
	addr   *net.TCPAddr // where the gRPC server listens
	srv    *Server
	reg    *prometheus.Registry
	client extprocv3.ExternalProcessorClient
	logs   *testutil.Buffer
}

func newHarness(t testing.TB, cfg *Config) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := NewServer(logger, NewMetrics(reg), cfg, rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions(cfg.MaxRequestBytes)...)
	srv.Register(g)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
		<-served
		_ = srv.Close(context.Background())
	})
	return &harness{addr: lis.Addr().(*net.TCPAddr), srv: srv, reg: reg, client: extprocv3.NewExternalProcessorClient(conn), logs: logs}
}

// call is one ext_proc stream: one HTTP request as Envoy would present it.
type call struct {
	t      testing.TB
	stream grpc.BidiStreamingClient[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]
	cancel context.CancelFunc
}

func (h *harness) open(t testing.TB) *call {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := h.client.Process(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return &call{t: t, stream: stream, cancel: cancel}
}

// send sends one message and returns the server's answer to it.
func (c *call) send(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	c.t.Helper()
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return resp
}

// end closes the stream as Envoy does when the request is over and waits until the server's
// handler has returned (its status arrives only after that).
func (c *call) end() {
	c.t.Helper()
	if err := c.stream.CloseSend(); err != nil {
		c.t.Fatalf("close send: %v", err)
	}
	if _, err := c.stream.Recv(); !errors.Is(err, io.EOF) {
		c.t.Fatalf("recv after close: got %v, want EOF", err)
	}
}

// headerMap builds a header map the way Envoy sends it: raw_value only.
func headerMap(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

func requestHeaders(endOfStream bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: endOfStream},
	}}
}

func requestBody(body string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true},
	}}
}

func responseHeaders(endOfStream bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: endOfStream},
	}}
}

func responseBody(chunk []byte, endOfStream bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: chunk, EndOfStream: endOfStream},
	}}
}

// chatHeaders are the request headers of a chat completion by user alice with a body of n
// bytes.
func chatHeaders(n int, extra ...string) *extprocv3.ProcessingRequest {
	kv := append([]string{
		":method", "POST", ":path", "/v1/chat/completions", ":authority", "gateway",
		"content-type", "application/json", "content-length", strconv.Itoa(n),
		policies.DefaultIdentityHeader, "alice",
	}, extra...)
	return requestHeaders(false, kv...)
}

// setHeaders collects a mutation's set headers by name; a header set twice fails the test.
func setHeaders(t testing.TB, m *extprocv3.HeaderMutation) map[string]*corev3.HeaderValueOption {
	t.Helper()
	out := map[string]*corev3.HeaderValueOption{}
	for _, h := range m.GetSetHeaders() {
		if _, dup := out[h.GetHeader().GetKey()]; dup {
			t.Fatalf("header %q set twice", h.GetHeader().GetKey())
		}
		if h.GetHeader().GetValue() != "" {
			t.Fatalf("header %q uses value; Envoy reads raw_value", h.GetHeader().GetKey())
		}
		out[h.GetHeader().GetKey()] = h
	}
	return out
}

// metadataFields returns the fields published in tollgate's namespace, or nil.
func metadataFields(resp *extprocv3.ProcessingResponse) map[string]any {
	ns := resp.GetDynamicMetadata().GetFields()[envoy.MetadataNamespace]
	if ns == nil {
		return nil
	}
	return ns.GetStructValue().AsMap()
}

// errorBody decodes an immediate response's OpenAI-style error.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// immediate checks resp is an immediate JSON response with the given status and returns its
// decoded error.
func immediate(t testing.TB, resp *extprocv3.ProcessingResponse, status int) errorBody {
	t.Helper()
	ir := resp.GetImmediateResponse()
	if ir == nil {
		t.Fatalf("want an immediate response, got %v", resp)
	}
	if got := int(ir.GetStatus().GetCode()); got != status {
		t.Fatalf("status = %d, want %d", got, status)
	}
	if ct := setHeaders(t, ir.GetHeaders())["content-type"]; string(ct.GetHeader().GetRawValue()) != "application/json" {
		t.Fatalf("content-type = %q, want application/json", ct.GetHeader().GetRawValue())
	}
	var body errorBody
	if err := json.Unmarshal(ir.GetBody(), &body); err != nil {
		t.Fatalf("error body %q is not JSON: %v", ir.GetBody(), err)
	}
	return body
}

// testConfig is the seed's policy: three models on one backend and the four seed costs.
func testConfig(t testing.TB) *Config {
	t.Helper()
	return &Config{
		ModelHeader:            policies.DefaultModelHeader,
		IdentityHeader:         policies.DefaultIdentityHeader,
		JWTClaim:               policies.DefaultJWTUserClaim, // used in jwt mode only
		DefaultMaxOutputTokens: policies.DefaultMaxOutputTokens,
		Models:                 map[string]string{"qwen3": "sim", "gpt-4": "sim", "gpt-3.5-turbo": "sim"},
		Costs: []Cost{
			{Name: "llm_input_token", Kind: CostInput},
			{Name: "llm_output_token", Kind: CostOutput},
			{Name: "llm_total_token", Kind: CostTotal},
			celCost(t, "custom_cost", "input_tokens * 2 + output_tokens"),
		},
		MaxRequestBytes:  64 << 10,
		MaxResponseBytes: 64 << 10,
		MaxEventBytes:    16 << 10,
		// The policy's rule, as tollgate wires it; only tests import policies from here.
		CheckUserID: policies.CheckUserID,
	}
}

// celCost is a CEL cost compiled and evaluated by the policy's own CEL code, as translate
// builds it.
func celCost(t testing.TB, name, expr string) Cost {
	t.Helper()
	prg, err := policies.CompileCost(expr)
	if err != nil {
		t.Fatalf("compile %q: %v", expr, err)
	}
	return Cost{Name: name, Kind: CostCEL, Expression: expr, Eval: func(ctx context.Context, v CostVars) (int64, error) {
		return prg.Eval(ctx, policies.CostVars(v))
	}}
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzipChunks compresses parts as one gzip stream, flushing after each part as a streaming
// server does, and returns the compressed bytes produced for each part (the last one
// includes the gzip trailer).
func gzipChunks(t testing.TB, parts [][]byte) [][]byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	var out [][]byte
	for i, p := range parts {
		if _, err := zw.Write(p); err != nil {
			t.Fatal(err)
		}
		var err error
		if i == len(parts)-1 {
			err = zw.Close()
		} else {
			err = zw.Flush()
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(buf.Bytes()))
		buf.Reset()
	}
	return out
}

// splitEvery cuts b into chunks of n bytes, so SSE events straddle chunk boundaries.
func splitEvery(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// histogram returns the state of one histogram series of the server's metrics.
func histogram(t testing.TB, h *harness, name string, labelValues ...string) *dto.Histogram {
	t.Helper()
	vecs := map[string]*prometheus.HistogramVec{
		"gen_ai_client_token_usage":                   h.srv.metrics.tokenUsage,
		"gen_ai_server_request_duration_seconds":      h.srv.metrics.requestDuration,
		"gen_ai_server_time_to_first_token_seconds":   h.srv.metrics.timeToFirstToken,
		"gen_ai_server_time_per_output_token_seconds": h.srv.metrics.timePerOutputToken,
		"tollgate_extproc_message_duration_seconds":   h.srv.metrics.messageDuration,
	}
	if name == "tollgate_quota_check_duration_seconds" {
		var m dto.Metric
		if err := h.srv.metrics.quotaCheckDuration.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram()
	}
	vec, ok := vecs[name]
	if !ok {
		t.Fatalf("unknown histogram %s", name)
	}
	obs, err := vec.GetMetricWithLabelValues(labelValues...)
	if err != nil {
		t.Fatal(err)
	}
	var m dto.Metric
	if err := obs.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram()
}

func histogramCount(t testing.TB, h *harness, name string, labelValues ...string) uint64 {
	t.Helper()
	return histogram(t, h, name, labelValues...).GetSampleCount()
}

func histogramSum(t testing.TB, h *harness, name string, labelValues ...string) float64 {
	t.Helper()
	return histogram(t, h, name, labelValues...).GetSampleSum()
}

// metricNames renders every gathered family name and label value, for "never appears" checks.
func metricNames(t testing.TB, h *harness) string {
	t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range families {
		b.WriteString(f.GetName() + "\n")
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				b.WriteString(l.GetName() + "=" + l.GetValue() + "\n")
			}
		}
	}
	return b.String()
}

func dtoMetric(t testing.TB, m prometheus.Metric) *dto.Metric {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	return &out
}
