// Package testutil holds the helpers tests share: free loopback ports, waiting for a
// condition, a log buffer goroutines may write to, and the real Envoy and redis-server tests
// run. It is imported only by tests and by test-only helper packages.
package testutil

import (
	"errors"
	"testing"
	"time"
)

// Condition is what Eventually waits for: a func returning nil once it holds (its error says
// why not, for the failure message), or a func returning true once it holds.
type Condition interface {
	func() error | func() bool
}

// errNotYet is a false func() bool's answer.
var errNotYet = errors.New("condition not met")

// Eventually checks cond until it holds, and fails the test with what and cond's last answer
// when timeout passes first. Conditions, not sleeps, decide when a test moves on; the timeout
// only bounds a hang.
func Eventually[C Condition](t testing.TB, timeout time.Duration, what string, cond C) {
	t.Helper()
	var check func() error
	switch c := any(cond).(type) {
	case func() error:
		check = c
	case func() bool:
		check = func() error {
			if c() {
				return nil
			}
			return errNotYet
		}
	}
	deadline := time.Now().Add(timeout)
	// Quick to notice a condition that holds almost at once, without spinning on a slow one.
	pause := 5 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}
