package lab

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/cloudinit"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// TestQEMUMigrationSoak is a diagnostic, run only with SHOAL_QEMU_SOAK=N
// (docs/MIGRATION.md, Known limits):
// the tiny guest running the dirty workload, migrated N times between two
// plain QEMUs on this machine over a unix socket (no Shoal process, no
// network), with Shoal's settings (auto-converge, 50 ms downtime). After
// each migration the guest must not have crashed (the tiny kernel panics
// on an oops, and QEMU then exits). It tells whether QEMU alone breaks a
// guest under TCG: before qemu.Args padded TCG guests' memory, 4 of 109
// migrations did; with the pad, 0 of 160. SHOAL_QEMU_SOAK_HELD=1 holds
// the target paused until the stream is in, as Shoal does.
func TestQEMUMigrationSoak(t *testing.T) {
	n := envInt("SHOAL_QEMU_SOAK", 0)
	if n == 0 {
		t.Skip("set SHOAL_QEMU_SOAK=N to run N migrations")
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir := t.TempDir()
	art, err := image.BuildTiny(ctx, log, filepath.Join(dir, "tiny"), image.TinyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if err := storage.CreateOverlay(ctx, art.Disk, disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.iso")
	workload := []byte(strings.Replace(dirtyScript, "\n", "\necho 10 >/proc/sys/kernel/hung_task_timeout_secs\n", 1))
	if err := cloudinit.WriteSeed(ctx, seed, cloudinit.Seed{InstanceID: "soak", Hostname: "soak", MAC: "52:54:00:00:00:f1",
		Address: "10.58.0.2/24", UserData: workload}); err != nil {
		t.Fatal(err)
	}
	held := os.Getenv("SHOAL_QEMU_SOAK_HELD") == "1"
	cfg := qemu.Config{Name: "soak", Accel: "tcg", CPUs: 1, CPUModel: "Nehalem", MemoryMiB: 128,
		Kernel: art.Kernel, Initrd: art.Initrd, Cmdline: art.Cmdline,
		Disks: []qemu.Disk{{Path: disk, Format: "qcow2", Serial: "disk0"}, {Path: seed, Format: "raw", ReadOnly: true, Serial: "cidata"}}}
	launch := func(k int, incoming bool) *qemu.Process {
		c := cfg
		c.Dir, c.Incoming, c.Paused = filepath.Join(dir, "q"+strconv.Itoa(k)), incoming, incoming && held
		p, err := qemu.Launch(ctx, log, "qemu-system-x86_64", c)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := launch(0, false)
	defer func() { _ = src.Kill() }()
	consoleOf := func(k int) string {
		b, _ := os.ReadFile(filepath.Join(dir, "q"+strconv.Itoa(k), qemu.ConsoleLog))
		return string(b)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(consoleOf(0), "running user-data") {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not start its workload: %s", consoleOf(0))
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(5 * time.Second)
	broken := 0
	for i := 1; i <= n; i++ {
		_ = os.RemoveAll(filepath.Join(dir, "q"+strconv.Itoa(i)))
		dst := launch(i, true)
		sock := filepath.Join(dir, "mig.sock")
		_ = os.Remove(sock)
		if err := dst.MigrateIncoming(ctx, "unix:"+sock); err != nil {
			t.Fatal(err)
		}
		if err := src.Migrate(ctx, "unix:"+sock, qemu.MigrateOptions{AutoConverge: true, DowntimeLimit: 50 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		q, err := src.WaitMigration(ctx, 20*time.Millisecond)
		if err != nil {
			t.Fatalf("migration %d: %v", i, err)
		}
		if held {
			for {
				if st, _ := dst.Status(ctx); st == "paused" {
					break
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
			if err := dst.Resume(ctx); err != nil {
				t.Fatal(err)
			}
		}
		_ = src.Kill()
		<-src.Exited()
		src.Close()
		src = dst
		select {
		case <-dst.Exited():
		case <-time.After(4 * time.Second):
		}
		c := consoleOf(i)
		crashed := false
		select {
		case <-dst.Exited():
			crashed = true
		default:
		}
		if crashed || strings.Contains(c, "BUG") || strings.Contains(c, "Oops") || strings.Contains(c, "panic") ||
			strings.Contains(c, "WARNING") || strings.Contains(c, "blocked for more") || strings.Contains(c, "corruption") {
			broken++
			tail := c[max(0, len(c)-1500):]
			t.Errorf("migration %d (%s, %d bytes, downtime %s): the guest broke: %s", i, q.TotalTime, q.TransferredBytes, q.Downtime, tail)
			if crashed {
				t.Fatalf("%d of %d migrations broke the guest", broken, i)
			}
			continue
		}
		t.Logf("migration %d: %s, %d bytes, downtime %s, throttle %d%%", i, q.TotalTime, q.TransferredBytes, q.Downtime, q.CPUThrottlePercent)
		_ = os.RemoveAll(filepath.Join(dir, "q"+strconv.Itoa(i-1)))
	}
	t.Logf("%d migrations, %d broke the guest", n, broken)
}
