package node

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestEnsureToken: the first start makes user admin and one token; later
// starts keep the CLI settings' token while it is valid, and make a new
// one only when it is not. A token from before users keeps working.
func TestEnsureToken(t *testing.T) {
	ctx := context.Background()
	st := storetest.New(t)
	dir := t.TempDir()
	o := Options{DataDir: dir, ConfigPath: filepath.Join(dir, "config.json")}
	o.defaults()
	log := slog.New(slog.DiscardHandler)
	count := func() int {
		tokens, err := st.ListTokens(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(tokens)
	}

	first, err := ensureToken(ctx, log, st, o)
	if err != nil {
		t.Fatal(err)
	}
	if u, err := st.GetUser(ctx, "admin"); err != nil || u.Role != api.RoleAdmin {
		t.Fatalf("user admin after the first start: %+v, %v", u, err)
	}
	if cfg, err := client.LoadConfig(o.ConfigPath); err != nil || cfg.Token != first {
		t.Fatalf("CLI settings %+v, %v; want the token", cfg, err)
	}
	for range 3 {
		again, err := ensureToken(ctx, log, st, o)
		if err != nil || again != first {
			t.Fatalf("a later start changed the token: %v", err)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("%d tokens after four starts, want 1", n)
	}

	// Revoked: the next start makes a new one.
	if _, err := st.RevokeToken(ctx, store.TokenID(first), func(store.TokenInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	second, err := ensureToken(ctx, log, st, o)
	if err != nil || second == first || count() != 1 {
		t.Fatalf("after revoking: %v, %d tokens", err, count())
	}

	// An upgrade from before users: the settings' token has no user and
	// there is no user yet. It stays, and user admin is made.
	st2 := storetest.New(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st2.PutToken(ctx, "shoal_old", store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}))
	must(client.SaveConfig(o.ConfigPath, client.Config{Server: "https://127.0.0.1:7443", Token: "shoal_old"}))
	kept, err := ensureToken(ctx, log, st2, o)
	if err != nil || kept != "shoal_old" {
		t.Fatalf("an old token was replaced: %q, %v", kept, err)
	}
	if _, err := st2.GetUser(ctx, "admin"); err != nil {
		t.Errorf("no user admin after an upgrade: %v", err)
	}
}
