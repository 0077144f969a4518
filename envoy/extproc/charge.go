package extproc

import (
	"strconv"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Charging. The server checks a user's quotas before a request goes upstream (quota.go); the
// charge for what the request actually cost is sent once, when the exchange ends — whichever
// way it ends. A response that completes is charged the usage the backend
// reported; one that breaks off (the client left, the stream was reset, a timeout) is charged
// what it had served so far, so leaving early never makes a request free. Only this server
// sees every one of those endings: Envoy's own "charge when the stream is done" reads a cost
// that is only published when the response completes.

// Bases of a charge, the values of tollgate_quota_charges_total{basis}.
const (
	basisUsage    = "usage"    // the usage the backend reported
	basisEstimate = "estimate" // estimated from the prompt and the output served
)

// Results of a charge, the values of tollgate_quota_charges_total{result}.
const (
	chargeSent   = "sent"
	chargeFailed = "failed"
)

// Quota is one counter the requests for a model are checked against and charged to.
type Quota struct {
	// Name identifies the quota in logs.
	Name string
	// Cost names the Config.Costs entry whose value is charged.
	Cost string
	// Entries are the descriptor entries before the user's: with the user's appended, the
	// counter the request is checked against and charged to.
	Entries []rlsclient.Entry
}

// descriptor is the counter of one user on quota q, with hits to add: the quota's entries,
// then the user.
func (c *Config) descriptor(q Quota, user string, hits uint64) rlsclient.Descriptor {
	entries := make([]rlsclient.Entry, 0, len(q.Entries)+1)
	entries = append(entries, q.Entries...)
	return rlsclient.Descriptor{Entries: append(entries, rlsclient.Entry{Key: c.UserDescriptorKey, Value: user}), Hits: hits}
}

// sendCharge hands the request's costs to the ratelimit client, one descriptor per quota on
// the model with a non-zero cost. The client batches and retries; its verdict is logged and
// counted here.
func (ex *exchange) sendCharge(costs map[string]int64, basis string) {
	if ex.rls == nil || ex.cfg.RateLimitAddress == "" {
		return
	}
	var descriptors []rlsclient.Descriptor
	for _, q := range ex.cfg.Quotas[ex.model] {
		hits, ok := costs[q.Cost]
		if !ok || hits <= 0 {
			continue // a zero addend would only check, and an unknown cost is never guessed
		}
		descriptors = append(descriptors, ex.cfg.descriptor(q, ex.user, uint64(hits)))
	}
	if len(descriptors) == 0 {
		return
	}
	logger, metrics, model, target := ex.logger, ex.metrics, ex.model, ex.cfg.RateLimitAddress
	ex.rls.Charge(target, ex.cfg.RateLimitDomain, descriptors, func(err error) {
		result := chargeSent
		if err != nil {
			result = chargeFailed
			logger.Error("quota charge not delivered; these tokens are not counted",
				"model", model, "basis", basis, "ratelimit", target, "descriptors", describe(descriptors), "error", err)
		}
		metrics.charges.WithLabelValues(basis, result).Inc()
	})
}

// describe renders descriptors as "key=value,... +hits" for a log line.
func describe(ds []rlsclient.Descriptor) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String() + " +" + strconv.FormatUint(d.Hits, 10)
	}
	return out
}
