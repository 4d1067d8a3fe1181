package agent

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// TestGiveFiles: a VM's disk becomes its QEMU user's alone (0600), the
// image under it becomes readable by all, and the directories above both
// searchable, not listable; the backing chain is read from the disk.
func TestGiveFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	top := t.TempDir()
	images, pool := filepath.Join(top, "images", "tiny"), filepath.Join(top, "pool")
	for _, d := range []string{images, pool} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	base, disk := filepath.Join(images, "disk.qcow2"), filepath.Join(pool, "vm-disk0.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", base, "1M"},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk, "1M"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	if err := os.Chmod(base, 0o600); err != nil {
		t.Fatal(err)
	}
	chain, err := backingChain(disk)
	if err != nil || len(chain) != 1 || chain[0] != base {
		t.Fatalf("backing chain of the disk: %v %v, want [%s]", chain, err, base)
	}
	s := &api.VMSpec{UID: api.VMUIDMin + 7}
	if err := giveFiles(s, []string{disk}, chain); err != nil {
		t.Fatal(err)
	}
	mode := func(p string) (os.FileMode, uint32) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid
	}
	if m, uid := mode(disk); m != 0o600 || uid != uint32(s.UID) {
		t.Errorf("disk: mode %o uid %d, want 600 and %d", m, uid, s.UID)
	}
	if m, uid := mode(base); m != 0o644 || uid != 0 {
		t.Errorf("base: mode %o uid %d, want 644 and root's", m, uid)
	}
	for _, d := range []string{filepath.Dir(images), images, pool} {
		if m, _ := mode(d); m != 0o711 {
			t.Errorf("%s: mode %o, want 711 (searchable, not listable)", d, m)
		}
	}
}

// TestFilesInTheVMDirFollowNoLink: the VM's state dir is its QEMU
// user's, so a link there may point anywhere; the agent neither reads
// through one nor writes through one.
func TestFilesInTheVMDirFollowNoLink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "qemu.log")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(link); got != "" {
		t.Errorf("readTrim read %q through a link", got)
	}
	if err := writeAtomic(link, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "key" {
		t.Errorf("writeAtomic wrote through a link: the target holds %q", b)
	}
	if got := readTrim(link); got != "new" {
		t.Errorf("after writeAtomic the file holds %q, want new", got)
	}
}

// TestRestrictDisks: disks made readable by all before QEMU was confined
// become private when the agent starts; other files keep their mode.
func TestRestrictDisks(t *testing.T) {
	dir := t.TempDir()
	disk, other := filepath.Join(dir, "abc-disk0.qcow2"), filepath.Join(dir, "notes")
	for _, p := range []string{disk, other} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := New(Config{Pools: []storage.Pool{{Name: "shared", Dir: dir, Shared: true}}}, nil, slog.New(slog.DiscardHandler))
	a.restrictDisks()
	for p, want := range map[string]os.FileMode{disk: 0o600, other: 0o644} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %o", p, st.Mode(), err, want)
		}
	}
}

// TestAwaitUID: a VM made before QEMU was confined starts with the user
// the control plane gave it at the claim, once its next spec brings it;
// never as root, and not with another VM's spec.
func TestAwaitUID(t *testing.T) {
	a := New(Config{Dir: t.TempDir()}, nil, slog.New(slog.DiscardHandler))
	w := newWorker(a, "id1")
	old := api.VMSpec{Name: "old", ID: "id1", Rev: 5}
	w.update(&old)
	go func() {
		time.Sleep(100 * time.Millisecond)
		w.update(&api.VMSpec{Name: "old", ID: "other", UID: api.VMUIDMin + 1, Rev: 6}) // a VM of the same name, made anew
		time.Sleep(100 * time.Millisecond)
		w.update(&api.VMSpec{Name: "old", ID: "id1", UID: api.VMUIDMin + 2, Rev: 7})
	}()
	uid, err := w.awaitUID(context.Background(), &old)
	if err != nil || uid != api.VMUIDMin+2 {
		t.Fatalf("awaitUID: %d, %v; want %d", uid, err, api.VMUIDMin+2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	w2 := newWorker(a, "id2")
	if _, err := w2.awaitUID(ctx, &api.VMSpec{Name: "x", ID: "id2"}); err == nil {
		t.Fatal("awaitUID gave a uid though no spec brought one")
	}
}

// TestBackingFileOutsideTheLibrary: a QEMU taken over may rewrite its
// disk's header to name any file as its backing file; the agent then
// refuses to launch it rather than open that file to all.
func TestBackingFileOutsideTheLibrary(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	top := t.TempDir()
	images, pool, keys := filepath.Join(top, "images"), filepath.Join(top, "pool"), filepath.Join(top, "pki")
	for _, d := range []string{filepath.Join(images, "tiny"), pool, keys} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	secret, disk := filepath.Join(keys, "ca.key"), filepath.Join(pool, "vm-disk0.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", secret, "1M"},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", secret, disk, "1M"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	if err := os.Chmod(secret, 0o600); err != nil {
		t.Fatal(err)
	}
	w := &worker{a: &Agent{cfg: Config{ImageDir: images, Pools: []storage.Pool{{Name: "local", Dir: pool}}}}}
	s := &api.VMSpec{UID: api.VMUIDMin + 8}
	err := w.giveLaunchFiles(s, qemu.Config{Dir: filepath.Join(top, "vm"), Disks: []qemu.Disk{{Path: disk}}})
	if err == nil || !strings.Contains(err.Error(), "refusing to open it") {
		t.Fatalf("a disk whose backing file is outside the library: %v", err)
	}
	if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the named file was opened up: %v %v", st.Mode(), err)
	}
}

// TestGiveFileThroughNoLink: the seed lies in the VM's dir, which its
// QEMU user owns; a link put at its name does not pass root's chown and
// chmod on to the file it names.
func TestGiveFileThroughNoLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(target, []byte("root:x:0:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.iso")
	if err := os.Symlink(target, seed); err != nil {
		t.Fatal(err)
	}
	s := &api.VMSpec{UID: api.VMUIDMin + 9}
	if err := giveFiles(s, []string{seed}, nil); err == nil {
		t.Error("a linked seed was given")
	}
	st, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the linked file became mode %o, uid %d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
	}
}
