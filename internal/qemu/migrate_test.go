package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestArgsIncoming(t *testing.T) {
	cfg := Config{Name: "web1", Dir: "/var/lib/shoal/vms/web1", Accel: "tcg", CPUs: 1, MemoryMiB: 64}
	a, err := Args(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if hasArg(a, "-incoming defer") {
		t.Errorf("-incoming without Incoming: %q", a)
	}
	cfg.Incoming = true
	if a, err = Args(cfg); err != nil {
		t.Fatal(err)
	}
	if !hasArg(a, "-incoming defer") {
		t.Errorf("no -incoming defer with Incoming: %q", a)
	}
	if hasArg(a, "-object") || !hasArg(a, "-machine q35") {
		t.Errorf("a memory backend of its own without PreallocThreads: %q", a)
	}
	cfg.PreallocThreads = 2
	if a, err = Args(cfg); err != nil {
		t.Fatal(err)
	}
	// The backend keeps the default's name, which the stream refers to,
	// and its size is -m's (64 MiB and the TCG pad).
	if !hasArg(a, "-object memory-backend-ram,id=pc.ram,size=65544K,prealloc=on,prealloc-threads=2") ||
		!hasArg(a, "-machine q35,memory-backend=pc.ram") || !hasArg(a, "-m 65544K") {
		t.Errorf("PreallocThreads 2: %q", a)
	}
	for _, n := range []int{-1, maxPreallocThreads + 1} {
		cfg.PreallocThreads = n
		if _, err := Args(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("PreallocThreads %d: err = %v, want ErrInvalidConfig", n, err)
		}
	}
}

// residentKiB is the resident memory of process pid (VmRSS), in KiB.
func residentKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// sockDir makes a short dir for migration sockets, removed at cleanup.
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "sqm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func migrationCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestMigrateUnix(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	src := launch(t, testConfig(testDir(t), false))
	dstCfg := testConfig(testDir(t), false)
	// The target allocates the guest's memory at launch, as Shoal's do; the
	// source, launched as a VM starts, does not. The stream still fits.
	dstCfg.Incoming, dstCfg.PreallocThreads = true, 2
	dst := launch(t, dstCfg)

	if st, err := dst.Status(ctx); err != nil || st != "inmigrate" {
		t.Fatalf("target status = %q, %v; want inmigrate", st, err)
	}
	if kib := residentKiB(t, dst.Pid); kib < 64<<10 {
		t.Errorf("target resident %d KiB before any stream, want all of the guest's 64 MiB allocated", kib)
	}
	if s, err := src.QueryMigrate(ctx); err != nil || s.Status != "none" || !s.Done() {
		t.Fatalf("before migrating: %+v, %v; want none", s, err)
	}

	uri := "unix:" + filepath.Join(sockDir(t), "mig.sock")
	if err := dst.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if err := src.Migrate(ctx, uri, MigrateOptions{
		DowntimeLimit:  500 * time.Millisecond,
		BandwidthBytes: 1 << 30,
		AutoConverge:   true,
	}); err != nil {
		t.Fatal(err)
	}
	s, err := src.WaitMigration(ctx, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("%v (%+v)", err, s)
	}
	t.Logf("migrated: %+v", s)
	if s.Status != "completed" || s.TotalBytes < 64<<20 || s.TransferredBytes == 0 || s.TotalTime <= 0 {
		t.Errorf("completed status = %+v", s)
	}
	if st, err := src.Status(ctx); err != nil || st != "postmigrate" {
		t.Errorf("source status = %q, %v; want postmigrate", st, err)
	}
	for {
		st, err := dst.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st == "running" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("target status = %q, want running", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The events capability was on: the source reported MIGRATION events.
	var sawCompleted bool
	for len(src.QMP().Events()) > 0 {
		ev := <-src.QMP().Events()
		var d struct{ Status string }
		if ev.Name == "MIGRATION" && json.Unmarshal(ev.Data, &d) == nil && d.Status == "completed" {
			sawCompleted = true
		}
	}
	if !sawCompleted {
		t.Errorf("no MIGRATION completed event on the source")
	}
}

func TestMigrateCancelAndFail(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	src := launch(t, testConfig(testDir(t), false))
	sd := sockDir(t)

	// Nothing to cancel: no error.
	if err := src.CancelMigration(ctx); err != nil {
		t.Fatalf("cancel without migration: %v", err)
	}

	// Nobody listens: the migration fails (or migrate refuses at once).
	if err := src.Migrate(ctx, "unix:"+filepath.Join(sd, "nobody.sock"), MigrateOptions{}); err == nil {
		s, err := src.WaitMigration(ctx, 20*time.Millisecond)
		if !errors.Is(err, ErrMigrationFailed) || s.Status != "failed" {
			t.Fatalf("migrate to nobody: %+v, %v; want failed", s, err)
		}
		t.Logf("failed as expected: %v", err)
	} else {
		t.Logf("migrate to nobody refused: %v", err)
	}

	// A peer that accepts but never reads: the migration stalls in
	// "active" until cancelled, and the source keeps running.
	l, err := net.Listen("unix", filepath.Join(sd, "stall.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	if err := src.Migrate(ctx, "unix:"+filepath.Join(sd, "stall.sock"), MigrateOptions{BandwidthBytes: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-accepted:
		defer c.Close()
	case <-ctx.Done():
		t.Fatal("qemu never connected")
	}
	if s, err := src.QueryMigrate(ctx); err != nil || s.Done() {
		t.Fatalf("stalled migration: %+v, %v; want in progress", s, err)
	}
	if err := src.CancelMigration(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := src.WaitMigration(ctx, 20*time.Millisecond)
	if !errors.Is(err, ErrMigrationFailed) || s.Status != "cancelled" {
		t.Fatalf("after cancel: %+v, %v; want cancelled", s, err)
	}
	if st, err := src.Status(ctx); err != nil || st != "running" {
		t.Errorf("source after cancel = %q, %v; want running", st, err)
	}
}

func TestMigrateChecksBeforeQMP(t *testing.T) {
	p := &Process{Dir: "/nowhere"} // no QMP: the checks come first
	ctx := context.Background()
	if err := p.Migrate(ctx, "tcp:127.0.0.1:1", MigrateOptions{TLSHostname: "h1"}); err == nil {
		t.Error("tls hostname without tls creds accepted")
	}
	if _, err := p.PrepareIncoming(ctx, "", IncomingOptions{}); err == nil {
		t.Error("empty incoming uri accepted")
	}
	if err := p.MigrateContinue(ctx, ""); err == nil {
		t.Error("empty migrate-continue state accepted")
	}
	if err := p.SetAnnounce(ctx, -time.Millisecond); err == nil {
		t.Error("negative announce delay accepted")
	}
}
