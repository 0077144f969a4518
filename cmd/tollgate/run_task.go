// `tollgate run`: the in-process parts, each a goroutine that can be stopped on its own.

package main

import (
	"context"
	"sync"

	"github.com/tollgate-dev/tollgate/envoy/launch"
)

// task is a part of the gateway running in a goroutine with a context of its own, so parts
// can be stopped one at a time, in order.
type task struct {
	name     string
	cancel   context.CancelFunc
	stopOnce sync.Once
	asked    chan struct{} // closed when stop begins
	done     chan struct{} // closed when the task has ended; err and unexpected are set then
	err      error
	// unexpected says the task ended before it was asked to.
	unexpected bool
}

func startTask(name string, run func(context.Context) error) *task {
	ctx, cancel := context.WithCancel(context.Background())
	t := &task{name: name, cancel: cancel, asked: make(chan struct{}), done: make(chan struct{})}
	go func() {
		err := run(ctx)
		t.err, t.unexpected = err, !launch.Closed(t.asked)
		close(t.done)
	}()
	return t
}

// finished reports whether the task has ended.
func (t *task) finished() bool { return launch.Closed(t.done) }

// stop asks the task to end and waits for it; each part bounds its own stop. An end that was
// not asked for is left to failures to report.
func (t *task) stop() error {
	t.stopOnce.Do(func() {
		close(t.asked)
		t.cancel()
	})
	<-t.done
	if t.unexpected {
		return nil
	}
	return t.err
}
