package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
)

// memSink keeps what it is given, and counts writes.
type memSink struct {
	mu     sync.Mutex
	recs   []api.AuditRecord
	writes int
	fail   int // fail this many writes first
	trims  int
}

func (m *memSink) Append(_ context.Context, recs []api.AuditRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.writes++
	if m.fail > 0 {
		m.fail--
		return errors.New("etcd is away")
	}
	m.recs = append(m.recs, recs...)
	return nil
}

func (m *memSink) Trim(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trims++
	return nil
}

func seqID() func(time.Time) string {
	var mu sync.Mutex
	n := 0
	return func(time.Time) string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("%06d", n)
	}
}

func TestRecorderBatchesAndFlushes(t *testing.T) {
	sink := &memSink{}
	r := NewRecorder(sink, seqID(), slog.New(slog.DiscardHandler))
	for i := range 300 {
		r.Record(api.AuditRecord{User: "alice", Action: "vm.create", Object: fmt.Sprintf("vm/v%d", i), Result: api.AuditOK})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.recs) != 300 {
		t.Fatalf("%d records written, want 300", len(sink.recs))
	}
	for i, rec := range sink.recs {
		if rec.Object != fmt.Sprintf("vm/v%d", i) || rec.ID == "" || rec.Time.IsZero() {
			t.Fatalf("record %d: %+v", i, rec)
		}
	}
	if sink.writes > 5 {
		t.Errorf("%d writes for 300 records: not batched", sink.writes)
	}
	if sink.trims != 1 {
		t.Errorf("%d trims after 300 records, want 1", sink.trims)
	}
	// Idle again: Flush returns at once.
	if err := r.Flush(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestRecorderRetriesOnce(t *testing.T) {
	sink := &memSink{fail: 1}
	r := NewRecorder(sink, seqID(), slog.New(slog.DiscardHandler))
	r.Record(api.AuditRecord{User: "alice", Action: "vm.delete"})
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(sink.recs) != 1 || sink.writes != 2 {
		t.Errorf("after one failed write: %d records, %d writes", len(sink.recs), sink.writes)
	}
}

func TestEntry(t *testing.T) {
	id := authz.Identity{User: "alice", Role: authz.Operator, TokenID: "0123456789ab"}
	ctx, e := Begin(context.Background(), id, "127.0.0.1:5555", "vm.create", "vm")
	SetObject(ctx, "vm/web1")
	SetObject(context.Background(), "vm/elsewhere") // no entry: nothing happens
	ok := e.Finish(nil)
	if ok.User != "alice" || ok.Token != "0123456789ab" || ok.Remote != "127.0.0.1:5555" || ok.Action != "vm.create" ||
		ok.Object != "vm/web1" || ok.Result != api.AuditOK || ok.Error != "" || ok.Time.IsZero() {
		t.Errorf("record of a call that worked: %+v", ok)
	}
	denied := e.Finish(api.Errorf(api.ErrForbidden, "user alice (operator) may not do that"))
	if denied.Result != api.AuditDenied || !strings.Contains(denied.Error, "may not") {
		t.Errorf("record of a refused call: %+v", denied)
	}
	if failed := e.Finish(api.Errorf(api.ErrConflict, "exists")); failed.Result != api.AuditFailed || failed.Error != "exists" {
		t.Errorf("record of a failed call: %+v", failed)
	}
}

func TestBoundAndFilter(t *testing.T) {
	rec := api.AuditRecord{User: "alice", Object: "vm/web1", Error: strings.Repeat("x", 5000)}
	Bound(&rec)
	if len(rec.Error) > fieldMax+3 {
		t.Errorf("error of %d bytes kept", len(rec.Error))
	}
	tests := []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{User: "alice"}, true},
		{Filter{User: "bob"}, false},
		{Filter{VM: "web1"}, true},
		{Filter{VM: "web"}, false},
		{Filter{User: "alice", VM: "web1"}, true},
	}
	for _, tc := range tests {
		if got := tc.f.Match(rec); got != tc.want {
			t.Errorf("%+v matches: %v, want %v", tc.f, got, tc.want)
		}
	}
}
