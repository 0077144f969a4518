package rlsclient

import (
	"sync"
	"time"
)

// failing holds the counters whose last check failed (the service did not answer, or could not
// count: its Redis, or the part of a Redis Cluster holding them, is away). Admit only checks
// them, reserving nothing, and their charges are held in the backlog until a check of them is
// answered again: the upstream service waits for Redis without a deadline, and when its Redis
// client is replaced (a Sentinel failover, a Cluster shard's replica promoted) the calls waiting
// on the old connections never end, so a charge sent into them would never be counted. Per
// counter, so that one shard of a Cluster being away holds only the charges it holds.
type failing struct {
	mu   sync.Mutex
	keys map[string]time.Time // when the counter's check failed
}

// failingFor is how long a failed check marks its counters: past it, a counter with no check
// since is tried again, so the set does not keep counters nobody uses.
const failingFor = lateCallTimeout

// failingSweep is the size past which marking sweeps out expired counters.
const failingSweep = 4096

// mark records that checks of keys failed (failed) or were answered; it reports whether any of
// keys was marked before.
func (f *failing) mark(keys []string, failed bool) (wasMarked bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !failed && len(f.keys) == 0 {
		return false // the usual case: nothing failing, nothing to clear
	}
	now := time.Now()
	for _, k := range keys {
		if at, ok := f.keys[k]; ok && now.Sub(at) < failingFor {
			wasMarked = true
		}
		if failed {
			if f.keys == nil {
				f.keys = map[string]time.Time{}
			}
			f.keys[k] = now
		} else {
			delete(f.keys, k)
		}
	}
	if failed && len(f.keys) > failingSweep {
		for k, at := range f.keys {
			if now.Sub(at) >= failingFor {
				delete(f.keys, k)
			}
		}
	}
	return wasMarked
}

// any reports whether a check of any of keys failed last, within failingFor.
func (f *failing) any(keys []string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.keys) == 0 {
		return false
	}
	now := time.Now()
	for _, k := range keys {
		if at, ok := f.keys[k]; ok && now.Sub(at) < failingFor {
			return true
		}
	}
	return false
}
