package bootstrap

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-dev/tollgate/envoy"
)

// Overload bounds what one Envoy may hold, so a traffic spike is refused in part instead of
// growing Envoy until the kernel kills it (and with it every request in flight).
type Overload struct {
	// MaxHeapBytes is the heap Envoy may use. Past 90% of it Envoy returns free memory to the
	// system; from 92% it refuses a growing share of new requests (all of them at 98%) with
	// a JSON 503 and Retry-After, and from 95% it closes HTTP/1 connections after each
	// answer. Requests already admitted keep what they hold: at most
	// listener.maxConcurrentRequests × listener.maxRequestBytes of buffered bodies.
	// 0: DefaultMaxHeapBytes of this host.
	MaxHeapBytes uint64
	// MaxConnections bounds Envoy's client connections; past it new ones are closed at once.
	// 0: DefaultMaxConnections.
	MaxConnections int64
}

// Names and bounds of the overload manager's parts.
const (
	monitorHeap        = "envoy.resource_monitors.fixed_heap"
	monitorConnections = "envoy.resource_monitors.global_downstream_max_connections"

	// DefaultMaxConnections is far above what the in-flight bound (1,024 requests by
	// default) needs, and far below what a host's file descriptors run out at.
	DefaultMaxConnections = 50_000
	// MinMaxHeapBytes is the least heap a bound may give: Envoy itself needs tens of MiB.
	MinMaxHeapBytes = 64 << 20
	// heapShareOfMemory is the share of the memory limit (a container's, else the host's)
	// Envoy's heap gets by default: `tollgate run` shares it with tollgate and Redis.
	heapShareOfMemory = 4

	shrinkHeapAt      = 0.90
	shedRequestsFrom  = 0.92
	shedAllRequestsAt = 0.98
	noKeepAliveAt     = 0.95

	releaseMemoryEvery = time.Second
	// releaseBytes is what Envoy hands back to the system each second when it has that much
	// free: memory a spike took is returned within seconds, not kept for good.
	releaseBytes = 16 << 20
)

// withDefaults fills the bounds left 0.
func (o Overload) withDefaults() Overload {
	if o.MaxHeapBytes == 0 {
		o.MaxHeapBytes = DefaultMaxHeapBytes()
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	return o
}

// Validate refuses bounds Envoy could not run with.
func (o Overload) Validate() error {
	if o.MaxHeapBytes != 0 && o.MaxHeapBytes < MinMaxHeapBytes {
		return fmt.Errorf("--envoy-max-heap: Envoy needs at least %dMiB, got %d bytes", MinMaxHeapBytes>>20, o.MaxHeapBytes)
	}
	if o.MaxConnections < 0 {
		return fmt.Errorf("--envoy-max-connections: must not be negative, got %d", o.MaxConnections)
	}
	return nil
}

// DefaultMaxHeapBytes is a quarter of the memory this process may use: its cgroup's limit
// when it has one, else the host's memory; in whole MiB, never below MinMaxHeapBytes.
func DefaultMaxHeapBytes() uint64 {
	const mib = 1 << 20
	return max(memoryLimit()/heapShareOfMemory/mib*mib, MinMaxHeapBytes)
}

// memoryLimit reads the cgroup v2 or v1 memory limit, then the host's MemTotal; 0 if none
// can be read.
func memoryLimit() uint64 {
	host := memTotal()
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// "max" (v2) or a huge number (v1) means no limit.
		if limit, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && (host == 0 || limit < host) {
			return limit
		}
	}
	return host
}

// memTotal is /proc/meminfo's MemTotal in bytes, or 0.
func memTotal() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kib << 10
		}
	}
	return 0
}

// overloadManager is Envoy's overload manager for o (with defaults filled).
func overloadManager(o Overload) (*overloadv3.OverloadManager, error) {
	heap, err := envoy.Any(&fixedheapv3.FixedHeapConfig{MaxHeapSizeBytes: o.MaxHeapBytes})
	if err != nil {
		return nil, err
	}
	conns, err := envoy.Any(&downstreamv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: o.MaxConnections})
	if err != nil {
		return nil, err
	}
	threshold := func(v float64) *overloadv3.Trigger {
		return &overloadv3.Trigger{Name: monitorHeap, TriggerOneof: &overloadv3.Trigger_Threshold{
			Threshold: &overloadv3.ThresholdTrigger{Value: v}}}
	}
	return &overloadv3.OverloadManager{
		RefreshInterval: envoy.Duration(250 * time.Millisecond),
		ResourceMonitors: []*overloadv3.ResourceMonitor{
			{Name: monitorHeap, ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: heap}},
			{Name: monitorConnections, ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: conns}},
		},
		Actions: []*overloadv3.OverloadAction{
			{Name: "envoy.overload_actions.shrink_heap", Triggers: []*overloadv3.Trigger{threshold(shrinkHeapAt)}},
			// Scaled: the share of new requests refused grows with the pressure, so the
			// gateway keeps serving most requests while its heap nears the bound. A refused
			// request gets no filter chain: no ext_proc stream, no quota check, no charge.
			{Name: "envoy.overload_actions.stop_accepting_requests", Triggers: []*overloadv3.Trigger{{
				Name: monitorHeap,
				TriggerOneof: &overloadv3.Trigger_Scaled{Scaled: &overloadv3.ScaledTrigger{
					ScalingThreshold: shedRequestsFrom, SaturationThreshold: shedAllRequestsAt,
				}},
			}}},
			{Name: "envoy.overload_actions.disable_http_keepalive", Triggers: []*overloadv3.Trigger{threshold(noKeepAliveAt)}},
		},
	}, nil
}

// memoryAllocatorManager has Envoy return free heap to the system in the background.
func memoryAllocatorManager() *bootstrapv3.MemoryAllocatorManager {
	return &bootstrapv3.MemoryAllocatorManager{
		BytesToRelease:        releaseBytes,
		MemoryReleaseInterval: envoy.Duration(releaseMemoryEvery),
	}
}

// Names of the bounds in the node metadata (envoy.NodeMetadataBounds).
const (
	BoundMaxHeapBytes   = "max_heap_bytes"
	BoundMaxConnections = "max_connections"
)

// boundsMetadata states o's bounds in the node metadata, where the control plane reads them.
// They are decimal strings: as JSON numbers, large ones would be written in exponent form,
// which the YAML bootstrap then hands Envoy as a string anyway.
func boundsMetadata(o Overload) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		envoy.NodeMetadataBounds: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			BoundMaxHeapBytes:   structpb.NewStringValue(strconv.FormatUint(o.MaxHeapBytes, 10)),
			BoundMaxConnections: structpb.NewStringValue(strconv.FormatInt(o.MaxConnections, 10)),
		}}),
	}}
}
