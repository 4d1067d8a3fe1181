package qemu

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeNBD writes through qemu-nbd into a qcow2 image and finds the
// data in the image once the server has stopped.
func TestServeNBD(t *testing.T) {
	qemuTool(t, "qemu-nbd")
	qemuTool(t, "qemu-io")
	img := qemuTool(t, "qemu-img")
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	run(t, img, "create", "-q", "-f", "qcow2", disk, "16M")
	sock := filepath.Join(dir, "nbd.sock")
	s, err := ServeNBD(slog.New(slog.DiscardHandler), disk, "disk0", sock, "")
	if err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "nbd+unix:///disk0?socket="+sock)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	out := run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k", disk)
	if !strings.Contains(out, "read 65536/65536 bytes") {
		t.Fatalf("the data written over NBD is not in the image: %s", out)
	}
	if _, err := ServeNBD(slog.New(slog.DiscardHandler), filepath.Join(dir, "missing.qcow2"), "disk0", sock, ""); err == nil {
		t.Fatal("serving a missing image succeeded")
	}
}
