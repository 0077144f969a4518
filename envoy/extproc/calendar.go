package extproc

import (
	"fmt"
	"time"
)

// Calendar periods. The ratelimit service only knows windows aligned to the Unix epoch (its
// month is 30 days), so a quota that resets at local midnight, on Monday or on the 1st names
// its period in the descriptor instead: the counter's key changes when the period does, in
// the quota's own time zone, daylight saving time included.

// CalendarServiceUnit is the ratelimit service's unit for a calendar quota's counters: its
// longest window, a year aligned to the Unix epoch. Where such a window starts inside a
// period, the counter is carried into it (exchange.carryCalendarCounters).
const CalendarServiceUnit = "YEAR"

// CalendarUnit is the length of a calendar period.
type CalendarUnit int

const (
	// CalendarDay starts at local midnight.
	CalendarDay CalendarUnit = iota + 1
	// CalendarWeek starts on Monday at local midnight (ISO weeks).
	CalendarWeek
	// CalendarMonth starts on the 1st at local midnight.
	CalendarMonth
)

// String names the unit as the policy does.
func (u CalendarUnit) String() string {
	switch u {
	case CalendarDay:
		return "calendar-day"
	case CalendarWeek:
		return "calendar-week"
	case CalendarMonth:
		return "calendar-month"
	default:
		return "unknown"
	}
}

// Calendar is a quota's calendar period: its unit in its time zone.
type Calendar struct {
	Unit     CalendarUnit
	Location *time.Location
}

// String shows the period as the policy writes it, with its zone.
func (c Calendar) String() string { return c.Unit.String() + " in " + c.location().String() }

func (c Calendar) location() *time.Location {
	if c.Location == nil {
		return time.UTC
	}
	return c.Location
}

// Period returns the period that contains t: its label (the descriptor value that keys its
// counter: "2026-12-06", "2026-W49", "2026-12"), its start and its end (the next period's
// start). Midnight that a DST change skips is taken as the first instant of the day.
func (c Calendar) Period(t time.Time) (label string, start, end time.Time) {
	local := t.In(c.location())
	y, m, d := local.Date()
	switch c.Unit {
	case CalendarWeek:
		back := (int(local.Weekday()) + 6) % 7 // days since Monday
		start = c.midnight(y, m, d-back)
		end = c.midnight(y, m, d-back+7)
		wy, w := start.ISOWeek()
		label = fmt.Sprintf("%04d-W%02d", wy, w)
	case CalendarMonth:
		start = c.midnight(y, m, 1)
		end = c.midnight(y, m+1, 1)
		label = fmt.Sprintf("%04d-%02d", y, int(m))
	default:
		start = c.midnight(y, m, d)
		end = c.midnight(y, m, d+1)
		label = fmt.Sprintf("%04d-%02d-%02d", y, int(m), d)
	}
	return label, start, end
}

// midnight is the first instant of a local date (day may be out of range: time.Date
// normalizes it). time.Date alone is not enough where a DST change or a zone change moves
// midnight: it may answer with an instant of the day before (midnight skipped: 23:00 in the
// old offset), or the second of two midnights (clocks went back to 00:00), or an instant of
// another day (the date itself skipped).
func (c Calendar) midnight(y int, m time.Month, d int) time.Time {
	loc := c.location()
	target := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	// Resolved before the date began: the date begins when that offset ends.
	for i := 0; i < 4 && localDate(t, loc).Before(target); i++ {
		_, end := t.ZoneBounds()
		if end.IsZero() {
			break
		}
		t = end
	}
	// Midnight occurred twice: the date began at the first one, in the offset before.
	if before := t.Add(-time.Second); localDate(before, loc).Equal(target) {
		_, offset := before.Zone()
		t = time.Date(y, m, d, 0, 0, 0, 0, time.FixedZone("", offset)).In(loc)
	}
	return t
}

// localDate is t's date in loc, as midnight UTC of that date.
func localDate(t time.Time, loc *time.Location) time.Time {
	y, m, d := t.In(loc).Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
