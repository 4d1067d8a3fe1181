package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pool"
)

// Create makes the image of v: blank, or with the contents of v.Base
// (qcow2), written by qemu-img through QEMU's rbd driver into an image
// vol-<id>.new that is renamed when complete, so that a crash never
// leaves a half-filled volume under the volume's name. An image already
// there with v's size is success; with another size, a conflict.
func (d *Driver) Create(ctx context.Context, v pool.Volume) error {
	if err := checkID(v.ID); err != nil {
		return err
	}
	if v.SizeBytes <= 0 {
		return api.Errorf(api.ErrInvalid, "volume size %d is not positive", v.SizeBytes)
	}
	name := Image(v.ID)
	switch size, err := d.size(ctx, name); {
	case err == nil && size == v.SizeBytes:
		return nil
	case err == nil:
		return api.Errorf(api.ErrConflict, "rbd image %s already exists with size %s, not %s", name, api.FormatSize(size), api.FormatSize(v.SizeBytes))
	case !errors.Is(err, errAbsent):
		return err
	}
	if v.Base != "" {
		baseSize, err := d.virtualSize(ctx, v.Base)
		if err != nil {
			return err
		}
		if baseSize > v.SizeBytes {
			return api.Errorf(api.ErrInvalid, "volume of %s is smaller than its image %s (%s)", api.FormatSize(v.SizeBytes), v.Base, api.FormatSize(baseSize))
		}
	}
	if err := d.fits(ctx, v.SizeBytes, "volume of "+api.FormatSize(v.SizeBytes)); err != nil {
		return err
	}
	size := fmt.Sprintf("%dB", v.SizeBytes)
	if v.Base == "" {
		_, err := d.rbd(ctx, "create", "--size", size, d.spec(name))
		return err
	}
	tmp := name + newSuffix
	if err := d.remove(ctx, tmp); err != nil {
		return err
	}
	if _, err := d.rbd(ctx, "create", "--size", size, d.spec(tmp)); err != nil {
		return err
	}
	// The new image reads as zeros: only the base's data is written,
	// several requests at once and in any order.
	if _, err := d.run(ctx, "qemu-img", "convert", "-n", "--target-is-zero", "-W", "-m", "16",
		"-f", "qcow2", "-O", "raw", v.Base, d.qemuFilename(tmp)); err != nil {
		return err
	}
	_, err := d.rbd(ctx, "rename", d.spec(tmp), d.spec(name))
	return err
}

// qemuFilename names an image of the pool for qemu-img, with the user
// and the driver's ceph.conf (which names the keyring).
func (d *Driver) qemuFilename(image string) string {
	return fmt.Sprintf("rbd:%s/%s:id=%s:conf=%s", d.cfg.Pool, image, d.cfg.User, d.conf)
}

// virtualSize is the virtual size of a qcow2 image.
func (d *Driver) virtualSize(ctx context.Context, path string) (int64, error) {
	out, err := d.run(ctx, "qemu-img", "info", "--output", "json", "-f", "qcow2", path)
	if err != nil {
		return 0, api.Errorf(api.ErrInvalid, "image %s: %v", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// fits fails with api.ErrCapacity when the pool has less than n bytes
// free; what names what needs them.
func (d *Driver) fits(ctx context.Context, n int64, what string) error {
	c, err := d.Capacity(ctx)
	if err != nil {
		return err
	}
	if n > c.FreeBytes {
		return api.Errorf(api.ErrCapacity, "%s does not fit: rbd pool %s has %s free", what, d.cfg.Pool, gib(c.FreeBytes))
	}
	return nil
}

// gib renders bytes in GiB with one decimal, as free space is shown.
func gib(n int64) string {
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// Delete removes the volume's image (and an unfinished one from a base).
// An image still open by a client (a watcher: a running QEMU) is refused.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := d.remove(ctx, Image(id)+newSuffix); err != nil {
		return err
	}
	return d.remove(ctx, Image(id))
}

// remove removes an image; an absent one is fine.
func (d *Driver) remove(ctx context.Context, image string) error {
	_, err := d.rbd(ctx, "rm", "--no-progress", d.spec(image))
	switch {
	case errors.Is(err, errAbsent):
		return nil
	case err != nil && strings.Contains(err.Error(), "still has watchers"):
		return api.Errorf(api.ErrConflict, "rbd image %s is open by a client (a running VM?): not deleted", image)
	}
	return err
}

// Resize grows the volume's image to size; a larger image is left as it
// is. The growth must fit in the pool's free space.
func (d *Driver) Resize(ctx context.Context, id string, size int64) error {
	if err := checkID(id); err != nil {
		return err
	}
	name := Image(id)
	cur, err := d.size(ctx, name)
	if errors.Is(err, errAbsent) {
		return api.Errorf(api.ErrNotFound, "rbd image %s does not exist", name)
	}
	if err != nil || cur >= size {
		return err
	}
	if err := d.fits(ctx, size-cur, "growing by "+api.FormatSize(size-cur)); err != nil {
		return err
	}
	_, err = d.rbd(ctx, "resize", "--no-progress", "--size", fmt.Sprintf("%dB", size), d.spec(name))
	return err
}

// Capacity is the pool's space as Ceph reports it: used is what the pool
// stores (images are thin: only written data counts), free is what it can
// still store given its replicas (max_avail), and size their sum.
func (d *Driver) Capacity(ctx context.Context) (pool.Capacity, error) {
	out, err := d.run(ctx, "ceph", "-c", d.conf, "--id", d.cfg.User, "df", "--format", "json")
	if err != nil {
		return pool.Capacity{}, err
	}
	var df struct {
		Pools []struct {
			Name  string `json:"name"`
			Stats struct {
				Stored   int64 `json:"stored"`
				MaxAvail int64 `json:"max_avail"`
			} `json:"stats"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(out, &df); err != nil {
		return pool.Capacity{}, fmt.Errorf("ceph df: %w", err)
	}
	for _, p := range df.Pools {
		if p.Name == d.cfg.Pool {
			s := p.Stats
			return pool.Capacity{SizeBytes: s.Stored + s.MaxAvail, UsedBytes: s.Stored, FreeBytes: s.MaxAvail}, nil
		}
	}
	return pool.Capacity{}, api.Errorf(api.ErrNotFound, "ceph has no pool %s", d.cfg.Pool)
}
