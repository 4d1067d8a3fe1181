package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

func TestVMLifecycleRecords(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	v := api.VMSpec{Name: "web1", ID: "a1", Network: "default", IP: "10.0.0.10", MAC: "52:54:00:00:00:01", Power: api.PowerStopped}
	if _, err := s.CreateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	dup := v
	dup.ID, dup.IP, dup.MAC = "a2", "10.0.0.11", "52:54:00:00:00:02"
	if _, err := s.CreateVM(ctx, dup); !errors.Is(err, api.ErrConflict) || err.Error() != `vm "web1" already exists` {
		t.Fatalf("duplicate name: got %v", err)
	}
	other := api.VMSpec{Name: "web2", ID: "b1", Network: "default", IP: "10.0.0.10", MAC: "52:54:00:00:00:03"}
	if _, err := s.CreateVM(ctx, other); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("taken address: got %v", err)
	}
	if _, err := s.GetVM(ctx, "web2"); !api.IsNotFound(err) {
		t.Fatalf("failed create left a record: %v", err)
	}
	sameMAC := api.VMSpec{Name: "web4", ID: "d1", Network: "default", IP: "10.0.0.13", MAC: v.MAC}
	if _, err := s.CreateVM(ctx, sameMAC); !store.IsAddressTaken(err) {
		t.Fatalf("duplicate MAC: got %v", err)
	}
	before, _ := s.GetVM(ctx, "web1")
	got, err := s.UpdateVM(ctx, "web1", func(v *api.VMSpec) error { v.Power = api.PowerRunning; return nil })
	if err != nil || got.Power != api.PowerRunning || got.Rev <= before.Rev || before.Rev == 0 {
		t.Fatalf("update: %v %+v", err, got)
	}
	if err := s.PutStatus(ctx, api.VMStatus{ID: "a1", State: api.StateRunning}); err != nil {
		t.Fatal(err)
	}
	ips, _ := s.UsedIPs(ctx, "default")
	if len(ips) != 1 || ips[0] != "10.0.0.10" {
		t.Fatalf("used ips %v", ips)
	}
	if err := s.RemoveVM(ctx, api.VMSpec{Name: "web1", ID: "zz"}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("remove with wrong id: %v", err)
	}
	if err := s.RemoveVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetStatus(ctx, "a1"); !api.IsNotFound(err) {
		t.Fatalf("status left behind: %v", err)
	}
	if _, err := s.CreateVM(ctx, api.VMSpec{Name: "web3", ID: "c1", Network: "default", IP: "10.0.0.12", MAC: v.MAC}); err != nil {
		t.Fatalf("MAC of a removed VM not reusable: %v", err)
	}
	if ips, _ := s.UsedIPs(ctx, "default"); len(ips) != 1 || ips[0] != "10.0.0.12" {
		t.Fatalf("address left allocated: %v", ips)
	}
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	if err := s.PutToken(ctx, "secret", store.TokenInfo{Name: "admin"}); err != nil {
		t.Fatal(err)
	}
	if info, err := s.CheckToken(ctx, "secret"); err != nil || info.Name != "admin" {
		t.Fatalf("good token: %v %+v", err, info)
	}
	for _, tok := range []string{"", "wrong"} {
		if _, err := s.CheckToken(ctx, tok); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("token %q: got %v", tok, err)
		}
	}
}

func TestJoinTokens(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	now := time.Now()
	if err := s.PutJoinToken(ctx, "good", store.JoinToken{Expires: now.Add(time.Hour), CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJoinToken(ctx, "stale", store.JoinToken{Expires: now.Add(10 * time.Millisecond), CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.UseJoinToken(ctx, "stale"); !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	if err := s.UseJoinToken(ctx, "good"); err != nil {
		t.Fatalf("good token: %v", err)
	}
	if err := s.UseJoinToken(ctx, "good"); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("second use: %v", err)
	}
	if err := s.UseJoinToken(ctx, "made-up"); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("unknown token: %v", err)
	}
}
