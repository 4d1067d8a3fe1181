// Package audit is the record of who did what: each call of the user API
// that changes something becomes an api.AuditRecord (who, from where,
// what, on which object, how it ended, when). A Recorder writes them to
// a Sink (the store) in batches, off the caller's path: a call pays for
// queueing its record, not for an etcd write.
package audit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
)

// Sink stores audit records.
type Sink interface {
	Append(ctx context.Context, recs []api.AuditRecord) error
	// Trim drops the oldest records beyond what is kept.
	Trim(ctx context.Context) error
}

// Tuning of a Recorder.
const (
	// batchDelay is how long a first record waits for others to share
	// its write.
	batchDelay = 100 * time.Millisecond
	maxBatch   = 100   // records per write (etcd takes at most 128 operations in a transaction)
	maxPending = 10000 // records waiting; more are dropped (and logged)
	trimEvery  = 256   // records written between two trims
	writeFor   = 5 * time.Second
	fieldMax   = 512 // bytes of a record's free-text fields
)

// Recorder queues records and writes them in the background.
type Recorder struct {
	sink Sink
	log  *slog.Logger
	// newID names a record by its time (ids sort by time).
	newID func(time.Time) string

	mu      sync.Mutex
	pending []api.AuditRecord
	writing bool          // a writer goroutine runs
	idle    chan struct{} // closed when pending is empty and nothing is written
	written int           // since the last trim
	dropped int
}

// NewRecorder returns a Recorder that writes to sink records named by
// newID.
func NewRecorder(sink Sink, newID func(time.Time) string, log *slog.Logger) *Recorder {
	idle := make(chan struct{})
	close(idle)
	return &Recorder{sink: sink, log: log, newID: newID, idle: idle}
}

// Record queues rec (its id and time filled in); it never blocks on the
// sink. The writer runs only while there is something to write.
func (r *Recorder) Record(rec api.AuditRecord) {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	rec.ID = r.newID(rec.Time)
	Bound(&rec)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) >= maxPending {
		r.dropped++
		if r.dropped == 1 || r.dropped%1000 == 0 {
			r.log.Error("audit records dropped: the store does not keep up", "dropped", r.dropped, "action", rec.Action, "user", rec.User)
		}
		return
	}
	r.pending = append(r.pending, rec)
	if !r.writing {
		r.writing = true
		r.idle = make(chan struct{})
		go r.write()
	}
}

// Flush waits until every record queued so far is written (or dropped
// after failing), or ctx ends.
func (r *Recorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	idle := r.idle
	r.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// write writes the pending records in batches until none are left. It
// waits batchDelay before each batch that is not full, so that records
// arriving one by one share writes.
func (r *Recorder) write() {
	for {
		r.mu.Lock()
		full := len(r.pending) >= maxBatch
		r.mu.Unlock()
		if !full {
			time.Sleep(batchDelay)
		}
		r.mu.Lock()
		n := min(len(r.pending), maxBatch)
		if n == 0 {
			r.writing = false
			close(r.idle)
			r.mu.Unlock()
			return
		}
		batch := r.pending[:n:n]
		r.pending = r.pending[n:]
		r.written += n
		trim := r.written >= trimEvery
		if trim {
			r.written = 0
		}
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), writeFor)
		err := r.sink.Append(ctx, batch)
		if err != nil {
			// One more try; then the records are lost, and said so.
			time.Sleep(100 * time.Millisecond)
			err = r.sink.Append(ctx, batch)
		}
		if err != nil {
			r.log.Error("audit records lost: the store refused them", "records", len(batch), "err", err)
		}
		if trim {
			if err := r.sink.Trim(ctx); err != nil {
				r.log.Warn("could not trim the audit trail", "err", err)
			}
		}
		cancel()
	}
}

// Bound cuts a record's free-text fields to a bounded size, so that the
// number of records kept bounds the trail's size.
func Bound(rec *api.AuditRecord) {
	for _, f := range []*string{&rec.User, &rec.Token, &rec.Host, &rec.Remote, &rec.Action, &rec.Object, &rec.Error} {
		if len(*f) > fieldMax {
			*f = (*f)[:fieldMax] + "..."
		}
	}
}

// Entry is the record of a call in progress: the call's handler may name
// its object when the route's path does not (a create names it in its
// body).
type Entry struct {
	mu  sync.Mutex
	rec api.AuditRecord
}

type ctxKey struct{}

// Begin starts the record of a call by id, from remote, of action on
// object, and returns ctx carrying it for SetObject.
func Begin(ctx context.Context, id authz.Identity, remote, action, object string) (context.Context, *Entry) {
	e := &Entry{rec: api.AuditRecord{User: id.User, Token: id.TokenID, Remote: remote, Action: action, Object: object}}
	return context.WithValue(ctx, ctxKey{}, e), e
}

// SetObject names what the call of ctx acts on (e.g. "vm/web2").
func SetObject(ctx context.Context, object string) {
	if e, ok := ctx.Value(ctxKey{}).(*Entry); ok {
		e.mu.Lock()
		e.rec.Object = object
		e.mu.Unlock()
	}
}

// Finish returns the record of a call that ended with err (nil: ok).
func (e *Entry) Finish(err error) api.AuditRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	rec := e.rec
	rec.Time = time.Now().UTC()
	switch {
	case err == nil:
		rec.Result = api.AuditOK
	case errors.Is(err, api.ErrForbidden):
		rec.Result, rec.Error = api.AuditDenied, err.Error()
	default:
		rec.Result, rec.Error = api.AuditFailed, err.Error()
	}
	return rec
}

// Filter selects records for a listing. Pure.
type Filter struct {
	User string // by this user
	VM   string // on this VM
}

// Match reports whether rec is selected by f.
func (f Filter) Match(rec api.AuditRecord) bool {
	return (f.User == "" || rec.User == f.User) && (f.VM == "" || rec.Object == "vm/"+f.VM)
}
