package rbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// imageOpts is how a QEMU opens vol with its rbd driver: the monitors,
// the user, and the key as a secret object read from the key file.
func imageOpts(t *testing.T, vol QEMUVolume) []string {
	t.Helper()
	opts := []string{"driver=rbd", "pool=" + vol.Pool, "image=" + vol.Image, "user=" + vol.User, "key-secret=key0"}
	for i, m := range vol.Monitors {
		h, p, err := net.SplitHostPort(m)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, fmt.Sprintf("server.%d.host=%s", i, h), fmt.Sprintf("server.%d.port=%s", i, p))
	}
	return []string{"--object", "secret,id=key0,format=base64,file=" + vol.KeyFile, "--image-opts", strings.Join(opts, ",")}
}

// qemuIO runs qemu-io on vol from host's namespace with the commands
// cmds, and returns its output.
func qemuIO(ctx context.Context, t *testing.T, host string, vol QEMUVolume, cmds ...string) (string, error) {
	t.Helper()
	args := append([]string{"netns", "exec", hostNS[host], "qemu-io"}, imageOpts(t, vol)...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	s := string(out)
	if err == nil && (strings.Contains(s, "failed") || strings.Contains(s, "Pattern verification")) {
		err = errors.New("an I/O failed")
	}
	return s, err
}

// imageSize is the size rbd reports of a volume, as the admin sees it.
func imageSize(ctx context.Context, t *testing.T, id string) int64 {
	t.Helper()
	d := newDriver(t)
	size, err := d.size(ctx, Image(id))
	if err != nil {
		t.Fatal(err)
	}
	return size
}

func TestCreateResizeDelete(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := newDriver(t)
	id := testID(t)
	defer d.Delete(ctx, id)
	v := pool.Volume{ID: id, SizeBytes: 64 << 20}
	for i := 0; i < 2; i++ { // the second is a no-op
		if err := d.Create(ctx, v); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	if got := imageSize(ctx, t, id); got != 64<<20 {
		t.Fatalf("size %d, want 64M", got)
	}
	if err := d.Create(ctx, pool.Volume{ID: id, SizeBytes: 32 << 20}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("create with another size: %v, want a conflict", err)
	}
	for _, size := range []int64{128 << 20, 128 << 20, 96 << 20} { // grows once, never shrinks
		if err := d.Resize(ctx, id, size); err != nil {
			t.Fatalf("resize to %d: %v", size, err)
		}
	}
	if got := imageSize(ctx, t, id); got != 128<<20 {
		t.Fatalf("size after resize %d, want 128M", got)
	}
	c, err := d.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.FreeBytes <= 0 || c.SizeBytes != c.UsedBytes+c.FreeBytes {
		t.Fatalf("capacity %+v", c)
	}
	for i := 0; i < 2; i++ { // deleting an absent volume is fine
		if err := d.Delete(ctx, id); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if _, err := d.size(ctx, Image(id)); !errors.Is(err, errAbsent) {
		t.Fatalf("image after delete: %v", err)
	}
	if err := d.Resize(ctx, id, 1<<30); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("resize of a deleted volume: %v, want not found", err)
	}
	if err := d.Create(ctx, pool.Volume{ID: "../x", SizeBytes: 1 << 20}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("create with a bad id: %v, want invalid", err)
	}
}

// TestTooLargeRefused: a volume larger than the pool's free space is
// refused with the free space in the message, and nothing is made.
func TestTooLargeRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := newDriver(t)
	c, err := d.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := testID(t)
	err = d.Create(ctx, pool.Volume{ID: id, SizeBytes: (c.FreeBytes>>30 + 2) << 30})
	if !errors.Is(err, api.ErrCapacity) || !strings.Contains(err.Error(), gib(c.FreeBytes)+" free") {
		t.Fatalf("create larger than the pool: %v, want a capacity error naming %s free", err, gib(c.FreeBytes))
	}
	if _, err := d.size(ctx, Image(id)); !errors.Is(err, errAbsent) {
		t.Fatalf("image after a refused create: %v", err)
	}
	t.Log(err)
}

// TestQEMUWritesAndReads: a volume made from a qcow2 base holds the base's
// data when QEMU's rbd driver opens it on a host with the user's key, and
// what one QEMU writes the next reads.
func TestQEMUWritesAndReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := filepath.Join(t.TempDir(), "base.qcow2")
	for _, c := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "32M"},
		{"qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 0 1M", "-c", "write -q -P 0x6b 20M 64k", base},
	} {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", c, err, out)
		}
	}
	d := newDriver(t)
	id := testID(t)
	defer d.Delete(ctx, id)
	// A fill that a crash interrupted is thrown away and done again.
	if _, err := d.rbd(ctx, "create", "--size", "1M", d.spec(Image(id)+newSuffix)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := d.Create(ctx, pool.Volume{ID: id, SizeBytes: 64 << 20, Base: base}); err != nil {
		t.Fatal(err)
	}
	t.Logf("created from a 32M qcow2 in %v", time.Since(t0).Round(time.Millisecond))
	if got := imageSize(ctx, t, id); got != 64<<20 {
		t.Fatalf("size %d, want 64M", got)
	}
	vol := d.QEMU(id)
	if out, err := qemuIO(ctx, t, "ha", vol, "read -P 0x5a 0 1M", "read -P 0x6b 20M 64k", "read -P 0 1M 19M",
		"write -P 0x7c 40M 1M"); err != nil {
		t.Fatalf("qemu-io on ha: %v: %s", err, out)
	}
	if out, err := qemuIO(ctx, t, "hb", vol, "read -P 0x7c 40M 1M", "read -P 0x5a 0 1M"); err != nil {
		t.Fatalf("qemu-io on hb: %v: %s", err, out)
	}
	// A volume open by a client (a VM's QEMU) is not deleted; closed, it is.
	w := startWriter(t, "ha", vol)
	if err := w.write(1); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, id); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("delete of an open volume: %v, want a conflict", err)
	}
	// It grows while open (the lock owner does it for rbd).
	if err := d.Resize(ctx, id, 96<<20); err != nil {
		t.Fatalf("resize of an open volume: %v", err)
	}
	if got := imageSize(ctx, t, id); got != 96<<20 {
		t.Fatalf("size after resize %d, want 96M", got)
	}
	if err := w.write(2); err != nil {
		t.Fatalf("write after resize: %v", err)
	}
	w.stop()
	if err := d.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{Image(id), Image(id) + newSuffix} {
		if _, err := d.size(ctx, name); !errors.Is(err, errAbsent) {
			t.Fatalf("%s after delete: %v", name, err)
		}
	}
}
