package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestOnePoolPerStorageServer: pools made at once through two stores,
// as two servers would, each naming the same storage server: one is
// made, the others are refused naming it; a pool of another server and
// an adopted target are not held back.
func TestOnePoolPerStorageServer(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	stores := []*store.Store{s, store.New(s.Client())}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- stores[i%2].CreatePoolConfig(ctx, api.PoolConfig{Name: fmt.Sprintf("san%d", i), Type: api.PoolISCSI, Server: "nas"})
		}()
	}
	made := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			made++
		case !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "storage server nas serves pool"):
			t.Errorf("a refusal: %v", err)
		}
	}
	cs, err := s.ListPoolConfigs(ctx)
	if err != nil || made != 1 || len(cs) != 1 {
		t.Fatalf("%d made, %d recorded (%v)", made, len(cs), err)
	}
	if err := s.CreatePoolConfig(ctx, api.PoolConfig{Name: cs[0].Name, Type: api.PoolISCSI, Server: "nas"}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("the same pool again: %v", err)
	}
	for _, c := range []api.PoolConfig{
		{Name: "other", Type: api.PoolISCSI, Server: "nas2"},
		{Name: "ext", Type: api.PoolISCSI, Portal: "192.0.2.1:3260", Target: "iqn.2003-01.org.example:d"},
	} {
		if err := s.CreatePoolConfig(ctx, c); err != nil {
			t.Errorf("pool %s: %v", c.Name, err)
		}
	}
}
