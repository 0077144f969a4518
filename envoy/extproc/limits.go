package extproc

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-dev/tollgate/envoy"
	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// What a client is told about its limits: the x-ratelimit-* headers of every checked answer,
// and the words of a 429.

// rateLimitValues are the values of the x-ratelimit-* headers (envoy.RateLimitHeaders), by
// metadata key: the IETF fields for the decisive quota, OpenAI's for the tightest token quota
// and the tightest request quota. A quota that refuses the request has nothing remaining.
func rateLimitValues(quotas []Quota, statuses []rlsclient.Status, decisive int, over bool, now time.Time) map[string]string {
	q, s := quotas[decisive], statuses[decisive]
	remaining := s.Remaining
	if over {
		remaining = 0
	}
	values := map[string]string{
		envoy.MetadataRateLimitLimit:     rateLimitHeader(q.Name, s.Limit, q.window(now, s.Limit.Window)),
		envoy.MetadataRateLimitRemaining: strconv.FormatUint(remaining, 10),
		envoy.MetadataRateLimitReset:     strconv.FormatInt(int64(math.Ceil(q.resetIn(now, s.ResetIn).Seconds())), 10),
	}
	for _, kind := range []struct {
		unit   QuotaUnit
		suffix string
	}{{UnitTokens, "_tokens"}, {UnitRequests, "_requests"}} {
		tightest := -1
		for i := range statuses {
			if quotas[i].Unit != kind.unit || quotas[i].Shadow || !statuses[i].Limit.Matched() {
				continue
			}
			if tightest < 0 || leftShare(statuses[i]) < leftShare(statuses[tightest]) {
				tightest = i
			}
		}
		if over && quotas[decisive].Unit == kind.unit {
			tightest = decisive // the quota that refused is the one to show
		}
		if tightest < 0 {
			continue
		}
		t := statuses[tightest]
		left := t.Remaining
		if over && tightest == decisive {
			left = 0
		}
		values[envoy.MetadataRateLimitLimit+kind.suffix] = strconv.FormatUint(t.Limit.PerWindow, 10)
		values[envoy.MetadataRateLimitRemaining+kind.suffix] = strconv.FormatUint(left, 10)
		values[envoy.MetadataRateLimitReset+kind.suffix] = quotas[tightest].resetIn(now, t.ResetIn).Round(time.Second).String()
	}
	return values
}

// overLimitMessage says in words who used what, and when the window resets: "alice has used
// all 50 qwen3 tokens of this hour; the window resets at 20:00 UTC, in 28 min."
func (ex *exchange) overLimitMessage(q Quota, l rlsclient.Limit, now time.Time, wait time.Duration) string {
	who := SubjectName(q, ex.user, ex.team)
	model := "" // a quota over every model names none
	if q.Model != "" {
		model = q.Model + " "
	}
	window := "this " + strings.ToLower(l.Unit)
	switch {
	case q.Calendar != nil:
		window = "this " + strings.TrimPrefix(q.Calendar.Unit.String(), "calendar-") + " in " + q.Calendar.location().String()
	case l.Unit == "MONTH":
		window = "this 30-day window"
	case l.Unit == "YEAR":
		window = "this 365-day window"
	}
	var used string
	switch q.Unit {
	case UnitMoney:
		amount := strconv.FormatUint(l.PerWindow, 10)
		if ex.cfg.Money.Format != nil {
			amount = ex.cfg.Money.Format(l.PerWindow)
		}
		used = fmt.Sprintf("has spent the whole %s %sbudget of %s", amount, model, window)
	case UnitRequests:
		used = fmt.Sprintf("has used all %d %srequests of %s", l.PerWindow, model, window)
	default:
		used = fmt.Sprintf("has used all %d %stokens of %s", l.PerWindow, model, window)
	}
	loc := time.UTC
	if q.Calendar != nil {
		loc = q.Calendar.location()
	}
	resetAt := now.Add(wait).In(loc)
	at := resetAt.Format("15:04 MST")
	if wait >= 24*time.Hour {
		at = resetAt.Format("2006-01-02 15:04 MST")
	}
	return fmt.Sprintf("%s %s (quota %s); the window resets at %s, in %s.", who, used, q.Name, at, humanDuration(wait))
}

// humanDuration says a wait the way people do: "45 s", "1 min 30 s", "28 min", "3 h 10 min",
// "12 days".
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int64(math.Ceil(d.Seconds())))
	case d < 10*time.Minute:
		secs := int64(math.Ceil(d.Seconds()))
		if secs%60 == 0 {
			return fmt.Sprintf("%d min", secs/60)
		}
		return fmt.Sprintf("%d min %d s", secs/60, secs%60)
	case d < time.Hour:
		return fmt.Sprintf("%d min", int64(math.Ceil(d.Minutes())))
	case d < 24*time.Hour:
		h := int64(d / time.Hour)
		if m := int64(math.Ceil((d - time.Duration(h)*time.Hour).Minutes())); m > 0 && m < 60 {
			return fmt.Sprintf("%d h %d min", h, m)
		}
		return fmt.Sprintf("%d h", int64(math.Ceil(d.Hours())))
	default:
		return fmt.Sprintf("%d days", int64(math.Ceil(d.Hours()/24)))
	}
}

// leftShare is the share of a status's limit that is left, so that quotas counted in different
// units (tokens, requests, money) compare.
func leftShare(s rlsclient.Status) float64 {
	if s.Limit.PerWindow == 0 {
		return 0
	}
	return float64(s.Remaining) / float64(s.Limit.PerWindow)
}

// rateLimitHeader renders a limit as x-ratelimit-limit does: the limit, then the limit with its
// window in seconds and the quota's name (`50, 50;w=3600;name="qwen3-hourly"`). A month is 30
// days and a year 365, as the service counts them; a calendar period is its current length.
func rateLimitHeader(name string, l rlsclient.Limit, window time.Duration) string {
	return fmt.Sprintf("%d, %d;w=%d;name=%s", l.PerWindow, l.PerWindow, int64(window.Seconds()), strconv.Quote(name))
}
