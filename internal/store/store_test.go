package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	put := func(secret, kind string, ttl time.Duration) {
		t.Helper()
		if err := s.PutJoinToken(ctx, secret, store.JoinToken{Kind: kind, Expires: now.Add(ttl), CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	put("good", store.JoinHost, time.Hour)
	put("stale", store.JoinHost, 10*time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	if err := s.JoinHost(ctx, "stale", "h1"); !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	if err := s.JoinHost(ctx, "good", "h1"); err != nil {
		t.Fatalf("good token: %v", err)
	}
	if h, err := s.GetHost(ctx, "h1"); err != nil || h.State != api.HostDown {
		t.Fatalf("the join reserved no host record: %+v %v", h, err)
	}
	if err := s.JoinHost(ctx, "good", "h2"); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("second use: %v", err)
	}
	if err := s.JoinHost(ctx, "made-up", "h2"); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("unknown token: %v", err)
	}
	if err := s.PutJoinToken(ctx, "odd", store.JoinToken{Kind: "admin", Expires: now.Add(time.Hour)}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("token of an unknown kind: %v", err)
	}
}

// TestJoinTokenKinds checks that each join takes only its kind of token,
// and that a token of the wrong kind is refused, saying which to make,
// and kept.
func TestJoinTokenKinds(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	now := time.Now()
	for secret, kind := range map[string]string{"h": store.JoinHost, "s": store.JoinServer} {
		if err := s.PutJoinToken(ctx, secret, store.JoinToken{Kind: kind, Expires: now.Add(time.Hour), CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	err := s.JoinServer(ctx, "h", "s2")
	if !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "shoal cluster token --server") {
		t.Errorf("a host token joined a server: %v", err)
	}
	if err := s.JoinHost(ctx, "s", "h1"); !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "'shoal cluster token'") {
		t.Errorf("a server token joined a host: %v", err)
	}
	if _, err := s.GetHost(ctx, "h1"); !api.IsNotFound(err) {
		t.Errorf("a refused join reserved the name: %v", err)
	}
	// Both survived the refusals.
	if err := s.JoinHost(ctx, "h", "h1"); err != nil {
		t.Errorf("host token after a refusal: %v", err)
	}
	if err := s.JoinServer(ctx, "s", "s2"); err != nil {
		t.Errorf("server token after a refusal: %v", err)
	}
}

// TestJoinRace checks that of concurrent joins under one name, each with
// a good token, exactly one wins; the others get a conflict and keep
// their tokens.
func TestJoinRace(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	now := time.Now()
	for _, c := range []struct {
		kind string
		join func(secret string) error
	}{
		{store.JoinHost, func(secret string) error { return s.JoinHost(ctx, secret, "h1") }},
		{store.JoinServer, func(secret string) error { return s.JoinServer(ctx, secret, "s2") }},
	} {
		const n = 20
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			secret := fmt.Sprintf("%s-%d", c.kind, i)
			if err := s.PutJoinToken(ctx, secret, store.JoinToken{Kind: c.kind, Expires: now.Add(time.Hour), CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = c.join(secret)
			}()
		}
		wg.Wait()
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, api.ErrConflict):
				t.Errorf("%s join %d: %v; want a conflict", c.kind, i, err)
			default:
				// The loser's token is still good.
				if _, err := s.CheckJoinToken(ctx, fmt.Sprintf("%s-%d", c.kind, i), c.kind); err != nil {
					t.Errorf("%s join %d lost and used up its token: %v", c.kind, i, err)
				}
			}
		}
		if wins != 1 {
			t.Errorf("%d of %d concurrent %s joins under one name won; want 1", wins, n, c.kind)
		}
	}
	if hosts, err := s.ListHosts(ctx); err != nil || len(hosts) != 1 {
		t.Errorf("hosts after the race: %+v %v", hosts, err)
	}
}
