// Package storage manages storage pools and the disks of VMs in them. A
// pool is a directory (local to a host, or shared by all hosts); a VM disk
// is a qcow2 overlay (a linked clone) on an image's base disk.
package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Pool is a directory holding VM disks.
type Pool struct {
	Name   string
	Dir    string
	Shared bool // every host sees the same directory
}

// DiskPath returns where the first disk of the VM with this id lives.
func (p Pool) DiskPath(vmID string) string { return filepath.Join(p.Dir, vmID+"-disk0.qcow2") }

// ImageBase is where a shared pool keeps the base disk of version (see
// image.Version) of an image, so that overlays in the pool name a path
// every host sees. An image deleted and imported again under its name
// has another version, so the base of the old one, which no VM uses any
// more, is never taken for the new one, nor replaced under a VM.
func (p Pool) ImageBase(image, version string) string {
	return filepath.Join(p.Dir, ".images", image, version, "disk.qcow2")
}

// EnsureCopy copies src to dst unless dst exists. The copy appears
// atomically, so concurrent callers (several hosts) are safe.
func EnsureCopy(src, dst string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".copy-")
	if err != nil {
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("copy %s: %w", dst, err)
	}
	return nil
}

// DiskOwner returns the VM id a file name in the pool belongs to, if it is
// a VM disk (or a half-made one).
func DiskOwner(file string) (string, bool) {
	base := filepath.Base(file)
	id, _, ok := strings.Cut(base, "-disk0.qcow2")
	return id, ok && id != ""
}

// CreateOverlay makes dst a qcow2 overlay of base with the given virtual
// size. It is atomic: dst appears complete or not at all.
func CreateOverlay(ctx context.Context, base, dst string, size int64) error {
	return createQcow2(ctx, dst, size, "-F", "qcow2", "-b", base)
}

// createQcow2 runs qemu-img create for dst with the extra options, into a
// temporary name first.
func createQcow2(ctx context.Context, dst string, size int64, opts ...string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return fmt.Errorf("create pool dir: %w", err)
	}
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	args := append(append([]string{"create", "-q", "-f", "qcow2"}, opts...), tmp, fmt.Sprint(size))
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img create %s: %w: %s", dst, err, strings.TrimSpace(string(out)))
	}
	// Link, unlike rename, never replaces a disk that appeared meanwhile.
	err = os.Link(tmp, dst)
	_ = os.Remove(tmp)
	if err != nil {
		return fmt.Errorf("place disk %s: %w", dst, err)
	}
	return nil
}

// CreateBlank makes dst an empty qcow2 disk of the given virtual size,
// atomically as CreateOverlay.
func CreateBlank(ctx context.Context, dst string, size int64) error {
	return createQcow2(ctx, dst, size)
}

// VirtualSize returns a disk image's virtual size in bytes.
func VirtualSize(ctx context.Context, path string) (int64, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-U", path).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// Grow makes the disk at path (qcow2, opened by no QEMU) size bytes.
func Grow(ctx context.Context, path string, size int64) error {
	out, err := exec.CommandContext(ctx, "qemu-img", "resize", "-q", path, fmt.Sprint(size)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img resize %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RemoveDisk deletes a VM's disk and any half-made copy; missing is fine.
func RemoveDisk(path string) error {
	for _, p := range []string{path, path + ".tmp"} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove disk: %w", err)
		}
	}
	return nil
}
