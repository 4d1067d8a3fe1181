package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// qemuImg creates an image with qemu-img.
func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestHotplugWithoutGuest drives the hot-plug methods against a QEMU
// whose CPUs never run: attach is idempotent and refuses what cannot
// be, a failed attach leaves nothing behind, and a detach the guest
// does not answer ends in a clear error after its timeout.
func TestHotplugWithoutGuest(t *testing.T) {
	qemuBinary(t)
	dir := testDir(t)
	cfg := testConfig(dir, true)
	cfg.VolumeSlots = 2
	p := launch(t, cfg)
	ctx := testCtx(t)
	vol := filepath.Join(t.TempDir(), "vol.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", vol, "16M")

	if n, err := p.VolumeSlots(ctx); err != nil || n != 2 {
		t.Fatalf("VolumeSlots = %d, %v; want 2", n, err)
	}
	d := Disk{Path: vol, Format: "qcow2", Node: "vol-a1", Serial: "va1", Slot: 2}
	for i := range 2 {
		if err := p.AttachDisk(ctx, d); err != nil {
			t.Fatalf("attach %d: %v", i+1, err)
		}
	}
	disks, err := p.Disks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 1 || disks[0] != (AttachedDisk{Node: "vol-a1", Device: "virtio-vol-a1", Slot: 2, SizeBytes: 16 << 20}) {
		t.Errorf("Disks = %+v", disks)
	}

	other := filepath.Join(t.TempDir(), "other.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", other, "16M")
	chapFile := filepath.Join(t.TempDir(), "chap")
	if err := os.WriteFile(chapFile, []byte(chapPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(t.TempDir(), "raw.img")
	qemuImg(t, "create", "-q", "-f", "raw", raw, "16M")
	for name, c := range map[string]struct {
		d    Disk
		kind error
		msg  string
	}{
		"slot taken":         {Disk{Path: other, Format: "qcow2", Node: "vol-b2", Slot: 2}, api.ErrConflict, "slot 2 holds virtio-vol-a1"},
		"moved":              {Disk{Path: vol, Format: "qcow2", Node: "vol-a1", Slot: 1}, api.ErrConflict, "attached in slot 2, not 1"},
		"no such slot":       {Disk{Path: other, Format: "qcow2", Node: "vol-b2", Slot: 3}, api.ErrConflict, "no hot-plug slot 3 (it has 2;"},
		"missing file":       {Disk{Path: other + ".nope", Format: "qcow2", Node: "vol-b2", Slot: 1}, api.ErrUnavailable, "open"},
		"wrong format":       {Disk{Path: raw, Format: "qcow2", Node: "vol-b2", Slot: 1}, api.ErrUnavailable, "open: Image is not in qcow2 format"},
		"secret from a file": {Disk{Node: "vol-b2", Slot: 1, ISCSI: &ISCSI{Portal: "127.0.0.1:1", Target: "iqn.2026-12.io.shoal:vol-b2", LUN: 1, User: "u", Secret: Secret{File: chapFile}}}, api.ErrUnavailable, "iSCSI"},
		"unreadable secret":  {Disk{Node: "vol-b2", Slot: 1, ISCSI: &ISCSI{Portal: "127.0.0.1:1", Target: "iqn.2026-12.io.shoal:vol-b2", LUN: 1, User: "u", Secret: Secret{File: chapFile + ".nope"}}}, api.ErrUnavailable, "add its secret"},
		"unreachable portal": {Disk{Node: "vol-b2", Slot: 1, ISCSI: &ISCSI{Portal: "127.0.0.1:1", Target: "iqn.2026-12.io.shoal:vol-b2", LUN: 1, User: "u", Secret: Secret{Value: SecretValue(chapPassword)}}}, api.ErrUnavailable, "iSCSI"},
	} {
		err := p.AttachDisk(ctx, c.d)
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v; want one line of kind %v with %q", name, err, c.kind, c.msg)
		}
	}
	// The failed attaches left no block node, device or secret.
	nodes, err := p.blockNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := p.qomChildren(ctx, "/objects")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := p.peripherals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := nodes["vol-b2"]; ok {
		t.Errorf("block node vol-b2 left: %v", nodes)
	}
	if _, ok := objs["sec-vol-b2"]; ok {
		t.Errorf("secret left: %v", objs)
	}
	if _, ok := devs["virtio-vol-b2"]; ok {
		t.Errorf("device left: %v", devs)
	}

	if err := p.GrowDisk(ctx, "vol-a1", 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.GrowDisk(ctx, "vol-a1", 32<<20); err != nil {
		t.Errorf("grow to its size: %v", err)
	}
	if err := p.GrowDisk(ctx, "vol-a1", 8<<20); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("shrink: err = %v, want api.ErrInvalid", err)
	}
	if err := p.GrowDisk(ctx, "vol-zz", 8<<20); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("grow of no disk: err = %v, want api.ErrNotFound", err)
	}
	if disks, _ := p.Disks(ctx); len(disks) != 1 || disks[0].SizeBytes != 32<<20 {
		t.Errorf("after grow: %+v", disks)
	}

	// The guest never runs, so it never releases the disk.
	start := time.Now()
	err = p.DetachDisk(ctx, "vol-a1", time.Second)
	if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "the guest did not release the disk within 1s") {
		t.Errorf("detach unanswered: err = %v", err)
	}
	if took := time.Since(start); took < time.Second || took > 5*time.Second {
		t.Errorf("detach gave up after %s, want about 1s", took)
	}
	// Asked again, it waits again, without an error from QEMU.
	if err := p.DetachDisk(ctx, "vol-a1", 200*time.Millisecond); !errors.Is(err, api.ErrConflict) {
		t.Errorf("second detach: err = %v, want api.ErrConflict", err)
	}
	// Nothing to detach is no error.
	if err := p.DetachDisk(ctx, "vol-none", time.Second); err != nil {
		t.Errorf("detach of nothing: %v", err)
	}
	if _, err := os.Stat(vol); err != nil {
		t.Fatal(err)
	}
}
