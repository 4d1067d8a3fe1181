package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestVMUIDs: a VM's QEMU user id is unique in the cluster: a create
// that asks for one already taken is refused and writes nothing; a
// VM's deletion frees its id; a VM made without one gets a free one
// when its start is claimed.
func TestVMUIDs(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	uid := store.NewUID()
	a := api.VMSpec{Name: "a", ID: "ida", Host: "host1", Network: "default", IP: "10.0.0.2", MAC: "52:54:00:00:00:02", UID: uid}
	if _, err := s.CreateVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	b := api.VMSpec{Name: "b", ID: "idb", Host: "host1", Network: "default", IP: "10.0.0.3", MAC: "52:54:00:00:00:03", UID: uid}
	if _, err := s.CreateVM(ctx, b); !store.IsAddressTaken(err) {
		t.Fatalf("create with a taken uid: %v, want it refused as taken", err)
	}
	if _, err := s.GetVM(ctx, "b"); err == nil {
		t.Fatal("the refused create wrote vm b")
	}
	cur, err := s.GetVM(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveVM(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVM(ctx, b); err != nil {
		t.Fatalf("create with the uid of a deleted VM: %v", err)
	}

	old := api.VMSpec{Name: "old", ID: "idold", Host: "host1", Network: "default", IP: "10.0.0.4", MAC: "52:54:00:00:00:04"}
	if _, err := s.CreateVM(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkAlive(ctx, "host1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.ClaimStart(ctx, "host1", "old", "idold"); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if got.UID < api.VMUIDMin || got.UID >= api.VMUIDMin+api.VMUIDCount || got.UID == uid {
		t.Fatalf("after its start was claimed, the old VM has uid %d", got.UID)
	}
	if err := s.ClaimStart(ctx, "host1", "old", "idold"); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetVM(ctx, "old"); again.UID != got.UID {
		t.Fatalf("a second claim changed the uid from %d to %d", got.UID, again.UID)
	}
}
