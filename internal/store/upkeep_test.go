package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestWatchFromCompactedRevision: a watch that resumes from a revision
// compaction dropped ends at once with an error (its caller then reads
// the state afresh), rather than waiting for changes it will never see.
func TestWatchFromCompactedRevision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := storetest.New(t)
	for i := range 5 {
		if err := st.PutNetwork(ctx, api.Network{Name: "n", Bridge: "b", Subnet: "10.0.0.0/24", Gateway: fmt.Sprintf("10.0.0.%d", i+1)}); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := st.Compact(ctx, rev-1); err != nil {
		t.Fatalf("compacting an older revision again: %v, want no error", err)
	}
	err = st.WatchAll(ctx, rev-2, nil, func([]store.Change, int64) error { return nil })
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "compacted") || ctx.Err() != nil {
		t.Fatalf("watch from a compacted revision: %v", err)
	}
}
