package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/store"
)

// TestAuditTrail is the check: for a create then a delete by
// alice, the audit trail shows both with her name and the result; a
// refused call is there too, reads are not; the lifecycle actions are
// events with their requestor.
func TestAuditTrail(t *testing.T) {
	h, tokens := newAuthHarness(t)
	ctx := context.Background()
	aliceTok := h.addUser("alice", api.RoleOperator, "")
	alice := h.clientFor(aliceTok)
	if _, err := alice.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Image: "tiny"}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.ListVMs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alice.DeleteVM(ctx, "web1", false); err != nil {
		t.Fatal(err)
	}
	_, err := h.clientFor(tokens["viewer"]).VMAction(ctx, "web1", "stop", false)
	wantRefused(t, "viewer's stop", err, api.ErrForbidden)

	admin := h.clientFor(tokens["admin"])
	recs, err := admin.Audit(ctx, client.AuditQuery{User: "alice", Since: "1h"})
	must(t, err)
	var got []string
	for _, r := range recs {
		got = append(got, r.User+" "+r.Action+" "+r.Object+" "+r.Result)
		if r.Token != store.TokenID(aliceTok) || r.Remote == "" || r.Time.IsZero() || time.Since(r.Time) > time.Minute {
			t.Errorf("record %+v lacks who, from where or when", r)
		}
	}
	want := []string{"alice vm.create vm/web1 ok", "alice vm.delete vm/web1 ok"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("alice's audit trail: %q, want %q", got, want)
	}
	recs, err = admin.Audit(ctx, client.AuditQuery{VM: "web1"})
	must(t, err)
	if n := len(recs); n != 3 || recs[2].User != "bob" || recs[2].Action != "vm.stop" || recs[2].Result != api.AuditDenied ||
		!strings.Contains(recs[2].Error, "user bob (viewer) may not stop VMs") {
		t.Errorf("web1's audit trail: %+v", recs)
	}
	_, err = alice.Audit(ctx, client.AuditQuery{})
	wantRefused(t, "an operator reads the audit trail", err, api.ErrForbidden, "user alice (operator) may not read the audit trail")
	h.callToken(tokens["admin"], "GET", "/v1/audit?since=yesterday", nil).wantError(t, http.StatusBadRequest, "invalid", "since")

	// The lifecycle events name who asked.
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := admin.Events(ctx, client.EventQuery{VM: "web1"})
		must(t, err)
		var kinds []string
		for _, e := range evs {
			if e.Requestor == "alice" {
				kinds = append(kinds, e.Kind+": "+e.Message)
			}
		}
		if strings.Join(kinds, "; ") == "vm.created: vm web1 created by alice; vm.deleted: vm web1 deleted by alice" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("web1's events by alice: %q", kinds)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAuditTrimmedAndBatched: audit records are under a prefix that the
// placement cache does not load, they are trimmed, and a burst is written
// whole.
func TestAuditTrimmedAndBatched(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	var recs []api.AuditRecord
	for i := range 5 {
		now := time.Now().Add(time.Duration(i) * time.Millisecond)
		recs = append(recs, api.AuditRecord{ID: store.NewEventID(now), Time: now, User: "alice", Action: "vm.start", Object: "vm/web1", Result: api.AuditOK})
	}
	must(t, h.st.AppendAudit(ctx, recs))
	for _, p := range loadPrefixes {
		_, err := h.st.Range(ctx, p, 0, func(c store.Change) {
			if strings.Contains(c.Key, "audit") {
				t.Errorf("the placement cache loads audit record %s", c.Key)
			}
		})
		must(t, err)
	}
	n, err := h.st.TrimAudit(ctx, 2)
	if err != nil || n != 3 {
		t.Fatalf("trim: %d, %v", n, err)
	}
	left, err := h.st.ListAudit(ctx, store.AuditFilter{})
	must(t, err)
	if len(left) != 2 || left[0].ID != recs[3].ID || left[1].ID != recs[4].ID {
		t.Errorf("after trimming to 2: %+v", left)
	}

	// A burst of records, more than etcd takes in one transaction, is
	// written whole.
	rec := audit.NewRecorder(auditSink{h.st}, store.NewEventID, slog.New(slog.DiscardHandler))
	for i := range 1000 {
		rec.Record(api.AuditRecord{User: "burst", Action: "vm.start", Object: fmt.Sprintf("vm/v%d", i), Result: api.AuditOK})
	}
	must(t, rec.Flush(ctx))
	burst, err := h.st.ListAudit(ctx, store.AuditFilter{Match: audit.Filter{User: "burst"}.Match})
	must(t, err)
	if len(burst) != 1000 || burst[999].Object != "vm/v999" {
		t.Errorf("%d of a burst of 1000 records written", len(burst))
	}
}

func TestMergeEvents(t *testing.T) {
	ev := func(ids ...string) []api.Event {
		var out []api.Event
		for _, id := range ids {
			out = append(out, api.Event{ID: id})
		}
		return out
	}
	ids := func(evs []api.Event) string {
		var b []string
		for _, e := range evs {
			b = append(b, e.ID)
		}
		return strings.Join(b, " ")
	}
	tests := []struct {
		a, b    []api.Event
		forward bool
		limit   int
		want    string
	}{
		{ev("1", "4", "5"), ev("2", "3", "6"), false, 0, "1 2 3 4 5 6"},
		{ev("1", "4", "5"), ev("2", "3", "6"), false, 2, "5 6"},
		{ev("1", "4", "5"), ev("2", "3", "6"), true, 2, "1 2"},
		{nil, ev("2", "3"), false, 5, "2 3"},
		{ev("1"), nil, true, 1, "1"},
		{nil, nil, false, 3, ""},
	}
	for _, tc := range tests {
		if got := ids(mergeEvents(tc.a, tc.b, tc.forward, tc.limit)); got != tc.want {
			t.Errorf("merge %s + %s (forward %v, limit %d) = %q, want %q", ids(tc.a), ids(tc.b), tc.forward, tc.limit, got, tc.want)
		}
	}
}
