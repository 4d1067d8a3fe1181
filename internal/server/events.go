package server

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// Limits of the event log's API and recorder.
const (
	defaultEventLimit = 100
	maxEventLimit     = 1000
	// scopedEventScan is how many events are read for a caller confined
	// to a project, whose page is what is left of them once others'
	// projects' events are left out.
	scopedEventScan   = 10 * maxEventLimit
	eventWriteTimeout = 3 * time.Second
	trimEvery         = 64 // appends between two trims of the log to store.EventsKept
)

// eventLog records the cluster's events. Recording never fails the
// operation that records: a failed write is logged and dropped.
type eventLog struct {
	st   *store.Store
	log  *slog.Logger
	keep int
	n    atomic.Int64 // appends by this process, to trim now and then
}

func newEventLog(st *store.Store, log *slog.Logger) *eventLog {
	return &eventLog{st: st, log: log, keep: store.EventsKept}
}

// record appends e (its id and time filled in). It outlives the caller's
// cancellation (a request that ends still gets its event), within a few
// seconds.
func (l *eventLog) record(ctx context.Context, e api.Event) {
	if l == nil {
		return
	}
	if e.Severity == "" {
		e.Severity = api.SeverityInfo
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventWriteTimeout)
	defer cancel()
	if _, err := l.st.AppendEvent(ctx, e); err != nil {
		l.log.Warn("could not record an event", "kind", e.Kind, "vm", e.VM, "host", e.Host, "message", e.Message, "err", err)
		return
	}
	if l.n.Add(1)%trimEvery == 1 {
		if _, err := l.st.TrimEvents(ctx, l.keep); err != nil {
			l.log.Warn("could not trim the event log", "err", err)
		}
	}
}

// listEvents answers GET /v1/events?vm=&host=&since=&after=&limit=,
// oldest first. since is a time (RFC 3339) or a duration back from now;
// limit keeps the newest (or, with after, the oldest newer than after).
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	now := time.Now()
	f, err := eventFilter(r, now)
	if err != nil {
		return err
	}
	limit := f.Limit
	if caller(r.Context()).Project != "" {
		// Others' events are left out after reading: read more, so that
		// the page is filled with the caller's project's.
		f.Limit = scopedEventScan
	}
	evs, err := s.st.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	asked, err := s.lifecycleEvents(r.Context(), f, now)
	if err != nil {
		return err
	}
	out := mergeEvents(evs, asked, f.After != "", f.Limit)
	if out, err = s.visibleEvents(r.Context(), out); err != nil {
		return err
	}
	out = mergeEvents(out, nil, f.After != "", limit)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// visibleEvents leaves out, for a caller confined to a project, the
// events of VMs that are not its project's now (those of VMs deleted
// since included: their project is no longer known).
func (s *Server) visibleEvents(ctx context.Context, evs []api.Event) ([]api.Event, error) {
	id := caller(ctx)
	if id.Project == "" {
		return evs, nil
	}
	specs, _, err := s.st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	mine := map[string]bool{}
	for _, sp := range specs {
		mine[sp.Name] = id.Sees(sp.Project)
	}
	out := evs[:0]
	for _, ev := range evs {
		if ev.VM == "" || mine[ev.VM] {
			out = append(out, ev)
		}
	}
	return out, nil
}

// eventFilter reads an events query. Pure but for now.
func eventFilter(r *http.Request, now time.Time) (store.EventFilter, error) {
	q := r.URL.Query()
	f := store.EventFilter{VM: q.Get("vm"), Host: q.Get("host"), After: q.Get("after")}
	var err error
	f.Since, f.Limit, err = sinceLimit(q, now, defaultEventLimit, maxEventLimit)
	return f, err
}

// sinceLimit reads the since and limit of a listing's query: since is a
// time (RFC 3339) or a duration back from now. Pure but for now.
func sinceLimit(q url.Values, now time.Time, limit, most int) (time.Time, int, error) {
	var since time.Time
	if v := q.Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			since = t
		} else {
			return since, 0, api.Errorf(api.ErrInvalid, "since %q is neither a duration such as 10m nor a time such as 2025-01-02T15:04:05Z", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > most {
			return since, 0, api.Errorf(api.ErrInvalid, "limit %q is out of range: use 1 to %d", v, most)
		}
		limit = n
	}
	return since, limit, nil
}
