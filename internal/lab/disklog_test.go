package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/storage"
)

// diskLog reads the write log the tiny guest keeps on the shared-pool
// disk of VM id (image.ParseDiskLog), while the VM may run: qemu-img
// shares the image with its QEMU (-U) and reads it whole.
func (f *labFixture) diskLog(t testing.TB, id string) image.DiskLog {
	t.Helper()
	disk := storage.Pool{Dir: f.layout().Shared()}.DiskPath(id)
	flat := filepath.Join(t.TempDir(), id+".raw")
	defer os.Remove(flat)
	if out, err := exec.CommandContext(f.ctx, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk, flat).CombinedOutput(); err != nil {
		t.Fatalf("read the disk of %s: %v: %s", id, err, out)
	}
	data, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	l, err := image.ParseDiskLog(data)
	if err != nil {
		t.Fatalf("the disk of %s: %v", id, err)
	}
	return l
}

// requireOneWriter fails the test unless the write log on VM id's disk
// shows one writer at a time and at least boots runs of the guest
// (each failover or restart is a new boot).
func (f *labFixture) requireOneWriter(t testing.TB, name, id string, boots int) {
	t.Helper()
	l := f.diskLog(t, id)
	t.Logf("%s: disk write log: %s", name, l.Summary())
	if len(l.Problems) > 0 {
		t.Errorf("%s: the disk write log shows two writers at once: %v", name, l.Problems)
	}
	if len(l.Runs) < boots {
		t.Errorf("%s: the disk write log holds %d boots, want at least %d", name, len(l.Runs), boots)
	}
}
