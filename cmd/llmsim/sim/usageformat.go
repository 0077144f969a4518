package sim

import "strconv"

// usageFormat is how token counts are written in usage objects (x-llmsim-usage-format). Some
// backends serialise counts through floats (6.0) or strings ("6"); a usage parser that only reads
// plain integers would charge such answers nothing, so tests need answers written each way.
type usageFormat uint8

const (
	usageInt    usageFormat = iota // 6
	usageFloat                     // 6.0
	usageString                    // "6"
)

// parseUsageFormat reads the x-llmsim-usage-format knob.
func parseUsageFormat(value string) (usageFormat, bool) {
	switch value {
	case "int":
		return usageInt, true
	case "float":
		return usageFloat, true
	case "string":
		return usageString, true
	}
	return usageInt, false
}

// tokenCount is one count in a usage object; it marshals in its format.
type tokenCount struct {
	n      int
	format usageFormat
}

func (c tokenCount) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 24)
	switch c.format {
	case usageFloat:
		b = strconv.AppendInt(b, int64(c.n), 10)
		b = append(b, ".0"...)
	case usageString:
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(c.n), 10)
		b = append(b, '"')
	default:
		b = strconv.AppendInt(b, int64(c.n), 10)
	}
	return b, nil
}

// count returns n as a usage count in g's format.
func (g *generation) count(n int) tokenCount { return tokenCount{n: n, format: g.usageFormat} }
