package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestOverlay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	p := Pool{Name: "local", Dir: filepath.Join(dir, "pool")}
	disk := p.DiskPath("abc123")
	if err := CreateOverlay(ctx, base, disk, 1<<30); err != nil {
		t.Fatal(err)
	}
	if sz, err := VirtualSize(ctx, disk); err != nil || sz != 1<<30 {
		t.Fatalf("size %d, %v", sz, err)
	}
	if id, ok := DiskOwner(disk); !ok || id != "abc123" {
		t.Fatalf("owner %q %v", id, ok)
	}
	if err := CreateOverlay(ctx, filepath.Join(dir, "missing"), p.DiskPath("x"), 1<<30); err == nil {
		t.Fatal("overlay on a missing base succeeded")
	}
	if _, err := os.Stat(p.DiskPath("x") + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("failed create left a temp file")
	}
	if err := RemoveDisk(disk); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatal("disk still there")
	}
}

func TestEnsureCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Pool{Name: "shared", Dir: filepath.Join(dir, "shared"), Shared: true}
	dst := p.ImageBase("tiny", "20261201T120000.000000000Z")
	if err := EnsureCopy(src, dst); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := EnsureCopy(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "base" {
		t.Fatalf("an existing copy was replaced: %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
}
