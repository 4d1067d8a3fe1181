package server

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/store"
)

// Limits of GET /v1/audit.
const (
	defaultAuditLimit = 100
	maxAuditLimit     = 10000
)

// listAudit answers GET /v1/audit?since=&user=&vm=&limit=, oldest first:
// the newest limit records that match. What this server recorded until
// now is written first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	since, limit, err := sinceLimit(q, time.Now(), defaultAuditLimit, maxAuditLimit)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	_ = s.audit.Flush(ctx)
	cancel()
	f := audit.Filter{User: q.Get("user"), VM: q.Get("vm")}
	recs, err := s.st.ListAudit(r.Context(), store.AuditFilter{Since: since, Limit: limit, Match: f.Match})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, recs)
	return nil
}

// lifecycle are the audited actions that also make an event (as
// Proxmox's task log and Incus's lifecycle events do): its kind and the
// words of its message.
var lifecycle = map[string]struct{ kind, words string }{
	"vm.create":  {api.EventVMCreated, "created"},
	"vm.start":   {api.EventVMStarted, "started"},
	"vm.stop":    {api.EventVMStopped, "stopped"},
	"vm.restart": {api.EventVMPower, "restarted"},
	"vm.pause":   {api.EventVMPower, "paused"},
	"vm.resume":  {api.EventVMPower, "resumed"},
	"vm.set":     {api.EventVMChanged, "changed"},
	"vm.delete":  {api.EventVMDeleted, "deleted"},
}

// lifecycleEvent returns the event of a VM's lifecycle action that
// succeeded, with its requestor; its id is the record's. Pure.
func lifecycleEvent(rec api.AuditRecord) (api.Event, bool) {
	l, ok := lifecycle[rec.Action]
	if !ok || rec.Result != api.AuditOK {
		return api.Event{}, false
	}
	vm := strings.TrimPrefix(rec.Object, "vm/")
	return api.Event{ID: rec.ID, Time: rec.Time, Kind: l.kind, Severity: api.SeverityInfo, VM: vm, Requestor: rec.User,
		Message: "vm " + vm + " " + l.words + " by " + rec.User}, true
}

// auditSink writes the audit trail to the store.
type auditSink struct{ st *store.Store }

func (a auditSink) Append(ctx context.Context, recs []api.AuditRecord) error {
	return a.st.AppendAudit(ctx, recs)
}

// Trim keeps the last store.AuditKept records.
func (a auditSink) Trim(ctx context.Context) error {
	_, err := a.st.TrimAudit(ctx, store.AuditKept)
	return err
}

// lifecycleEvents returns the events of the VM lifecycle actions users
// asked for that f selects (oldest first, as store.ListEvents): they are
// not written twice, but read from the audit trail, within the events'
// own retention.
func (s *Server) lifecycleEvents(ctx context.Context, f store.EventFilter, now time.Time) ([]api.Event, error) {
	if f.Host != "" { // they name no host
		return nil, nil
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = s.audit.Flush(fctx) // what was asked until now is there
	cancel()
	recs, err := s.st.ListAudit(ctx, store.AuditFilter{Since: maxTime(f.Since, now.Add(-store.EventTTL)), After: f.After, Limit: f.Limit,
		Match: func(rec api.AuditRecord) bool {
			_, ok := lifecycleEvent(rec)
			return ok && (f.VM == "" || rec.Object == "vm/"+f.VM)
		}})
	if err != nil {
		return nil, err
	}
	out := make([]api.Event, 0, len(recs))
	for _, rec := range recs {
		e, _ := lifecycleEvent(rec)
		out = append(out, e)
	}
	return out, nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// mergeEvents merges two lists of events sorted by id into one, and keeps
// limit of them (0: all): the newest, or with forward the oldest. Pure.
func mergeEvents(a, b []api.Event, forward bool, limit int) []api.Event {
	out := make([]api.Event, 0, len(a)+len(b))
	for len(a) > 0 || len(b) > 0 {
		if len(b) == 0 || (len(a) > 0 && a[0].ID < b[0].ID) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	if limit > 0 && len(out) > limit {
		if forward {
			return out[:limit]
		}
		return out[len(out)-limit:]
	}
	return out
}
