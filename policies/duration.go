package policies

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// UnmarshalYAML reads a Go duration string such as "300s" or "1m30s". A bare number is refused:
// "5" could mean seconds or milliseconds, and guessing wrong is a silent outage.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a duration such as \"5s\", got %s", describe(n))
	}
	parsed, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("must be a duration such as \"5s\" or \"100ms\", got %s", describe(n))
	}
	if parsed < 0 {
		return fmt.Errorf("must not be negative, got %s", describe(n))
	}
	d.Duration = parsed
	return nil
}

// MarshalYAML writes the duration back as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return d.Duration.String(), nil }
