package qemu

import (
	"errors"
	"net"
	"net/netip"
	"os"
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
	il, err := ListenIncoming(ctx, testLog(t), "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"))
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
	// A stranger (another address than the source's) who speaks first
	// does not take the migration's place.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}
	stranger, err := d.Dial("tcp", il.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, err := stranger.Write([]byte("not a migration stream")); err != nil {
		t.Fatal(err)
	}
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

// A stream that came before any QEMU was attached is dropped when the
// listener closes (the migration is called off before the target's QEMU
// runs), and the closed listener takes no QEMU.
func TestIncomingListenerCloseBeforeAttach(t *testing.T) {
	il, err := ListenIncoming(t.Context(), testLog(t), "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", il.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("QEVM")); err != nil {
		t.Fatal(err)
	}
	// Taken as the stream: the listener stops accepting.
	deadline := time.Now().Add(5 * time.Second)
	for {
		o, err := net.DialTimeout("tcp", il.Addr(), time.Second)
		if err != nil {
			break
		}
		o.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts after a stream came")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := il.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the waiting stream is still open after Close (read %d, %v)", n, err)
	}
	if err := il.Attach(t.Context(), &Process{Dir: "x"}, IncomingOptions{}); err == nil {
		t.Error("Attach after Close succeeded")
	}
}
