package extproc

import (
	"fmt"
	"testing"
	"time"
)

// zone loads an IANA time zone or fails the test.
func zone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return loc
}

// instant parses an RFC 3339 time (with its offset) or fails the test.
func instant(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return v
}

// TestCalendarPeriod: the period that contains an instant, in the calendar's own zone: its label
// and its bounds at local midnight (the end is the next period's start).
func TestCalendarPeriod(t *testing.T) {
	tests := []struct {
		name       string
		zone       string
		unit       CalendarUnit
		at         string // the instant asked about
		label      string
		start, end string // local midnights, with the zone's offset
	}{
		// UTC.
		{"UTC day", "UTC", CalendarDay, "2026-12-06T15:04:05Z", "2026-12-06", "2026-12-06T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"UTC week from Sunday", "UTC", CalendarWeek, "2026-12-06T23:59:59Z", "2026-W49", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"UTC week from Monday", "UTC", CalendarWeek, "2026-11-30T00:00:00Z", "2026-W49", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"UTC month", "UTC", CalendarMonth, "2026-12-06T12:00:00Z", "2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"UTC leap February", "UTC", CalendarMonth, "2028-02-29T12:00:00Z", "2028-02", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},

		// ISO weeks across year ends.
		{"2026-12-31 is in 2026-W53", "UTC", CalendarWeek, "2026-12-31T12:00:00Z", "2026-W53", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},
		{"2027-01-03 is still in 2026-W53", "UTC", CalendarWeek, "2027-01-03T23:00:00Z", "2026-W53", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},
		{"2027-01-04 starts 2027-W01", "UTC", CalendarWeek, "2027-01-04T00:00:00Z", "2027-W01", "2027-01-04T00:00:00Z", "2027-01-11T00:00:00Z"},
		{"2024-12-30 is in 2025-W01", "UTC", CalendarWeek, "2024-12-30T08:00:00Z", "2025-W01", "2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z"},
		{"2025-01-05 is in 2025-W01", "UTC", CalendarWeek, "2025-01-05T08:00:00Z", "2025-W01", "2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z"},
		{"2021-01-03 is in 2020-W53", "UTC", CalendarWeek, "2021-01-03T08:00:00Z", "2020-W53", "2020-12-28T00:00:00Z", "2021-01-04T00:00:00Z"},

		// Europe/Berlin: 23:30 UTC is already the next day there.
		{"Berlin day", "Europe/Berlin", CalendarDay, "2026-12-05T23:30:00Z", "2026-12-06", "2026-12-06T00:00:00+01:00", "2026-12-07T00:00:00+01:00"},
		{"Berlin week", "Europe/Berlin", CalendarWeek, "2026-12-05T23:30:00Z", "2026-W49", "2026-11-30T00:00:00+01:00", "2026-12-07T00:00:00+01:00"},
		{"Berlin month", "Europe/Berlin", CalendarMonth, "2026-11-30T23:30:00Z", "2026-12", "2026-12-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00"},
		{"Berlin year end", "Europe/Berlin", CalendarMonth, "2026-12-31T23:00:00Z", "2027-01", "2027-01-01T00:00:00+01:00", "2027-02-01T00:00:00+01:00"},

		// America/New_York: 03:00 UTC is still the day before there.
		{"New York day", "America/New_York", CalendarDay, "2026-12-07T03:00:00Z", "2026-12-06", "2026-12-06T00:00:00-05:00", "2026-12-07T00:00:00-05:00"},
		{"New York week", "America/New_York", CalendarWeek, "2026-12-07T03:00:00Z", "2026-W49", "2026-11-30T00:00:00-05:00", "2026-12-07T00:00:00-05:00"},
		{"New York month", "America/New_York", CalendarMonth, "2027-01-01T03:00:00Z", "2026-12", "2026-12-01T00:00:00-05:00", "2027-01-01T00:00:00-05:00"},
		{"New York summer month", "America/New_York", CalendarMonth, "2026-07-01T03:59:59Z", "2026-06", "2026-06-01T00:00:00-04:00", "2026-07-01T00:00:00-04:00"},

		// Asia/Kolkata, +05:30.
		{"Kolkata day", "Asia/Kolkata", CalendarDay, "2026-12-05T19:00:00Z", "2026-12-06", "2026-12-06T00:00:00+05:30", "2026-12-07T00:00:00+05:30"},
		{"Kolkata day, half an hour before", "Asia/Kolkata", CalendarDay, "2026-12-05T18:29:59Z", "2026-12-05", "2026-12-05T00:00:00+05:30", "2026-12-06T00:00:00+05:30"},
		{"Kolkata week over the year end", "Asia/Kolkata", CalendarWeek, "2026-12-31T20:00:00Z", "2026-W53", "2026-12-28T00:00:00+05:30", "2027-01-04T00:00:00+05:30"},
		{"Kolkata month", "Asia/Kolkata", CalendarMonth, "2026-12-31T20:00:00Z", "2027-01", "2027-01-01T00:00:00+05:30", "2027-02-01T00:00:00+05:30"},

		// Pacific/Chatham, +13:45 in its summer.
		{"Chatham day", "Pacific/Chatham", CalendarDay, "2026-12-05T10:15:00Z", "2026-12-06", "2026-12-06T00:00:00+13:45", "2026-12-07T00:00:00+13:45"},
		{"Chatham day, a second before", "Pacific/Chatham", CalendarDay, "2026-12-05T10:14:59Z", "2026-12-05", "2026-12-05T00:00:00+13:45", "2026-12-06T00:00:00+13:45"},
		{"Chatham week", "Pacific/Chatham", CalendarWeek, "2026-12-05T10:15:00Z", "2026-W49", "2026-11-30T00:00:00+13:45", "2026-12-07T00:00:00+13:45"},
		{"Chatham month", "Pacific/Chatham", CalendarMonth, "2026-11-30T10:15:00Z", "2026-12", "2026-12-01T00:00:00+13:45", "2027-01-01T00:00:00+13:45"},

		// Europe/Berlin's DST changes: 2026-03-29 has 23 hours, 2026-10-25 has 25.
		{"Berlin spring-forward day", "Europe/Berlin", CalendarDay, "2026-03-29T12:00:00Z", "2026-03-29", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"},
		{"Berlin spring-forward week", "Europe/Berlin", CalendarWeek, "2026-03-29T12:00:00Z", "2026-W13", "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00"},
		{"Berlin spring-forward month", "Europe/Berlin", CalendarMonth, "2026-03-29T12:00:00Z", "2026-03", "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00"},
		{"Berlin fall-back day", "Europe/Berlin", CalendarDay, "2026-10-25T12:00:00Z", "2026-10-25", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"},
		{"Berlin fall-back day, repeated hour", "Europe/Berlin", CalendarDay, "2026-10-25T01:30:00Z", "2026-10-25", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"},
		{"Berlin fall-back week", "Europe/Berlin", CalendarWeek, "2026-10-25T12:00:00Z", "2026-W43", "2026-10-19T00:00:00+02:00", "2026-10-26T00:00:00+01:00"},
		{"Berlin fall-back month", "Europe/Berlin", CalendarMonth, "2026-10-25T12:00:00Z", "2026-10", "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00"},

		// Midnight skipped by a DST change: the day starts at 01:00, when the day before ends.
		{"Havana skipped midnight", "America/Havana", CalendarDay, "2018-03-11T12:00:00Z", "2018-03-11", "2018-03-11T01:00:00-04:00", "2018-03-12T00:00:00-04:00"},
		{"Havana day before", "America/Havana", CalendarDay, "2018-03-10T12:00:00Z", "2018-03-10", "2018-03-10T00:00:00-05:00", "2018-03-11T01:00:00-04:00"},
		{"Havana first instant", "America/Havana", CalendarDay, "2018-03-11T05:00:00Z", "2018-03-11", "2018-03-11T01:00:00-04:00", "2018-03-12T00:00:00-04:00"},
		{"Havana week", "America/Havana", CalendarWeek, "2018-03-11T12:00:00Z", "2018-W10", "2018-03-05T00:00:00-05:00", "2018-03-12T00:00:00-04:00"},
		{"Santiago skipped midnight", "America/Santiago", CalendarDay, "2018-08-12T12:00:00Z", "2018-08-12", "2018-08-12T01:00:00-03:00", "2018-08-13T00:00:00-03:00"},
		{"Santiago day before", "America/Santiago", CalendarDay, "2018-08-11T12:00:00Z", "2018-08-11", "2018-08-11T00:00:00-04:00", "2018-08-12T01:00:00-03:00"},
		{"Santiago last instant of the day before", "America/Santiago", CalendarDay, "2018-08-12T03:59:59.999999999Z", "2018-08-11", "2018-08-11T00:00:00-04:00", "2018-08-12T01:00:00-03:00"},
		// Santiago falls back from 00:00 to 23:00: the Saturday has 25 hours, the Sunday starts once.
		{"Santiago fall-back to 23:00", "America/Santiago", CalendarDay, "2019-04-07T03:30:00Z", "2019-04-06", "2019-04-06T00:00:00-03:00", "2019-04-07T00:00:00-04:00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := zone(t, tt.zone)
			c := Calendar{Unit: tt.unit, Location: loc}
			label, start, end := c.Period(instant(t, tt.at))
			wantStart, wantEnd := instant(t, tt.start), instant(t, tt.end)
			if label != tt.label || !start.Equal(wantStart) || !end.Equal(wantEnd) {
				t.Fatalf("%s: Period(%s) = %q [%s, %s), want %q [%s, %s)", c, tt.at,
					label, start.In(loc), end.In(loc), tt.label, wantStart.In(loc), wantEnd.In(loc))
			}
			if start.Location() != loc || end.Location() != loc {
				t.Errorf("bounds in %v and %v, want %v", start.Location(), end.Location(), loc)
			}
		})
	}
}

// TestCalendarPeriodLengths: DST makes periods shorter or longer than their nominal length.
func TestCalendarPeriodLengths(t *testing.T) {
	tests := []struct {
		zone string
		unit CalendarUnit
		at   string
		want time.Duration
	}{
		{"Europe/Berlin", CalendarDay, "2026-03-29T12:00:00Z", 23 * time.Hour},
		{"Europe/Berlin", CalendarDay, "2026-03-28T12:00:00Z", 24 * time.Hour},
		{"Europe/Berlin", CalendarDay, "2026-10-25T12:00:00Z", 25 * time.Hour},
		{"Europe/Berlin", CalendarWeek, "2026-03-25T12:00:00Z", 7*24*time.Hour - time.Hour},
		{"Europe/Berlin", CalendarWeek, "2026-10-20T12:00:00Z", 7*24*time.Hour + time.Hour},
		{"Europe/Berlin", CalendarWeek, "2026-12-06T12:00:00Z", 7 * 24 * time.Hour},
		{"Europe/Berlin", CalendarMonth, "2026-03-10T12:00:00Z", 31*24*time.Hour - time.Hour},
		{"Europe/Berlin", CalendarMonth, "2026-10-10T12:00:00Z", 31*24*time.Hour + time.Hour},
		{"Europe/Berlin", CalendarMonth, "2026-02-10T12:00:00Z", 28 * 24 * time.Hour},
		{"America/Havana", CalendarDay, "2018-03-11T12:00:00Z", 23 * time.Hour},
		{"America/Havana", CalendarDay, "2018-03-10T12:00:00Z", 24 * time.Hour},
		{"America/Santiago", CalendarDay, "2018-08-12T12:00:00Z", 23 * time.Hour},
		{"America/Santiago", CalendarDay, "2019-04-06T12:00:00Z", 25 * time.Hour},
		{"Pacific/Chatham", CalendarDay, "2026-09-27T12:00:00Z", 24 * time.Hour}, // 2026-09-28, the day after DST starts
		{"Pacific/Chatham", CalendarDay, "2026-09-26T14:00:00Z", 23 * time.Hour}, // 2026-09-27: 02:45 becomes 03:45
		{"Australia/Lord_Howe", CalendarDay, "2026-10-04T06:00:00Z", 23*time.Hour + 30*time.Minute},
	}
	for _, tt := range tests {
		c := Calendar{Unit: tt.unit, Location: zone(t, tt.zone)}
		label, start, end := c.Period(instant(t, tt.at))
		if got := end.Sub(start); got != tt.want {
			t.Errorf("%s at %s: %s lasts %v, want %v", c, tt.at, label, got, tt.want)
		}
	}
}

// TestCalendarBoundaryBelongsToNewPeriod: the first instant of a period is in it; the instant
// before is in the previous one, which ends exactly there.
func TestCalendarBoundaryBelongsToNewPeriod(t *testing.T) {
	tests := []struct {
		zone            string
		unit            CalendarUnit
		boundary        string
		before, after   string
		previousStarted string
	}{
		{"UTC", CalendarDay, "2026-12-07T00:00:00Z", "2026-12-06", "2026-12-07", "2026-12-06T00:00:00Z"},
		{"Europe/Berlin", CalendarDay, "2026-12-07T00:00:00+01:00", "2026-12-06", "2026-12-07", "2026-12-06T00:00:00+01:00"},
		{"Europe/Berlin", CalendarWeek, "2026-12-07T00:00:00+01:00", "2026-W49", "2026-W50", "2026-11-30T00:00:00+01:00"},
		{"Europe/Berlin", CalendarMonth, "2027-01-01T00:00:00+01:00", "2026-12", "2027-01", "2026-12-01T00:00:00+01:00"},
		{"Asia/Kolkata", CalendarWeek, "2027-01-04T00:00:00+05:30", "2026-W53", "2027-W01", "2026-12-28T00:00:00+05:30"},
		{"Pacific/Chatham", CalendarMonth, "2027-01-01T00:00:00+13:45", "2026-12", "2027-01", "2026-12-01T00:00:00+13:45"},
		{"America/New_York", CalendarDay, "2026-03-09T00:00:00-04:00", "2026-03-08", "2026-03-09", "2026-03-08T00:00:00-05:00"},
		{"America/Havana", CalendarDay, "2018-03-11T01:00:00-04:00", "2018-03-10", "2018-03-11", "2018-03-10T00:00:00-05:00"},
		{"America/Santiago", CalendarDay, "2018-08-12T01:00:00-03:00", "2018-08-11", "2018-08-12", "2018-08-11T00:00:00-04:00"},
	}
	for _, tt := range tests {
		c := Calendar{Unit: tt.unit, Location: zone(t, tt.zone)}
		b := instant(t, tt.boundary)
		label, start, _ := c.Period(b)
		if label != tt.after || !start.Equal(b) {
			t.Errorf("%s: Period(%s) = %q from %s, want %q from the boundary", c, tt.boundary, label, start, tt.after)
		}
		label, start, end := c.Period(b.Add(-time.Nanosecond))
		if label != tt.before || !end.Equal(b) || !start.Equal(instant(t, tt.previousStarted)) {
			t.Errorf("%s: Period(a nanosecond before %s) = %q [%s, %s), want %q [%s, boundary)",
				c, tt.boundary, label, start, end, tt.before, tt.previousStarted)
		}
	}
}

// TestCalendarSkippedMidnightJoinsTheDays: where DST skips midnight, the day before ends when
// the day starts, so no instant belongs to neither or both.
func TestCalendarSkippedMidnightJoinsTheDays(t *testing.T) {
	for _, tt := range []struct{ zone, day, dayBefore string }{
		{"America/Havana", "2018-03-11T12:00:00-04:00", "2018-03-10T12:00:00-05:00"},
		{"America/Santiago", "2018-08-12T12:00:00-03:00", "2018-08-11T12:00:00-04:00"},
		{"America/Havana", "2026-03-08T12:00:00-04:00", "2026-03-07T12:00:00-05:00"},
		{"America/Santiago", "2026-09-06T12:00:00-03:00", "2026-09-05T12:00:00-04:00"},
	} {
		loc := zone(t, tt.zone)
		c := Calendar{Unit: CalendarDay, Location: loc}
		_, start, _ := c.Period(instant(t, tt.day))
		_, _, endBefore := c.Period(instant(t, tt.dayBefore))
		if !endBefore.Equal(start) {
			t.Errorf("%s: the day before %s ends at %s, the day starts at %s", tt.zone, tt.day, endBefore.In(loc), start.In(loc))
		}
		if local := start.In(loc); local.Hour() != 1 || local.Minute() != 0 {
			t.Errorf("%s: the day of %s starts at %s, want 01:00 (midnight does not exist)", tt.zone, tt.day, local)
		}
	}
}

func TestCalendarString(t *testing.T) {
	for _, tt := range []struct {
		c    Calendar
		want string
	}{
		{Calendar{Unit: CalendarMonth, Location: zone(t, "Europe/Berlin")}, "calendar-month in Europe/Berlin"},
		{Calendar{Unit: CalendarWeek, Location: zone(t, "Asia/Kolkata")}, "calendar-week in Asia/Kolkata"},
		{Calendar{Unit: CalendarDay, Location: time.UTC}, "calendar-day in UTC"},
		{Calendar{Unit: CalendarDay}, "calendar-day in UTC"},
		{Calendar{Location: zone(t, "America/New_York")}, "unknown in America/New_York"},
	} {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
	if got := fmt.Sprintf("per %s", Calendar{Unit: CalendarDay, Location: zone(t, "Pacific/Chatham")}); got != "per calendar-day in Pacific/Chatham" {
		t.Errorf("formatted as %q", got)
	}
}

// TestCalendarNilLocationIsUTC: a calendar without a zone counts in UTC, whatever zone the
// instant carries.
func TestCalendarNilLocationIsUTC(t *testing.T) {
	at := instant(t, "2026-12-06T01:00:00+05:30") // 2026-12-05 19:30 UTC
	for _, unit := range []CalendarUnit{CalendarDay, CalendarWeek, CalendarMonth} {
		nilLoc := Calendar{Unit: unit}
		utc := Calendar{Unit: unit, Location: time.UTC}
		label, start, end := nilLoc.Period(at)
		wantLabel, wantStart, wantEnd := utc.Period(at)
		if label != wantLabel || !start.Equal(wantStart) || !end.Equal(wantEnd) {
			t.Errorf("%v: nil location gives %q [%s, %s), UTC %q [%s, %s)", unit, label, start, end, wantLabel, wantStart, wantEnd)
		}
		if start.Location() != time.UTC {
			t.Errorf("%v: start in %v, want UTC", unit, start.Location())
		}
	}
	if label, start, _ := (Calendar{Unit: CalendarDay}).Period(at); label != "2026-12-05" || !start.Equal(instant(t, "2026-12-05T00:00:00Z")) {
		t.Errorf("nil location: day %q from %s, want 2026-12-05 (the UTC date, not the instant's own zone's)", label, start)
	}
}

// TestCalendarPeriodProperties: over two years in zones with DST, half-hour offsets, midnight
// skipped by DST and 30-minute DST, every instant lies in its period, the period's start has
// the same period, and its end starts the next one.
func TestCalendarPeriodProperties(t *testing.T) {
	zones := []string{
		"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Chatham",
		"America/Havana", "America/Santiago", "Australia/Lord_Howe", "America/St_Johns",
	}
	from := instant(t, "2026-01-01T00:00:00Z")
	to := instant(t, "2028-01-01T00:00:00Z")
	step := 3*time.Hour + 7*time.Minute + 11*time.Second
	if testing.Short() {
		step = 11*time.Hour + 7*time.Minute + 11*time.Second
	}
	for _, name := range zones {
		loc := zone(t, name)
		// The grid, and every zone change with the instants right around it.
		var instants []time.Time
		for at := from; at.Before(to); at = at.Add(step) {
			instants = append(instants, at)
		}
		for at := from; at.Before(to); {
			_, change := at.In(loc).ZoneBounds()
			if change.IsZero() || !change.Before(to) {
				break
			}
			instants = append(instants, change.Add(-time.Nanosecond), change, change.Add(30*time.Minute))
			at = change
		}
		for _, unit := range []CalendarUnit{CalendarDay, CalendarWeek, CalendarMonth} {
			c := Calendar{Unit: unit, Location: loc}
			nominal := map[CalendarUnit][2]time.Duration{
				CalendarDay:   {23 * time.Hour, 25 * time.Hour},
				CalendarWeek:  {7*24*time.Hour - time.Hour, 7*24*time.Hour + time.Hour},
				CalendarMonth: {28*24*time.Hour - time.Hour, 31*24*time.Hour + time.Hour},
			}[unit]
			failures := 0
			fail := func(format string, args ...any) {
				t.Helper()
				if failures++; failures <= 5 {
					t.Errorf("%s: "+format, append([]any{c}, args...)...)
				}
			}
			for _, at := range instants {
				label, start, end := c.Period(at)
				if at.Before(start) || !at.Before(end) {
					fail("%s is outside its period %q [%s, %s)", at.In(loc), label, start.In(loc), end.In(loc))
				}
				if want := localLabel(unit, at.In(loc)); label != want {
					fail("%s is labelled %q, want %q", at.In(loc), label, want)
				}
				if d := end.Sub(start); d < nominal[0] || d > nominal[1] {
					fail("period %q lasts %v", label, d)
				}
				// The start is the first instant of its local date: midnight, or the zone change
				// that skipped it.
				ls := start.In(loc)
				if ls.Hour() != 0 || ls.Minute() != 0 || ls.Second() != 0 || ls.Nanosecond() != 0 {
					if zoneStart, _ := ls.ZoneBounds(); !zoneStart.Equal(start) || ls.Hour() > 1 {
						fail("period %q starts at %s, neither midnight nor a zone change", label, ls)
					}
				}
				if prev := start.Add(-time.Nanosecond).In(loc); sameDate(prev, ls) {
					fail("period %q starts at %s, but %s is the same date", label, ls, prev)
				}
				if l, s, e := c.Period(start); l != label || !s.Equal(start) || !e.Equal(end) {
					fail("Period(start of %q) = %q [%s, %s)", label, l, s.In(loc), e.In(loc))
				}
				if l, _, e := c.Period(end.Add(-time.Nanosecond)); l != label || !e.Equal(end) {
					fail("Period(just before the end of %q) = %q ending %s", label, l, e.In(loc))
				}
				if l, s, _ := c.Period(end); l == label || !s.Equal(end) {
					fail("Period(end of %q at %s) = %q from %s, want the next period from its end", label, end.In(loc), l, s.In(loc))
				}
			}
		}
	}
}

// localLabel is the label of the period of unit that contains local, computed from its date.
func localLabel(unit CalendarUnit, local time.Time) string {
	switch unit {
	case CalendarWeek:
		y, w := local.ISOWeek()
		return fmt.Sprintf("%04d-W%02d", y, w)
	case CalendarMonth:
		return local.Format("2006-01")
	default:
		return local.Format("2006-01-02")
	}
}

func sameDate(a, b time.Time) bool {
	ay, am, ad := a.Date()
	by, bm, bd := b.Date()
	return ay == by && am == bm && ad == bd
}

// TestCalendarHistoricalZoneChanges: a midnight that occurred twice (Amman, 29 October 2021:
// clocks went back from 01:00 to 00:00) starts the day at the first one, and a date that was
// skipped (Apia, 30 December 2011) leaves no instant outside a period.
func TestCalendarHistoricalZoneChanges(t *testing.T) {
	amman, err := time.LoadLocation("Asia/Amman")
	if err != nil {
		t.Fatal(err)
	}
	day := Calendar{Unit: CalendarDay, Location: amman}
	at := time.Date(2021, 10, 28, 21, 30, 0, 0, time.UTC) // 00:30 on the 29th, before the change
	label, start, end := day.Period(at)
	if label != "2021-10-29" || !start.Equal(time.Date(2021, 10, 28, 21, 0, 0, 0, time.UTC)) || !end.After(at) {
		t.Errorf("Amman %s: %s [%s, %s), want 2021-10-29 from 21:00Z", at, label, start.UTC(), end.UTC())
	}
	if _, _, prevEnd := day.Period(at.Add(-time.Hour)); !prevEnd.Equal(start) {
		t.Errorf("Amman: the 28th ends at %s, the 29th starts at %s", prevEnd.UTC(), start.UTC())
	}
	apia, err := time.LoadLocation("Pacific/Apia")
	if err != nil {
		t.Fatal(err)
	}
	day = Calendar{Unit: CalendarDay, Location: apia}
	for at := time.Date(2011, 12, 29, 0, 0, 0, 0, time.UTC); at.Before(time.Date(2012, 1, 1, 0, 0, 0, 0, time.UTC)); at = at.Add(30 * time.Minute) {
		if label, start, end := day.Period(at); at.Before(start) || !at.Before(end) {
			t.Fatalf("Apia %s is outside its period %s [%s, %s)", at, label, start.UTC(), end.UTC())
		}
	}
}
