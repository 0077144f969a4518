package extproc

import (
	"context"
	"fmt"
	"testing"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient/rlsclienttest"
)

// TestTopUsersCountsEachCounterOnce: recent callers are ranked per quota by their own counter,
// their team's, and the global one, each listed once however many of its callers were seen.
func TestTopUsersCountsEachCounterOnce(t *testing.T) {
	fake := rlsclienttest.Start(t)
	global := Quota{Name: "everyone", Cost: "llm_total_token", Scope: ScopeGlobal, Entries: []rlsclient.Entry{{Key: "quota", Value: "everyone"}}}
	srv, err := NewServer(nil, nil, quotaConfig(t, fake.Addr, userQuota("mine", "llm_total_token"), teamQuota("ours", "llm_total_token"), global), rlsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Caller{{User: "alice", Team: "red"}, {User: "bob", Team: "red"}, {User: "carol", Team: "blue"}, {User: "alice", Team: "red"}} {
		srv.activity.sawCaller(c)
	}
	callers, _ := srv.Activity()
	if fmt.Sprint(callers) != "[{alice red} {carol blue} {bob red}]" {
		t.Errorf("recent callers %v, most recent first and each once", callers)
	}
	top, err := srv.TopUsers(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	subjects := func(name string) string {
		var out []string
		for _, u := range top[name] {
			out = append(out, u.User+"/"+u.Team)
		}
		return fmt.Sprint(out)
	}
	if got := subjects("mine"); got != "[alice/red carol/blue bob/red]" {
		t.Errorf("user quota ranks %s", got)
	}
	if got := subjects("ours"); got != "[/red /blue]" {
		t.Errorf("team quota ranks %s, want each team once", got)
	}
	if got := subjects("everyone"); got != "[/]" {
		t.Errorf("global quota ranks %s, want one row", got)
	}
}
