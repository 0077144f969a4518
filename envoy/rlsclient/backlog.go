package rlsclient

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The backlog keeps the charges and refunds the service (or Redis) did not take, in memory
// and in a spool file, and delivers them, in order, once it can. Each is attempted until one
// attempt gets through, and never again after an attempt whose outcome is unknown: before an
// attempt its entries are marked as tried in the spool, so a restart replays only what was
// never sent. A crash during an attempt therefore loses that attempt's entries (at most one
// call's worth) rather than counting them twice.

// Backlog limits.
const (
	// backlogMax bounds the entries kept; beyond it the oldest are given up (and reported).
	backlogMax = 100_000
	// backlogRetryMax is the longest pause between attempts while the service is away.
	backlogRetryMax = 2 * time.Second
	// backlogRetryBase is the first pause; it doubles up to backlogRetryMax.
	backlogRetryBase = 50 * time.Millisecond
)

// entry is one caller's charges (descriptors with their hits, for one service and domain) or
// refunds.
type entry struct {
	ID      uint64       `json:"id"`
	Target  string       `json:"target,omitempty"`
	Domain  string       `json:"domain,omitempty"`
	Charges []Descriptor `json:"charges,omitempty"`
	Refunds []Refund     `json:"refunds,omitempty"`

	// done receives the outcome; nil for entries read back from the spool.
	done func(error)
}

// kind groups the entries that can share one attempt.
func (e *entry) kind() string {
	if len(e.Refunds) > 0 {
		return "refund"
	}
	return "charge\x00" + e.Target + "\x00" + e.Domain
}

func (e *entry) size() int { return len(e.Charges) + len(e.Refunds) }

// spoolRecord is one line of the spool file: an entry kept, entries an attempt is under way
// for, entries whose attempt failed without effect, or entries done with.
type spoolRecord struct {
	Add     *entry   `json:"add,omitempty"`
	Tried   []uint64 `json:"tried,omitempty"`
	Untried []uint64 `json:"untried,omitempty"`
	Done    []uint64 `json:"done,omitempty"`
}

type backlog struct {
	logger  *slog.Logger
	deliver func(entries []*entry) error // one attempt, for entries of one kind
	retry   func(error) bool             // whether an error left the entries unapplied
	report  func(n int)                  // told the size after each change; may be nil

	mu        sync.Mutex
	entries   []*entry
	nextID    uint64
	spool     *os.File // nil: memory only
	wake      chan struct{}
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

// newBacklog starts a backlog. With a spool path it first reads back what an earlier run left
// undelivered there (entries tried but unconfirmed are given up and logged) and delivers it.
func newBacklog(logger *slog.Logger, path string, deliver func([]*entry) error, retry func(error) bool, report func(int)) (*backlog, error) {
	b := &backlog{logger: logger, deliver: deliver, retry: retry, report: report,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	if path != "" {
		if err := b.openSpool(path); err != nil {
			return nil, err
		}
	}
	b.reportSize()
	go b.run()
	return b, nil
}

// reportSize tells report the number of entries waiting.
func (b *backlog) reportSize() {
	if b.report != nil {
		b.report(b.size())
	}
}

// openSpool reads the spool at path, keeps what is still to deliver, and rewrites the file
// with just that.
func (b *backlog) openSpool(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("charge spool: %w", err)
	}
	kept, given, err := readSpool(path)
	if err != nil {
		return err
	}
	for _, e := range given {
		b.logger.Error("a charge was being delivered when tollgate stopped; whether it counted is unknown, so it is not sent again",
			"ratelimit", e.Target, "domain", e.Domain, "entries", e.describe())
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("charge spool: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, e := range kept {
		if err := enc.Encode(spoolRecord{Add: e}); err != nil {
			_ = f.Close()
			return fmt.Errorf("charge spool: %w", err)
		}
		b.nextID = max(b.nextID, e.ID)
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("charge spool: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("charge spool: %w", err)
	}
	b.spool, err = os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("charge spool: %w", err)
	}
	b.entries = kept
	if len(kept) > 0 {
		b.logger.Warn("delivering charges an earlier run could not deliver", "entries", len(kept), "spool", path)
	}
	return nil
}

// readSpool returns the entries of the spool at path still to deliver, and those whose
// delivery was under way when it was last written.
func readSpool(path string) (kept, given []*entry, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("charge spool: %w", err)
	}
	defer func() { _ = f.Close() }()
	byID := map[uint64]*entry{}
	tried := map[uint64]bool{}
	var order []uint64
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		var r spoolRecord
		if err := json.Unmarshal(scanner.Bytes(), &r); err != nil {
			// A line cut short by a crash: what follows it cannot be trusted either.
			break
		}
		if r.Add != nil {
			byID[r.Add.ID] = r.Add
			order = append(order, r.Add.ID)
		}
		for _, id := range r.Tried {
			tried[id] = true
		}
		for _, id := range r.Untried {
			delete(tried, id)
		}
		for _, id := range r.Done {
			delete(byID, id)
		}
	}
	for _, id := range order {
		e, ok := byID[id]
		if !ok {
			continue
		}
		if tried[id] {
			given = append(given, e)
		} else {
			kept = append(kept, e)
		}
	}
	return kept, given, nil
}

// add keeps entries for delivery. Beyond backlogMax the oldest are given up.
func (b *backlog) add(entries []*entry) {
	b.mu.Lock()
	records := make([]spoolRecord, 0, len(entries)+1)
	for _, e := range entries {
		b.nextID++
		e.ID = b.nextID
		records = append(records, spoolRecord{Add: e})
	}
	b.entries = append(b.entries, entries...)
	var dropped []*entry
	if over := len(b.entries) - backlogMax; over > 0 {
		dropped = append(dropped, b.entries[:over]...)
		b.entries = b.entries[over:]
		ids := make([]uint64, len(dropped))
		for i, e := range dropped {
			ids[i] = e.ID
		}
		records = append(records, spoolRecord{Done: ids})
	}
	b.write(records...)
	b.mu.Unlock()
	for _, e := range dropped {
		e.finish(fmt.Errorf("given up: more than %d charges were waiting for the ratelimit service", backlogMax))
	}
	b.reportSize()
	b.poke()
}

// poke makes the next attempt now.
func (b *backlog) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// size is the number of entries waiting.
func (b *backlog) size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}

func (b *backlog) run() {
	defer close(b.stopped)
	pause := backlogRetryBase
	for {
		batch := b.head()
		if len(batch) == 0 {
			select {
			case <-b.wake:
				continue
			case <-b.stop:
				return
			}
		}
		b.mark(spoolRecord{Tried: ids(batch)})
		err := b.deliver(batch)
		if err != nil && b.retry(err) {
			// Nothing was applied: the entries stay for the next attempt, and a restart may
			// send them again.
			b.mark(spoolRecord{Untried: ids(batch)})
			select {
			case <-time.After(pause):
			case <-b.wake:
			case <-b.stop:
				return
			}
			pause = min(2*pause, backlogRetryMax)
			continue
		}
		pause = backlogRetryBase
		b.remove(batch)
		b.reportSize()
		for _, e := range batch {
			e.finish(err)
		}
	}
}

// head returns the oldest entries that can share one attempt.
func (b *backlog) head() []*entry {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.entries) == 0 {
		return nil
	}
	kind := b.entries[0].kind()
	n, size := 0, 0
	for n < len(b.entries) && size < maxDescriptors && b.entries[n].kind() == kind {
		size += b.entries[n].size()
		n++
	}
	return append([]*entry(nil), b.entries[:n]...)
}

func (b *backlog) remove(batch []*entry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.entries = b.entries[len(batch):]
	b.write(spoolRecord{Done: ids(batch)})
}

func (b *backlog) mark(r spoolRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.write(r)
}

// write appends records to the spool, then syncs it once; b.mu is held.
func (b *backlog) write(records ...spoolRecord) {
	if b.spool == nil {
		return
	}
	var buf []byte
	var err error
	for _, r := range records {
		var line []byte
		if line, err = json.Marshal(r); err != nil {
			break
		}
		buf = append(append(buf, line...), '\n')
	}
	if err == nil {
		_, err = b.spool.Write(buf)
	}
	if err == nil {
		err = b.spool.Sync()
	}
	if err != nil {
		b.logger.Error("cannot write the charge spool; undelivered charges are kept in memory only", "error", err)
	}
}

// close stops delivering; what is left stays in the spool for the next run (in memory only,
// it is given up and reported).
func (b *backlog) close() {
	b.closeOnce.Do(func() { close(b.stop) })
	<-b.stopped
	b.mu.Lock()
	left := b.entries
	b.entries = nil
	spooled := b.spool != nil
	if spooled {
		_ = b.spool.Close()
		b.spool = nil
	}
	b.mu.Unlock()
	for _, e := range left {
		if spooled {
			e.finish(ErrSpooled)
		} else {
			e.finish(errors.New("tollgate stopped before the ratelimit service took this charge"))
		}
	}
}

// ErrSpooled is the outcome of a charge or refund left in the spool at shutdown: the next run
// with the same spool delivers it.
var ErrSpooled = errors.New("kept in the spool for the next run")

func (e *entry) finish(err error) {
	if e.done != nil {
		e.done(err)
	}
}

func (e *entry) describe() []string {
	var out []string
	for _, r := range e.Refunds {
		out = append(out, fmt.Sprintf("refund %s -%d", Descriptor{Entries: r.Entries}, r.Hits))
	}
	for _, d := range e.Charges {
		out = append(out, fmt.Sprintf("charge %s +%d", d, d.Hits))
	}
	return out
}

func ids(entries []*entry) []uint64 {
	out := make([]uint64, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}
