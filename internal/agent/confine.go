package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// Each VM's QEMU runs as a user of its own, the VM's api.VMSpec.UID
// (also its group), the same on every host, so that a disk on a shared
// pool belongs to it wherever the VM runs. What QEMU opens by path is
// given to that user: the VM's state dir (by qemu.Launch), its disk and
// seed (mode 0600), and for a migration a copy of this host's TLS
// credentials. What it only reads and is no secret (an image's base
// disk, kernel and initrd) is made readable by all, and the directories
// above these files searchable (not listable) by all. Everything else
// keeps its owner and mode: the cluster's keys, other VMs' files.

// kvmDevice is opened by QEMU under KVM; its group joins QEMU's.
const kvmDevice = "/dev/kvm"

// qemuUser is whom the QEMU of s runs as.
func qemuUser(s *api.VMSpec) *qemu.User {
	u := &qemu.User{UID: s.UID, GID: s.UID}
	if st, err := os.Stat(kvmDevice); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			u.Groups = append(u.Groups, int(sys.Gid))
		}
	}
	return u
}

// giveFiles makes the VM's own files (disk, seed) its QEMU user's, mode
// 0600, and lets that user reach them and read the image files in
// shared (base disk, kernel, initrd). A VM without a user yet (see
// awaitUID) keeps root's files until it has one.
func giveFiles(s *api.VMSpec, own, shared []string) error {
	if s.UID == 0 {
		return nil
	}
	for _, p := range own {
		if err := giveFile(p, s.UID); err != nil {
			return err
		}
		if err := searchable(filepath.Dir(p)); err != nil {
			return err
		}
	}
	for _, p := range shared {
		if err := addMode(p, 0o444); err != nil {
			return err
		}
		if err := searchable(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// giveFile makes the file p the VM's QEMU user's, mode 0600, through the
// open file: some (the seed) are in the VM's dir, which that user owns,
// and a link put at the name must not pass root's chown to another file.
func giveFile(p string, uid int) error {
	f, err := openNoFollow(p)
	if err != nil {
		return fmt.Errorf("give %s to the VM's QEMU user: %w", p, err)
	}
	defer f.Close()
	if err := f.Chown(uid, uid); err != nil {
		return fmt.Errorf("give %s to the VM's QEMU user %d: %w", p, uid, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("give %s to the VM's QEMU user: %w", p, err)
	}
	return nil
}

// openNoFollow opens a regular file for reading, through no link at its
// name, and never blocks on a FIFO.
func openNoFollow(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	return f, nil
}

// searchable adds search permission for all (o+x, not read) to dir and
// every directory above it that lacks it, so that a QEMU user reaches
// the files it is given there; their names stay unlistable.
func searchable(dir string) error {
	for {
		if err := addMode(dir, 0o111); err != nil {
			return err
		}
		up := filepath.Dir(dir)
		if up == dir {
			return nil
		}
		dir = up
	}
}

// addMode adds the permission bits to path's mode if it lacks any.
func addMode(path string, bits fs.FileMode) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("open %s to VMs' QEMU users: %w", path, err)
	}
	if st.Mode().Perm()&bits == bits {
		return nil
	}
	if err := os.Chmod(path, st.Mode().Perm()|bits); err != nil {
		return fmt.Errorf("open %s to VMs' QEMU users: %w", path, err)
	}
	return nil
}

// awaitUID returns the QEMU user of the VM: its spec's, or, for a VM
// made before QEMU was confined, the one the control plane gave it
// when the start was claimed, which the next spec brings.
func (w *worker) awaitUID(ctx context.Context, s *api.VMSpec) (int, error) {
	if s.UID != 0 {
		return s.UID, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if l := w.latest(); l != nil && l.ID == s.ID && l.UID != 0 {
			w.log.Info("vm was given its QEMU user", "uid", l.UID)
			return l.UID, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("vm %s has no QEMU user yet: %w", s.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// qemuTLSCopy copies this host's TLS credentials for QEMU into dir/tls,
// readable only by the VM's QEMU user, for QEMU to load (it reads them
// once, when the tls-creds object is made); the caller removes the copy
// right after (dropTLSCopy). The host's own copy stays root's. The files
// are made through an os.Root of the new directory, so that a link the
// VM's QEMU put in its directory cannot send them elsewhere.
func (w *worker) qemuTLSCopy(s *api.VMSpec) (string, error) {
	dst := filepath.Join(w.a.vmDir(s.ID), "tls")
	dropTLSCopy(w, dst)
	// Made and opened relative to the VM's dir, so that a link the VM's
	// QEMU user put at "tls" meanwhile leads nowhere outside it.
	vm, err := os.OpenRoot(w.a.vmDir(s.ID))
	if err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	defer vm.Close()
	if err := vm.Mkdir("tls", 0o700); err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	root, err := vm.OpenRoot("tls")
	if err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	defer root.Close()
	ents, err := os.ReadDir(w.a.cfg.QEMUTLSDir)
	if err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name()[0] == '.' {
			continue
		}
		if err := copyOwned(root, filepath.Join(w.a.cfg.QEMUTLSDir, e.Name()), e.Name(), s.UID); err != nil {
			return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
		}
	}
	if err := root.Chown(".", s.UID, s.UID); err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	if err := root.Chmod(".", 0o500); err != nil {
		return "", fmt.Errorf("QEMU's TLS credentials: %w", err)
	}
	return dst, nil
}

// copyOwned copies file src to name in root, mode 0400, owned by uid.
func copyOwned(root *os.Root, src, name string, uid int) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chown(uid, uid); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// dropTLSCopy removes what qemuTLSCopy made.
func dropTLSCopy(w *worker, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		w.log.Warn("cannot remove the copy of the TLS credentials given to QEMU", "dir", dir, "err", err)
	}
}

// backingChain returns the files under the qcow2 image at path: its
// backing file, that one's, and so on (relative names resolved as QEMU
// does, beside the image that names them).
func backingChain(path string) ([]string, error) {
	var chain []string
	for range 8 {
		b, err := backingFile(path)
		if err != nil || b == "" {
			return chain, err
		}
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(path), b)
		}
		chain = append(chain, b)
		path = b
	}
	return chain, nil
}

// backingFile reads the backing file name from a qcow2 header: its
// offset (big-endian uint64 at byte 8) and length (uint32 at byte 16).
func backingFile(path string) (string, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var h [20]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return "", fmt.Errorf("read qcow2 header of %s: %w", path, err)
	}
	if string(h[:4]) != "QFI\xfb" {
		return "", nil // not qcow2: no backing file
	}
	off, n := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
	if off == 0 || n == 0 {
		return "", nil
	}
	if n > 4096 {
		return "", fmt.Errorf("qcow2 header of %s: backing file name of %d bytes", path, n)
	}
	name := make([]byte, n)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("read the backing file name of %s: %w", path, err)
	}
	return string(name), nil
}

// giveLaunchFiles gives the QEMU of s what cfg names: its disks, and
// the images under them and its kernel to read.
func (w *worker) giveLaunchFiles(s *api.VMSpec, cfg qemu.Config) error {
	var own, shared []string
	for _, d := range cfg.Disks {
		if d.Path == "" {
			continue // over the network: its secret was given already (prepareDisk)
		}
		own = append(own, d.Path)
		chain, err := backingChain(d.Path)
		if err != nil {
			return err
		}
		for _, b := range chain {
			// The disk's header is QEMU's to write: a QEMU taken over could
			// name any file as the backing file, to have it opened to all.
			if err := w.a.inImageLibrary(b); err != nil {
				return err
			}
		}
		shared = append(shared, chain...)
	}
	for _, p := range []string{cfg.Kernel, cfg.Initrd} {
		if p != "" {
			shared = append(shared, p)
		}
	}
	if err := searchable(filepath.Dir(cfg.Dir)); err != nil {
		return err
	}
	return giveFiles(s, own, shared)
}

// addTLSCreds loads this host's TLS credentials into the VM's QEMU, as
// the server end of its incoming migration. A confined QEMU gets a copy
// of its own, removed once loaded.
func (w *worker) addTLSCreds(ctx context.Context, p *qemu.Process, s *api.VMSpec) error {
	dir := w.a.cfg.QEMUTLSDir
	if s.UID != 0 {
		copied, err := w.qemuTLSCopy(s)
		if err != nil {
			return err
		}
		defer dropTLSCopy(w, copied)
		dir = copied
	}
	return p.AddTLSCreds(ctx, migTLSCreds, dir, true)
}

// giveSocket lets the VM's QEMU connect to the unix socket at path, which
// this agent listens on (connecting needs write permission on it).
func giveSocket(s *api.VMSpec, path string) error {
	if s.UID == 0 {
		return nil
	}
	if err := os.Lchown(path, s.UID, s.UID); err != nil {
		return fmt.Errorf("give socket %s to the VM's QEMU user: %w", path, err)
	}
	return nil
}

// restrictDisks takes from group and others any access to the VM disks
// in this host's pools, as disks made before QEMU was confined had it.
func (a *Agent) restrictDisks() {
	for _, p := range a.cfg.Pools {
		files, _ := os.ReadDir(p.Dir)
		for _, f := range files {
			if _, ok := storage.DiskOwner(f.Name()); !ok || !f.Type().IsRegular() {
				continue
			}
			path := filepath.Join(p.Dir, f.Name())
			if st, err := os.Lstat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
				if err := os.Chmod(path, st.Mode().Perm()&0o700); err != nil {
					a.log.Warn("cannot make a VM disk private", "disk", path, "err", err)
				}
			}
		}
	}
}

// inImageLibrary checks that path is a file of an image: in this host's
// image library or a pool's copies of images (storage.Pool.ImageBase),
// links resolved.
func (a *Agent) inImageLibrary(path string) error {
	roots := []string{a.cfg.ImageDir}
	for _, p := range a.cfg.Pools {
		roots = append(roots, filepath.Join(p.Dir, ".images"))
	}
	// The name itself must be in the library, whose dirs only root may
	// change (a name elsewhere, say in the VM's own dir, could be a link
	// that flips between the check and the chmod); and what it resolves to.
	under := func(p string, resolve bool) bool {
		for _, r := range roots {
			if resolve {
				if rr, err := filepath.EvalSymlinks(r); err == nil {
					r = rr
				}
			}
			if rel, err := filepath.Rel(filepath.Clean(r), p); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
				return true
			}
		}
		return false
	}
	real, err := filepath.EvalSymlinks(path)
	if err == nil && under(filepath.Clean(path), false) && under(real, true) {
		return nil
	}
	return fmt.Errorf("the disk's backing file %s is no image of this host's library nor of a pool: refusing to open it to the VM's QEMU (its disk header was changed?)", path)
}
