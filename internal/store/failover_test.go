package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestFailOverNeedsTheHostStillGone: the fencing condition. A VM moves to
// another host only while its host's lease is gone and its spec unchanged.
func TestFailOverNeedsTheHostStillGone(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	sp := api.VMSpec{Name: "db1", ID: "id1", Host: "host1", HA: true, Power: api.PowerRunning, Network: "default"}
	if _, err := s.CreateVM(ctx, sp); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkAlive(ctx, "host1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cur, err := s.GetVM(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.FailOver(ctx, cur, "host2", "host1", ""); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("failover while host1 is alive: %v, want a conflict", err)
	}
	if _, err := s.FailOver(ctx, cur, "host2", "host9", ""); err != nil {
		t.Fatalf("failover from a host with no lease: %v", err)
	}
	got, err := s.GetVM(ctx, "db1")
	if err != nil || got.Host != "host2" {
		t.Fatalf("after failover: %+v %v, want host2", got, err)
	}
	st, err := s.GetStatus(ctx, "id1")
	if err != nil || st.Host != "host2" || st.State != api.StateStarting {
		t.Fatalf("status after failover: %+v %v", st, err)
	}
	// The spec read before is stale now: a second failover from it fails.
	if _, err := s.FailOver(ctx, cur, "host3", "host9", ""); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("failover from a stale spec: %v, want a conflict", err)
	}
}

// TestClaimStart: a host may start a VM only while it owns it and its
// lease holds.
func TestClaimStart(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	sp := api.VMSpec{Name: "db1", ID: "id1", Host: "host1", HA: true, Power: api.PowerRunning, Network: "default"}
	if _, err := s.CreateVM(ctx, sp); err != nil {
		t.Fatal(err)
	}
	if err := s.ClaimStart(ctx, "host1", "db1", "id1"); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("claim without a lease: %v, want a conflict", err)
	}
	if _, err := s.MarkAlive(ctx, "host1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.ClaimStart(ctx, "host1", "db1", "id1"); err != nil {
		t.Fatalf("claim by the owner with a lease: %v", err)
	}
	for _, tc := range []struct{ host, id string }{{"host2", "id1"}, {"host1", "other"}} {
		if err := s.ClaimStart(ctx, tc.host, "db1", tc.id); !errors.Is(err, api.ErrConflict) {
			t.Errorf("claim by %s of id %s: %v, want a conflict", tc.host, tc.id, err)
		}
	}
}

// TestFailOverEndsTheMigrationInFlight: a VM taken away while it
// migrates has its migration marked failed and superseded, whichever host
// it goes to (even the migration's target).
func TestFailOverEndsTheMigrationInFlight(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	sp := api.VMSpec{Name: "db1", ID: "id1", Host: "host1", HA: true, Power: api.PowerRunning, Network: "default"}
	if _, err := s.CreateVM(ctx, sp); err != nil {
		t.Fatal(err)
	}
	cur, err := s.GetVM(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	cur, err = s.BeginMigration(ctx, cur, api.MigrationRecord{ID: "m1", VM: "db1", From: "host1", To: "host2", Result: api.MigrationRunning},
		api.Migration{ID: "m1", Source: "host1", Target: "host2"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.FailOver(ctx, cur, "host2", "host1", "host host1 failed")
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != "host2" || got.Migration != nil {
		t.Fatalf("after failover: host %s, migration %+v", got.Host, got.Migration)
	}
	rec, err := s.ActiveMigration(ctx, "id1")
	if err != nil || !rec.Superseded || rec.Result != api.MigrationFailed || rec.Error == "" {
		t.Fatalf("migration record after failover: %+v %v", rec, err)
	}
}
