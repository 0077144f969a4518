package extproc

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tollgate-dev/tollgate/envoy/rlsclient"
)

// Threshold alerts. When a request is checked, a counter whose use has reached one of its
// quota's thresholds (a share of its limit) is reported: counted in
// tollgate_quota_alerts_total and, when the quota has a webhook, POSTed as one JSON event. Each
// threshold is reported once per counter and window — across gateways too, when they share a
// Redis (a marker key next to the counter). Alerts are queued and sent by their own worker: a
// slow or dead webhook never holds a request.

// Alerts is a quota's alert settings.
type Alerts struct {
	// At are the thresholds in percent of the limit, rising.
	At []int
	// Webhook, when set, gets one POST per threshold crossed per window.
	Webhook string
}

// AlertEvent is what a webhook receives.
type AlertEvent struct {
	Type      string    `json:"type"` // "quota.threshold"
	Quota     string    `json:"quota"`
	Model     string    `json:"model,omitempty"`
	Scope     string    `json:"scope"`
	Subject   string    `json:"subject"` // the user, "team <id>" or "everyone"
	Threshold int       `json:"threshold_percent"`
	Used      any       `json:"used"`
	Limit     any       `json:"limit"`
	Unit      string    `json:"unit"`
	ResetsAt  time.Time `json:"resets_at"`
	Time      time.Time `json:"time"`
	// key names the counter and window, for deduplication; not sent.
	key string
}

// AlertMarker records, once across gateways, that a threshold of a counter's window was
// reported; it reports whether this call made the record (rls.Counters, with Redis SET NX).
type AlertMarker interface {
	MarkOnce(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// alertQueueSize bounds the alerts waiting for the worker; past it they are dropped (and
// counted), never waited for.
const alertQueueSize = 1024

// webhookTimeout bounds one webhook call.
const webhookTimeout = 5 * time.Second

// alerter queues and delivers alerts.
type alerter struct {
	queue  chan AlertEvent
	client *http.Client
	// seen remembers what this gateway reported, so a counter past a threshold is not asked
	// about again on every request of its window.
	mu   sync.Mutex
	seen map[string]time.Time // key → when the window ends
}

func newAlerter() *alerter {
	return &alerter{queue: make(chan AlertEvent, alertQueueSize), client: &http.Client{Timeout: webhookTimeout}, seen: map[string]time.Time{}}
}

// firstTime reports whether key was not reported by this gateway yet in its window, and
// remembers it; windows that ended are forgotten.
func (a *alerter) firstTime(key string, until time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if len(a.seen) > 100_000 {
		for k, end := range a.seen {
			if end.Before(now) {
				delete(a.seen, k)
			}
		}
	}
	if end, ok := a.seen[key]; ok && end.After(now) {
		return false
	}
	a.seen[key] = until
	return true
}

// checkAlerts queues an alert for each threshold the request's counters have reached (their
// use before the request, as the check reported it).
func (ex *exchange) checkAlerts(quotas []Quota, statuses []rlsclient.Status, descriptors []rlsclient.Descriptor, now time.Time) {
	if ex.alerts == nil {
		return
	}
	for i, q := range quotas {
		s := statuses[i]
		if q.Alerts == nil || !s.Limit.Matched() || s.Limit.PerWindow == 0 {
			continue
		}
		used := s.Limit.PerWindow - s.Remaining
		if s.OverLimit {
			used = s.Limit.PerWindow
		}
		reset := q.resetIn(now, s.ResetIn)
		for _, at := range q.Alerts.At {
			if used*100 < uint64(at)*s.Limit.PerWindow {
				break
			}
			key := rlsclient.Descriptor{Entries: descriptors[i].Entries}.String() + "|" +
				rlsclient.WindowStart(s.Limit.Unit, time.Now()).Format(time.RFC3339) + "|" + strconv.Itoa(at)
			if !ex.alerts.firstTime(key, now.Add(reset)) {
				continue
			}
			unit, limit, usedAmount, _ := ex.cfg.amounts(q, s.Limit.PerWindow, used, 0)
			ev := AlertEvent{
				Type: "quota.threshold", Quota: q.Name, Model: q.Model, Scope: q.Scope.String(),
				Subject: SubjectName(q, ex.user, ex.team), Threshold: at, Used: usedAmount, Limit: limit, Unit: unit,
				ResetsAt: now.Add(reset).Truncate(time.Second).UTC(), Time: time.Now().UTC(), key: key,
			}
			select {
			case ex.alerts.queue <- ev:
			default:
				ex.metrics.alertsDropped.Inc()
			}
		}
	}
}

// deliverAlerts sends queued alerts until ctx ends: marks each once across gateways, counts it,
// and POSTs it to its quota's webhook.
func (s *Server) deliverAlerts(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-s.alerts.queue:
			s.deliver(ctx, ev)
		}
	}
}

func (s *Server) deliver(ctx context.Context, ev AlertEvent) {
	if marker, ok := s.counters.(AlertMarker); ok {
		first, err := marker.MarkOnce(ctx, ev.key, time.Until(ev.ResetsAt)+time.Minute)
		if err == nil && !first {
			return // another gateway reported it
		}
	}
	s.metrics.alerts.WithLabelValues(ev.Quota, strconv.Itoa(ev.Threshold)).Inc()
	webhook := ""
	for _, qs := range s.cfg.Load().Quotas {
		for _, q := range qs {
			if q.Name == ev.Quota && q.Alerts != nil {
				webhook = q.Alerts.Webhook
			}
		}
	}
	if webhook == "" {
		return
	}
	body, _ := json.Marshal(ev)
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, webhook, bytes.NewReader(body))
	if err != nil {
		s.metrics.webhookFailures.Inc()
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.alerts.client.Do(req)
	if err != nil {
		s.metrics.webhookFailures.Inc()
		s.logger.Warn("quota alert webhook failed", "quota", ev.Quota, "threshold", ev.Threshold, "error", err)
		return
	}
	_ = resp.Body.Close()
	if resp.StatusCode >= 300 {
		s.metrics.webhookFailures.Inc()
		s.logger.Warn("quota alert webhook refused the event", "quota", ev.Quota, "threshold", ev.Threshold, "status", resp.StatusCode)
	}
}
