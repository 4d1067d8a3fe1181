package qemu

import (
	"net"
	"testing"
	"time"
)

// The target's own listener hands the first connection that sends to
// QEMU: one that opens and closes at once (a port scan) and one that
// stays silent do not spoil the migration. It listens before the
// target's QEMU runs: the source starts first, and its stream waits
// until the target is launched and attached.
func TestListenIncoming(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	src := launch(t, testConfig(testDir(t), false))
	il, err := ListenIncoming(ctx, testLog(t), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer il.Close()
	scan, err := net.Dial("tcp", il.Addr())
	if err != nil {
		t.Fatal(err)
	}
	scan.Close()
	silent, err := net.Dial("tcp", il.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(50 * time.Millisecond)
	if err := src.Migrate(ctx, "tcp:"+il.Addr(), MigrateOptions{BandwidthBytes: UnlimitedBandwidth}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// (This guest's stream is small enough to fit in the sockets'
	// buffers: the source may even say completed already.)
	if q, err := src.QueryMigrate(ctx); err != nil || q.Status == "failed" || q.Status == "cancelled" {
		t.Fatalf("source migration %+v, %v before the target runs; want it waiting", q, err)
	}
	cfg := testConfig(testDir(t), false)
	cfg.Incoming = true
	dst := launch(t, cfg)
	if err := il.Attach(ctx, dst, IncomingOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := il.Attach(ctx, dst, IncomingOptions{}); err == nil {
		t.Error("a second Attach succeeded")
	}
	s, err := src.WaitMigration(ctx, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("%v (%+v)", err, s)
	}
	for st := ""; st != "running"; time.Sleep(10 * time.Millisecond) {
		if st, err = dst.Status(ctx); err != nil || ctx.Err() != nil {
			t.Fatalf("target status %q, %v; want running", st, err)
		}
	}
	// The silent connection was dropped with the listener, which takes
	// no more.
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); err == nil {
		t.Errorf("silent connection still open (read %d bytes)", n)
	}
	if c, err := net.Dial("tcp", il.Addr()); err == nil {
		c.Close()
		t.Error("the listener still accepts after the handover")
	}
	if err := il.Close(); err != nil {
		t.Errorf("close after the handover: %v", err)
	}
}
