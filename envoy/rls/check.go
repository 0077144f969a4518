package rls

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Entry is one key/value pair of a rate limit descriptor, as Envoy sends it.
type Entry struct {
	Key, Value string
}

// Descriptor names one counter: the ordered entries Envoy's rate limit actions produce for a
// request (for tollgate, the model's route and the user).
type Descriptor struct {
	Entries []Entry
}

// String renders the descriptor as key=value pairs, for CLI output and errors.
func (d Descriptor) String() string {
	parts := make([]string, len(d.Entries))
	for i, e := range d.Entries {
		parts[i] = e.Key + "=" + e.Value
	}
	return strings.Join(parts, ",")
}

// WindowStatus is what the ratelimit service reports for one descriptor's current window.
type WindowStatus struct {
	Descriptor Descriptor
	// Code is OK or OVER_LIMIT.
	Code string
	// Limit is requests_per_unit of the matched limit; 0 when no limit matched (the
	// descriptor is not limited, and Remaining means nothing).
	Limit uint64
	// Unit is the window: SECOND, MINUTE, HOUR, DAY, WEEK, MONTH (30 days) or YEAR.
	Unit string
	// Remaining is what is left of Limit in this window; 0 once over the limit.
	Remaining uint64
	// ResetIn is the time until the window ends. Windows are fixed and aligned to the
	// Unix epoch, so an HOUR window resets on the hour.
	ResetIn time.Duration
}

// Check asks the service about each descriptor with hits_addend 0 (check only: spends nothing) and
// returns what it reports, in the order of ds. It reads the service's own counters — no
// private copy. All descriptors go in one ShouldRateLimit call; the service answers with one
// status per descriptor, in order.
//
// A check does touch Redis: the service increments the counter by 0 and refreshes its
// expiry, which changes nothing a request would see.
func Check(ctx context.Context, conn grpc.ClientConnInterface, domain string, ds []Descriptor) ([]WindowStatus, error) {
	if domain == "" {
		return nil, errors.New("rate limit check: domain must not be empty")
	}
	if len(ds) == 0 {
		return nil, nil
	}
	req := &rlsv3.RateLimitRequest{Domain: domain, Descriptors: make([]*ratelimitv3.RateLimitDescriptor, len(ds))}
	for i, d := range ds {
		if len(d.Entries) == 0 {
			return nil, fmt.Errorf("rate limit check: descriptor %d has no entries", i)
		}
		entries := make([]*ratelimitv3.RateLimitDescriptor_Entry, len(d.Entries))
		for j, e := range d.Entries {
			if e.Key == "" || e.Value == "" {
				return nil, fmt.Errorf("rate limit check: descriptor %d (%s): entry %d needs both a key and a value", i, d, j)
			}
			entries[j] = &ratelimitv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value}
		}
		// A per-descriptor addend of 0 means "check only" to the service; without it the
		// service would count the check as one hit.
		req.Descriptors[i] = &ratelimitv3.RateLimitDescriptor{Entries: entries, HitsAddend: wrapperspb.UInt64(0)}
	}

	resp, err := rlsv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("rate limit check in domain %q: %w", domain, err)
	}
	if len(resp.GetStatuses()) != len(ds) {
		return nil, fmt.Errorf("rate limit check in domain %q: asked about %d descriptors, got %d statuses",
			domain, len(ds), len(resp.GetStatuses()))
	}
	out := make([]WindowStatus, len(ds))
	for i, st := range resp.GetStatuses() {
		ws := WindowStatus{
			Descriptor: ds[i],
			Code:       st.GetCode().String(),
			Remaining:  uint64(st.GetLimitRemaining()),
			ResetIn:    st.GetDurationUntilReset().AsDuration(),
		}
		if limit := st.GetCurrentLimit(); limit != nil {
			ws.Limit = uint64(limit.GetRequestsPerUnit())
			ws.Unit = limit.GetUnit().String()
		}
		out[i] = ws
	}
	return out, nil
}
