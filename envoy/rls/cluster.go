package rls

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mediocregopher/radix/v4"
)

// A Redis Cluster client (radix's, in tollgate and in the upstream service) learns where the
// slots are by asking one node it knows, picked at random, every 5 s, and forgets a node only
// after such a read succeeded. When a primary is killed and its replica promoted, that read
// keeps going to the dead node on a small cluster (three known nodes: Go's map order picks
// one of them three times in four), and every command for the dead node's slots waits for it:
// tens of seconds, sometimes minutes, after the replica took over. So tollgate watches the
// slot map itself, asking each node it knows in turn until one answers, and when the slots
// have moved to other primaries it replaces the client with a new one, which reads the map
// from a live node as it starts.
const (
	// slotWatchEvery is how often the slot map is read.
	slotWatchEvery = time.Second
	// slotReadTimeout bounds one node's answer to CLUSTER SLOTS.
	slotReadTimeout = time.Second
	// retireAfter is how long a replaced client stays open for the commands already sent on it.
	retireAfter = 10 * time.Second
)

// slotReader reads a Redis Cluster's slot map from whichever node answers.
type slotReader struct {
	dialer   radix.Dialer
	nodes    []string // to ask, in order: the one that answered last first
	conn     radix.Conn
	connAddr string // the node conn is to, kept between reads
}

func newSlotReader(dialer radix.Dialer, seeds []string) *slotReader {
	return &slotReader{dialer: dialer, nodes: slices.Clone(seeds)}
}

// owners returns which primary serves which slots, as text that changes exactly when a slot
// moves to another primary, asking the nodes in turn until one answers. The nodes to ask next
// time become the one that answered, then every node in its map, then the rest.
func (r *slotReader) owners(ctx context.Context) (string, error) {
	var errs []error
	for _, addr := range r.nodes {
		topo, err := r.read(ctx, addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		next := []string{addr}
		for _, n := range topo {
			next = append(next, n.Addr)
		}
		r.nodes = uniqueStrings(append(next, r.nodes...))
		return slotOwners(topo), nil
	}
	return "", errors.Join(errs...)
}

// read asks addr for the slot map, on the kept connection when it is to addr.
func (r *slotReader) read(ctx context.Context, addr string) (radix.ClusterTopo, error) {
	if r.conn == nil || r.connAddr != addr {
		r.close()
		dialCtx, cancel := context.WithTimeout(ctx, slotReadTimeout)
		conn, err := r.dialer.Dial(dialCtx, "tcp", addr)
		cancel()
		if err != nil {
			return nil, err
		}
		r.conn, r.connAddr = conn, addr
	}
	ctx, cancel := context.WithTimeout(ctx, slotReadTimeout)
	defer cancel()
	var topo radix.ClusterTopo
	if err := r.conn.Do(ctx, radix.Cmd(&topo, "CLUSTER", "SLOTS")); err != nil {
		r.close()
		return nil, err
	}
	if len(topo) == 0 {
		return nil, errors.New("no slots assigned")
	}
	return topo, nil
}

func (r *slotReader) close() {
	if r.conn != nil {
		_ = r.conn.Close()
		r.conn = nil
	}
}

// slotOwners describes which primary serves which slot ranges, sorted by slot.
func slotOwners(topo radix.ClusterTopo) string {
	type span struct {
		from, to uint16
		addr     string
	}
	var spans []span
	for _, n := range topo.Primaries() {
		for _, s := range n.Slots {
			spans = append(spans, span{s[0], s[1], n.Addr})
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return int(a.from) - int(b.from) })
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "%d-%d:%s ", s.from, s.to-1, s.addr)
	}
	return strings.TrimSpace(b.String())
}

func uniqueStrings(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := in[:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// followedCluster holds a client of a Redis Cluster and replaces it with a new one whenever
// the cluster's slots move to other primaries (see slotWatchEvery). The replaced client is
// closed retireAfter later, so that commands already sent on it finish.
type followedCluster[C io.Closer] struct {
	dial   func() (C, error) // a new client, reading the slot map as it starts
	logger *slog.Logger
	where  string

	current atomic.Pointer[C] // read on every command, so not behind mu

	mu      sync.Mutex // guards closed, retired and the swap of current
	closed  bool
	retired []retiredClient[C]

	stop context.CancelFunc
}

// retiredClient is a replaced client, closed when its timer fires.
type retiredClient[C io.Closer] struct {
	timer  *time.Timer
	client C
	at     time.Time
}

// followCluster makes the first client and starts following the slot map from seeds.
func followCluster[C io.Closer](logger *slog.Logger, where string, dialer radix.Dialer, seeds []string, dial func() (C, error)) (*followedCluster[C], error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reader := newSlotReader(dialer, seeds)
	ctx, stop := context.WithCancel(context.Background())
	// The map before the client: a move between the two costs one needless replacement at
	// most, never a missed one.
	owners, _ := reader.owners(ctx)
	client, err := dial()
	if err != nil {
		stop()
		reader.close()
		return nil, err
	}
	f := &followedCluster[C]{dial: dial, logger: logger, where: where, stop: stop}
	f.current.Store(&client)
	go f.follow(ctx, reader, owners)
	return f, nil
}

// client is the current client.
func (f *followedCluster[C]) client() C { return *f.current.Load() }

// follow reads the slot map every slotWatchEvery and replaces the client when it changed from
// the map the current client was made with. A replacement that fails is tried again at the
// next read.
func (f *followedCluster[C]) follow(ctx context.Context, reader *slotReader, madeWith string) {
	defer reader.close()
	tick := time.NewTicker(slotWatchEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		owners, err := reader.owners(ctx)
		switch {
		case err != nil:
			f.logger.Debug("Redis Cluster: no node answered for the slot map", "redis", f.where, "error", err)
			continue
		case madeWith == "":
			madeWith = owners
			continue
		case owners == madeWith:
			continue
		}
		f.logger.Info("Redis Cluster: slots moved to other primaries; connecting anew",
			"redis", f.where, "slots", owners)
		if err := f.replace(); err != nil {
			f.logger.Warn("Redis Cluster: connecting anew failed; trying again", "redis", f.where, "error", err)
			continue
		}
		madeWith = owners
	}
}

// replace makes a new client, makes it current and retires the old one.
func (f *followedCluster[C]) replace() error {
	client, err := f.dial()
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return client.Close()
	}
	old := *f.current.Swap(&client)
	f.retired = slices.DeleteFunc(f.retired, func(r retiredClient[C]) bool { return time.Since(r.at) > retireAfter })
	f.retired = append(f.retired, retiredClient[C]{time.AfterFunc(retireAfter, func() { _ = old.Close() }), old, time.Now()})
	return nil
}

// Close stops following and closes the clients, the retired ones too. A client being made
// then is closed as soon as it is made.
func (f *followedCluster[C]) Close() error {
	f.stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	for _, r := range f.retired {
		if r.timer.Stop() { // not closed yet
			_ = r.client.Close()
		}
	}
	return f.client().Close()
}
