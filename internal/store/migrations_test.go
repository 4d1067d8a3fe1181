package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestBeginMigration: the record and the spec of a migration are written
// together, only over the spec as read and only when no migration is in
// flight; a refused begin writes neither.
func TestBeginMigration(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	if _, err := s.CreateVM(ctx, api.VMSpec{Name: "web1", ID: "id1", Host: "host1", Power: api.PowerRunning, Network: "default"}); err != nil {
		t.Fatal(err)
	}
	sp, err := s.GetVM(ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	rec := api.MigrationRecord{ID: "m1", VM: "web1", From: "host1", To: "host2", Result: api.MigrationRunning}
	mig := api.Migration{ID: "m1", Source: "host1", Target: "host2"}

	// Someone changed the spec since it was read: refused, nothing written.
	if _, err := s.UpdateVM(ctx, "web1", func(v *api.VMSpec) error { v.HA = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BeginMigration(ctx, sp, rec, mig); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("begin over a stale spec: %v, want a conflict", err)
	}
	if _, err := s.ActiveMigration(ctx, "id1"); !api.IsNotFound(err) {
		t.Fatalf("a refused begin left a record: %v", err)
	}

	sp, _ = s.GetVM(ctx, "web1")
	got, err := s.BeginMigration(ctx, sp, rec, mig)
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := s.GetVM(ctx, "web1")
	if cur.Migration == nil || cur.Migration.ID != "m1" || !cur.HA || got.Rev != cur.Rev {
		t.Fatalf("spec after begin: %+v (returned rev %d)", cur, got.Rev)
	}
	if r, err := s.ActiveMigration(ctx, "id1"); err != nil || r.ID != "m1" {
		t.Fatalf("record after begin: %+v %v", r, err)
	}

	// A second migration while one is in flight: refused.
	if _, err := s.BeginMigration(ctx, cur, api.MigrationRecord{ID: "m2"}, api.Migration{ID: "m2"}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("second begin: %v, want a conflict", err)
	}
	if r, _ := s.ActiveMigration(ctx, "id1"); r.ID != "m1" {
		t.Fatalf("the record in flight became %q", r.ID)
	}
}
