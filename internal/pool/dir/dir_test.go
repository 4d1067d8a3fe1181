package dir

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
	"github.com/shoalvm/shoal/internal/storage"
)

// TestVolumeLifecycle: a volume is made once (again is a no-op), grows
// but never shrinks, is refused with the free space when it cannot fit,
// and is removed once (again is no error).
func TestVolumeLifecycle(t *testing.T) {
	ctx := context.Background()
	d := Driver{Name: "shared", Dir: t.TempDir()}
	v := pool.Volume{ID: "0a1b2c", SizeBytes: 64 << 20}
	for range 2 {
		if err := d.Create(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	size := func() int64 {
		t.Helper()
		n, err := storage.VirtualSize(ctx, d.Path(v.ID))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := size(); got != 64<<20 {
		t.Fatalf("size %d", got)
	}
	if err := d.Resize(ctx, v.ID, 128<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Resize(ctx, v.ID, 32<<20); err != nil || size() != 128<<20 {
		t.Fatalf("shrink: %v, size %d", err, size())
	}
	err := d.Create(ctx, pool.Volume{ID: "ffff", SizeBytes: 1 << 60})
	if !errors.Is(err, api.ErrCapacity) || !strings.Contains(err.Error(), `pool "shared" has `) || !strings.Contains(err.Error(), "a volume of 1048576T does not fit") {
		t.Errorf("too big: %v", err)
	}
	if _, err := os.Stat(d.Path("ffff")); !os.IsNotExist(err) {
		t.Errorf("refused volume left a file: %v", err)
	}
	c, err := d.Capacity(ctx)
	if err != nil || c.SizeBytes <= 0 || c.FreeBytes <= 0 || c.UsedBytes+c.FreeBytes > c.SizeBytes {
		t.Errorf("capacity %+v, %v", c, err)
	}
	for range 2 {
		if err := d.Delete(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	if id, ok := IsVolume(d.Path(v.ID) + ".tmp"); !ok || id != v.ID {
		t.Errorf("IsVolume: %q, %v", id, ok)
	}
}
