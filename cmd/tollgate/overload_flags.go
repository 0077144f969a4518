package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
)

// overloadFlags registers the flags that bound Envoy's heap and connections.
func overloadFlags(fs *flag.FlagSet, o *bootstrap.Overload) {
	fs.Var((*byteSize)(&o.MaxHeapBytes), "envoy-max-heap", fmt.Sprintf(
		"heap Envoy may use, e.g. 512MiB or 2GiB; near it Envoy frees memory and refuses a growing share of new requests with a JSON 503 "+
			"(default: a quarter of the memory limit of this container or host, here %s)", formatBytes(bootstrap.DefaultMaxHeapBytes())))
	fs.Int64Var(&o.MaxConnections, "envoy-max-connections", bootstrap.DefaultMaxConnections,
		"client connections Envoy keeps open at most; past it new ones are closed at once")
}

// byteSize is a flag of a size in bytes, with an optional unit: B, KiB, MiB, GiB (or K, M, G,
// the same powers of 1024).
type byteSize uint64

func (b *byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	shift := uint(0)
	units := []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"K", 10}, {"M", 20}, {"G", 30}, {"B", 0}}
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, shift = strings.TrimSpace(rest), u.shift
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<63)>>shift {
		return fmt.Errorf("want a whole number of bytes with an optional unit (B, KiB, MiB, GiB), e.g. 512MiB")
	}
	*b = byteSize(n << shift)
	return nil
}

func (b *byteSize) String() string {
	if b == nil || *b == 0 {
		return ""
	}
	return formatBytes(uint64(*b))
}

// formatBytes writes n in the largest unit that divides it.
func formatBytes(n uint64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
