package rls

import (
	"testing"

	"github.com/mediocregopher/radix/v4"
)

// TestSlotOwnersChangeExactlyWhenSlotsMove: the description of a slot map is the same however
// the nodes are listed and whatever the replicas are, and differs once a slot range is served
// by another primary.
func TestSlotOwnersChangeExactlyWhenSlotsMove(t *testing.T) {
	before := radix.ClusterTopo{
		{Addr: "10.0.0.2:7000", ID: "b", Slots: [][2]uint16{{5461, 10923}}},
		{Addr: "10.0.0.1:7000", ID: "a", Slots: [][2]uint16{{0, 5461}}},
		{Addr: "10.0.0.4:7000", ID: "d", Slots: [][2]uint16{{0, 5461}}, SecondaryOfAddr: "10.0.0.1:7000", SecondaryOfID: "a"},
		{Addr: "10.0.0.3:7000", ID: "c", Slots: [][2]uint16{{10923, 16384}}},
	}
	reordered := radix.ClusterTopo{before[3], before[1], before[0]} // the replica gone too
	promoted := radix.ClusterTopo{
		{Addr: "10.0.0.4:7000", ID: "d", Slots: [][2]uint16{{0, 5461}}},
		before[0], before[3],
	}
	want := "0-5460:10.0.0.1:7000 5461-10922:10.0.0.2:7000 10923-16383:10.0.0.3:7000"
	if got := slotOwners(before); got != want {
		t.Errorf("slotOwners = %q, want %q", got, want)
	}
	if slotOwners(reordered) != slotOwners(before) {
		t.Errorf("the same owners listed differently: %q vs %q", slotOwners(reordered), slotOwners(before))
	}
	if slotOwners(promoted) == slotOwners(before) {
		t.Errorf("a promoted replica left the description unchanged: %q", slotOwners(promoted))
	}
}
