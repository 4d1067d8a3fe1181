package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qemuTool finds a QEMU tool such as qemu-img; required under CI.
func qemuTool(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(qemuTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v: %s", name, args, err, out)
	}
	return string(out)
}

// Disk layout of the mirror tests: an 8 MiB base whose first 4 MiB hold
// 0xaa, and a source overlay holding 0xbb at 1-2 MiB.
const (
	imgSize      = "8M"
	overlayBytes = 1 << 20
)

// mirrorImages makes, in dir, a base image and a copy of it, and on each
// a qcow2 overlay: the source's holds data of its own, the target's is
// empty. It returns the overlays' paths.
func mirrorImages(t *testing.T, dir string) (src, dst string) {
	t.Helper()
	base, dbase := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "dbase.qcow2")
	src, dst = filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "dst.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, imgSize)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0xaa 0 4M", base)
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dbase, b, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", src)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", dbase, "-F", "qcow2", dst)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0xbb 1M 1M", src)
	return src, dst
}

// diskConfig is testConfig with one qcow2 disk and a kernel that halts.
func diskConfig(t *testing.T, disk string, incoming bool) Config {
	cfg := testConfig(testDir(t), incoming)
	cfg.Incoming = incoming
	cfg.Kernel = multibootKernel(t, "")
	cfg.Disks = []Disk{{Path: disk, Format: "qcow2"}}
	return cfg
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// guestWrite writes 64 KiB of pattern at off through the disk's device,
// as the guest would, with HMP's qemu-io.
func guestWrite(t *testing.T, ctx context.Context, p *Process, pattern, off string) {
	t.Helper()
	var out string
	cmd := `qemu-io -d virtio-disk0/virtio-backend "write -P ` + pattern + " " + off + ` 64k"`
	if err := p.QMP().Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, &out); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Fatalf("%s: %s", cmd, out)
	}
}

func waitMigrationStatus(t *testing.T, ctx context.Context, p *Process, want string) {
	t.Helper()
	for {
		s, err := p.QueryMigrate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Status == want {
			return
		}
		if s.Done() || ctx.Err() != nil {
			t.Fatalf("migration status %+v; want %s", s, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitStatus(t *testing.T, ctx context.Context, p *Process, want string) {
	t.Helper()
	for {
		st, err := p.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st == want {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("status %q; want %q", st, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mirrorAndMigrate runs the whole shared-nothing migration of disk0 from
// src to dst (launched Incoming and Paused, NBD server on port), with
// TLS when creds is set, up to the target running.
func mirrorAndMigrate(t *testing.T, ctx context.Context, src, dst *Process, port int, creds string) {
	t.Helper()
	start := time.Now()
	if err := dst.ExportDisk(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	if err := dst.ExportDisk(ctx, "disk0"); err != nil {
		t.Fatalf("export again: %v", err)
	}
	uri, err := dst.PrepareIncoming(ctx, "tcp:127.0.0.1:0", IncomingOptions{TLSCreds: creds})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(uri, "tcp:127.0.0.1:") || strings.HasSuffix(uri, ":0") {
		t.Fatalf("listen uri %q; want tcp:127.0.0.1:PORT", uri)
	}

	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, creds, 0); err != nil {
		t.Fatal(err)
	}
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, creds, 0); err == nil {
		t.Fatal("a second mirror of disk0 started")
	}
	if err := src.WaitMirrorReady(ctx, "disk0", 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	s, err := src.MirrorStatus(ctx, "disk0")
	if err != nil || !s.Found || !s.Ready || s.Len < overlayBytes || s.Offset != s.Len || s.Error != "" {
		t.Fatalf("ready mirror: %+v, %v", s, err)
	}
	t.Logf("mirror ready after %s: %+v", time.Since(start).Round(time.Millisecond), s)
	// Written while the mirror runs: must reach the target too.
	guestWrite(t, ctx, src, "0xcc", "5M")

	if err := src.Migrate(ctx, uri, MigrateOptions{
		TLSCreds: creds, PauseBeforeSwitchover: true, BandwidthBytes: 1 << 30,
	}); err != nil {
		t.Fatal(err)
	}
	waitMigrationStatus(t, ctx, src, StatePreSwitchover)
	if st, err := src.Status(ctx); err != nil || st == "running" {
		t.Fatalf("source at pre-switchover: %q, %v; want the guest stopped", st, err)
	}
	if err := src.CompleteMirror(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	if s, err := src.MirrorStatus(ctx, "disk0"); err != nil || s.Found {
		t.Fatalf("after CompleteMirror: %+v, %v; want no job", s, err)
	}
	if ok, err := src.nodeExists(ctx, mirrorName("disk0")); err != nil || ok {
		t.Fatalf("nbd node left after CompleteMirror: %t, %v", ok, err)
	}
	if err := src.MigrateContinue(ctx, StatePreSwitchover); err != nil {
		t.Fatal(err)
	}
	ms, err := src.WaitMigration(ctx, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("%v (%+v)", err, ms)
	}
	t.Logf("migrated after %s: %+v", time.Since(start).Round(time.Millisecond), ms)
	if err := src.AbortMirror(ctx, "disk0"); err != nil {
		t.Fatalf("AbortMirror with nothing to abort: %v", err)
	}

	waitStatus(t, ctx, dst, "paused") // launched Paused
	for range 2 {
		if err := dst.StopNBDServer(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if exps, err := dst.blockExports(ctx); err != nil || len(exps) != 0 {
		t.Fatalf("exports after StopNBDServer: %+v, %v", exps, err)
	}
	if err := dst.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ctx, dst, "running")
	if err := dst.AnnounceSelf(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkCopy kills src and dst and checks that the target's disk reads
// the same as the source's, and that its overlay got only the source's
// overlay data (sync "top"), not the base.
func checkCopy(t *testing.T, src, dst *Process, srcImg, dstImg string) {
	t.Helper()
	for _, p := range []*Process{src, dst} {
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	if out := run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xcc 5M 64k", srcImg); strings.Contains(out, "fail") {
		t.Fatalf("source lacks the write made during the mirror: %s", out)
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", srcImg, dstImg)
	var m []struct {
		Length int64 `json:"length"`
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", "-f", "qcow2", dstImg)), &m); err != nil {
		t.Fatal(err)
	}
	var top int64
	for _, e := range m {
		if e.Depth == 0 && e.Data {
			top += e.Length
		}
	}
	if top < overlayBytes+64<<10 || top >= 4<<20 {
		t.Errorf("target overlay holds %d bytes; want the source overlay's %d", top, overlayBytes+64<<10)
	}
}

func TestMirrorAndMigrateTCP(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	srcImg, dstImg := mirrorImages(t, sockDir(t))
	src := launch(t, diskConfig(t, srcImg, false))
	dst := launch(t, diskConfig(t, dstImg, true))
	if err := dst.SetAnnounce(ctx, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := dst.SetAnnounce(ctx, time.Hour); err == nil {
		t.Error("SetAnnounce(1h) accepted")
	}
	port := freePort(t)
	if err := dst.StartNBDServer(ctx, "127.0.0.1", port, ""); err != nil {
		t.Fatal(err)
	}
	mirrorAndMigrate(t, ctx, src, dst, port, "")
	checkCopy(t, src, dst, srcImg, dstImg)
}

func TestMirrorAbort(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	srcImg, dstImg := mirrorImages(t, sockDir(t))
	src := launch(t, diskConfig(t, srcImg, false))
	dst := launch(t, diskConfig(t, dstImg, true))

	if err := src.AbortMirror(ctx, "disk0"); err != nil {
		t.Fatalf("abort without mirror: %v", err)
	}
	if err := src.CompleteMirror(ctx, "disk0"); !errors.Is(err, ErrMirrorFailed) {
		t.Fatalf("complete without mirror: %v; want ErrMirrorFailed", err)
	}
	// Nobody listens: the mirror does not start and leaves nothing.
	port := freePort(t)
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, "", 0); err == nil {
		t.Fatal("mirror to a closed port started")
	}
	if ok, err := src.nodeExists(ctx, mirrorName("disk0")); err != nil || ok {
		t.Fatalf("nbd node left by a failed start: %t, %v", ok, err)
	}

	if err := dst.StartNBDServer(ctx, "127.0.0.1", port, ""); err != nil {
		t.Fatal(err)
	}
	if err := dst.StartNBDServer(ctx, "127.0.0.1", port, ""); err == nil {
		t.Error("second NBD server started")
	}
	if err := dst.ExportDisk(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, "", 0); err != nil {
		t.Fatal(err)
	}
	if err := src.WaitMirrorReady(ctx, "disk0", 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := src.AbortMirror(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	if s, err := src.MirrorStatus(ctx, "disk0"); err != nil || s.Found {
		t.Fatalf("after abort: %+v, %v", s, err)
	}
	if ok, err := src.nodeExists(ctx, mirrorName("disk0")); err != nil || ok {
		t.Fatalf("nbd node left by abort: %t, %v", ok, err)
	}
	if err := src.AbortMirror(ctx, "disk0"); err != nil {
		t.Fatalf("second abort: %v", err)
	}
	if st, err := src.Status(ctx); err != nil || st != "running" {
		t.Errorf("source after abort: %q, %v; want running", st, err)
	}
	// The target's NBD server stops even with a client gone, and the
	// mirror can start over.
	if err := dst.StopNBDServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, "", 0); err == nil {
		t.Fatal("mirror to a stopped NBD server started")
	}
}
