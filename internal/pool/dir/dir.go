// Package dir is the pool driver of a directory: a host's own (local)
// or one every host mounts (shared, standing in for NFS). A volume is a
// qcow2 file named from its id; one made from an image is a qcow2
// overlay on the image's base, which the caller has put where every host
// of the pool finds it.
package dir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
	"github.com/shoalvm/shoal/internal/storage"
)

// Driver is a directory pool.
type Driver struct {
	Name string // the pool's name, for messages
	Dir  string
}

var _ pool.Driver = Driver{}

// Path is where the volume of id lives.
func (d Driver) Path(id string) string { return filepath.Join(d.Dir, "vol-"+id+".qcow2") }

// Create makes the volume's file, refusing a size the pool has not free.
func (d Driver) Create(ctx context.Context, v pool.Volume) error {
	p := d.Path(v.ID)
	if _, err := os.Stat(p); err == nil {
		return nil // made before a crash, or by another host of a shared pool
	}
	c, err := d.Capacity(ctx)
	if err != nil {
		return err
	}
	if v.SizeBytes > c.FreeBytes {
		return api.Errorf(api.ErrCapacity, "pool %q has %s free: a volume of %s does not fit", d.Name, api.FormatSize(c.FreeBytes), api.FormatSize(v.SizeBytes))
	}
	create := storage.CreateBlank
	if v.Base != "" {
		create = func(ctx context.Context, dst string, size int64) error {
			return storage.CreateOverlay(ctx, v.Base, dst, size)
		}
	}
	if err := create(ctx, p, v.SizeBytes); err != nil {
		return err
	}
	// Only the QEMU user of the VM it is attached to may read it (see
	// the agent's giveFiles); qemu-img makes it readable by all.
	return os.Chmod(p, 0o600)
}

// Delete removes the volume's file; an absent one is no error.
func (d Driver) Delete(_ context.Context, id string) error { return storage.RemoveDisk(d.Path(id)) }

// Resize grows the volume's file (not in use by a QEMU: a running VM's
// disk grows through its QEMU).
func (d Driver) Resize(ctx context.Context, id string, size int64) error {
	p := d.Path(id)
	cur, err := storage.VirtualSize(ctx, p)
	if err != nil {
		return err
	}
	if size <= cur {
		return nil
	}
	c, err := d.Capacity(ctx)
	if err != nil {
		return err
	}
	if size-cur > c.FreeBytes {
		return api.Errorf(api.ErrCapacity, "pool %q has %s free: growing by %s does not fit", d.Name, api.FormatSize(c.FreeBytes), api.FormatSize(size-cur))
	}
	return storage.Grow(ctx, p, size)
}

// Capacity is the space of the directory's file system.
func (d Driver) Capacity(context.Context) (pool.Capacity, error) {
	if err := os.MkdirAll(d.Dir, 0o750); err != nil {
		return pool.Capacity{}, fmt.Errorf("pool %q: %w", d.Name, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(d.Dir, &st); err != nil {
		return pool.Capacity{}, fmt.Errorf("pool %q: %w", d.Name, err)
	}
	size, free := int64(st.Blocks)*st.Bsize, int64(st.Bavail)*st.Bsize
	return pool.Capacity{SizeBytes: size, FreeBytes: free, UsedBytes: size - int64(st.Bfree)*st.Bsize}, nil
}

// IsVolume says whether a file name of the pool is a volume's (or a
// half-made one's), and whose.
func IsVolume(name string) (id string, ok bool) {
	base := strings.TrimSuffix(filepath.Base(name), ".tmp")
	id, ok = strings.CutPrefix(base, "vol-")
	if !ok {
		return "", false
	}
	id, ok = strings.CutSuffix(id, ".qcow2")
	return id, ok && id != ""
}
