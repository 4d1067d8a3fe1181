package framerelay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCaptureRecordsOnlyFramesToTheGuest checks the direction filter: frames
// the bridge forwards to the tap are captured (and still reach the tap's
// reader), frames the tap's reader writes are not. An unfiltered packet
// socket confirms which pkttype each direction carries.
func TestCaptureRecordsOnlyFramesToTheGuest(t *testing.T) {
	n := newTestNet(t)
	tap := n.addTap("tap0", false)
	c := n.capture("tap0", time.Minute)
	wire := n.injector("vout")
	var raw *os.File
	n.do(func() (err error) {
		raw, _, err = openPacket("tap0", unix.ETH_P_ALL, nil)
		return err
	})
	t.Cleanup(func() { raw.Close() })

	// The guest speaks first, so the bridge learns guestMAC is behind tap0.
	fromGuest := testFrame(bcastMAC, guestMAC, "from-guest", 60)
	if _, err := tap.Write(fromGuest); err != nil {
		t.Fatal(err)
	}
	toGuest := testFrame(guestMAC, peerMAC, "to-guest-unicast", 100)
	toAll := testFrame(bcastMAC, peerMAC, "to-guest-broadcast", 60)
	for _, f := range [][]byte{toGuest, toAll} {
		if err := wire.Send(f); err != nil {
			t.Fatal(err)
		}
	}

	waitFor(t, "both frames to the guest in the capture", func() bool {
		return len(tagged(c.Since(time.Time{}))) >= 2
	})
	time.Sleep(20 * time.Millisecond) // give a wrongly captured frame time to show up
	got := c.Since(time.Time{})
	if tags := tagged(got); !slices.Equal(tags, []string{"to-guest-unicast", "to-guest-broadcast"}) {
		t.Fatalf("captured %q, want only the two frames to the guest", tags)
	}
	for i, want := range [][]byte{toGuest, toAll} {
		if !bytes.Equal(got[i].Data, want) {
			t.Errorf("captured frame %d differs from the frame sent:\n got %x\nwant %x", i, got[i].Data, want)
		}
	}
	// The tap's reader (QEMU's role) still gets its frames.
	for _, want := range [][]byte{toGuest, toAll} {
		readTap(t, tap, 0, func(f []byte) bool { return bytes.Equal(f, want) })
	}

	// Which pkttype does each direction carry on a tap?
	pkttypes := map[string]uint8{}
	raw.SetReadDeadline(time.Now().Add(3 * time.Second))
	rc, _ := raw.SyscallConn()
	buf := make([]byte, 2048)
	for len(pkttypes) < 3 {
		var nr int
		var from unix.Sockaddr
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			nr, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil || rerr != nil {
			t.Fatalf("raw socket read: %v %v (pkttypes so far %v)", err, rerr, pkttypes)
		}
		if tags := tagged([]Frame{{Data: buf[:nr]}}); len(tags) == 1 {
			pkttypes[tags[0]] = from.(*unix.SockaddrLinklayer).Pkttype
		}
	}
	t.Logf("pkttype on the tap: %v (OUTGOING=%d HOST=%d BROADCAST=%d OTHERHOST=%d)", pkttypes,
		unix.PACKET_OUTGOING, unix.PACKET_HOST, unix.PACKET_BROADCAST, unix.PACKET_OTHERHOST)
	if pkttypes["to-guest-unicast"] != unix.PACKET_OUTGOING || pkttypes["to-guest-broadcast"] != unix.PACKET_OUTGOING {
		t.Errorf("frames to the guest: pkttype %v, want PACKET_OUTGOING", pkttypes)
	}
	if pkttypes["from-guest"] == unix.PACKET_OUTGOING {
		t.Errorf("frame from the guest has pkttype PACKET_OUTGOING")
	}
}

// TestSinceFiltersByTime checks that Since returns exactly the frames
// captured at or after its argument.
func TestSinceFiltersByTime(t *testing.T) {
	n := newTestNet(t)
	n.addTap("tap0", false)
	c := n.capture("tap0", time.Minute)
	wire := n.injector("vout")
	send := func(tags ...string) {
		for _, tag := range tags {
			if err := wire.Send(testFrame(bcastMAC, peerMAC, tag, 60)); err != nil {
				t.Fatal(err)
			}
		}
	}
	send("a1", "a2", "a3")
	waitFor(t, "first batch", func() bool { return len(tagged(c.Since(time.Time{}))) == 3 })
	mid := time.Now()
	send("b1", "b2")
	waitFor(t, "second batch", func() bool { return len(tagged(c.Since(time.Time{}))) == 5 })

	if got := tagged(c.Since(mid)); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Errorf("Since(mid) = %q, want [b1 b2]", got)
	}
	if got := tagged(c.Since(time.Time{})); len(got) != 5 {
		t.Errorf("Since(zero) = %q, want all 5", got)
	}
	if got := c.Since(time.Now().Add(time.Hour)); len(got) != 0 {
		t.Errorf("Since(future) returned %d frames", len(got))
	}
	all := c.Since(time.Time{})
	if got := c.Since(all[len(all)-1].At); len(got) == 0 || !got[0].At.Equal(all[len(all)-1].At) {
		t.Errorf("Since(t) must include a frame captured exactly at t")
	}
}

// TestInjectReachesTapReader checks that injected frames are read from the
// tap fd byte for byte, as the guest's NIC would receive them.
func TestInjectReachesTapReader(t *testing.T) {
	n := newTestNet(t)
	tap := n.addTap("tap0", false)
	c := n.capture("tap0", time.Minute)
	in := n.injector("tap0")
	var sent [][]byte
	for i, size := range []int{60, 333, 1514} {
		f := testFrame(guestMAC, peerMAC, "inject-"+string(rune('a'+i)), size)
		for j := 30; j < len(f); j++ {
			f[j] = byte(j * (i + 7))
		}
		if err := in.Send(f); err != nil {
			t.Fatalf("Send %d bytes: %v", size, err)
		}
		sent = append(sent, f)
	}
	for _, want := range sent {
		got := readTap(t, tap, 0, func(f []byte) bool { return bytes.Equal(f[:20], want[:20]) })
		if !bytes.Equal(got, want) {
			t.Errorf("tap reader got %d bytes %x..., want %d bytes %x...", len(got), got[:32], len(want), want[:32])
		}
	}
	// Injected frames take the tap's transmit path, so a capture on the
	// same tap sees them too.
	waitFor(t, "injected frames in a capture of the same tap", func() bool {
		return len(tagged(c.Since(time.Time{}))) == len(sent)
	})

	if err := in.Send(make([]byte, 10)); err == nil {
		t.Error("Send of a 10-byte frame succeeded")
	}
	if err := in.Send(make([]byte, 1515+100)); !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("Send beyond the MTU: %v, want EMSGSIZE", err)
	}
	var err error
	n.do(func() error { _, err = OpenInjector("nosuchdev"); return nil })
	if !errors.Is(err, unix.ENODEV) {
		t.Errorf("OpenInjector(nosuchdev) = %v, want ENODEV", err)
	}
}

// TestFollowDeliversBufferedThenLive checks Follow's order and endings.
func TestFollowDeliversBufferedThenLive(t *testing.T) {
	n := newTestNet(t)
	n.addTap("tap0", false)
	c := n.capture("tap0", time.Minute)
	wire := n.injector("vout")
	send := func(tag string) {
		if err := wire.Send(testFrame(bcastMAC, peerMAC, tag, 60)); err != nil {
			t.Fatal(err)
		}
	}
	send("old")
	waitFor(t, "old frame", func() bool { return len(tagged(c.Since(time.Time{}))) == 1 })
	since := time.Now()
	send("buffered-1")
	send("buffered-2")
	waitFor(t, "buffered frames", func() bool { return len(tagged(c.Since(since))) == 2 })

	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan string, 16)
	done := make(chan error, 1)
	go func() {
		done <- c.Follow(ctx, since, func(f Frame) error {
			if f.At.Before(since) {
				t.Errorf("Follow delivered a frame from before since")
			}
			for _, tag := range tagged([]Frame{f}) {
				got <- tag
			}
			return nil
		})
	}()
	next := func() string {
		select {
		case tag := <-got:
			return tag
		case <-time.After(3 * time.Second):
			t.Fatal("Follow delivered nothing for 3 s")
			return ""
		}
	}
	for _, want := range []string{"buffered-1", "buffered-2"} {
		if tag := next(); tag != want {
			t.Fatalf("Follow delivered %q, want %q", tag, want)
		}
	}
	send("live-1")
	send("live-2")
	for _, want := range []string{"live-1", "live-2"} {
		if tag := next(); tag != want {
			t.Fatalf("Follow delivered %q, want %q", tag, want)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow after cancel = %v, want context.Canceled", err)
	}

	// fn's error ends Follow.
	stop := errors.New("stop")
	if err := c.Follow(t.Context(), time.Time{}, func(Frame) error { return stop }); err != stop {
		t.Errorf("Follow with failing fn = %v, want %v", err, stop)
	}
	// After Close: the buffer is delivered, then net.ErrClosed.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var count int
	err := c.Follow(t.Context(), since, func(f Frame) error { count += len(tagged([]Frame{f})); return nil })
	if !errors.Is(err, net.ErrClosed) || count != 4 {
		t.Errorf("Follow after Close = %v with %d frames, want net.ErrClosed with 4", err, count)
	}
	if got := tagged(c.Since(since)); len(got) != 4 {
		t.Errorf("Since after Close = %q, want 4 frames", got)
	}
}

// TestCaptureEviction checks the memory caps and keep, without sockets.
func TestCaptureEviction(t *testing.T) {
	c := &Capture{keep: time.Second, notify: make(chan struct{})}
	t0 := time.Now()
	for i := range MaxBufferedFrames + 10 {
		d := make([]byte, 64)
		binary.BigEndian.PutUint32(d, uint32(i))
		c.add(t0.Add(time.Duration(i)*time.Microsecond), [][]byte{d})
	}
	all := c.Since(time.Time{})
	if len(all) != MaxBufferedFrames || binary.BigEndian.Uint32(all[0].Data) != 10 {
		t.Fatalf("after %d frames: %d buffered starting at #%d, want %d starting at #10",
			MaxBufferedFrames+10, len(all), binary.BigEndian.Uint32(all[0].Data), MaxBufferedFrames)
	}
	c.add(t0.Add(2*time.Second), [][]byte{make([]byte, MaxBufferedBytes/2), make([]byte, MaxBufferedBytes/2)})
	if all := c.Since(time.Time{}); len(all) != 2 {
		t.Errorf("after keep elapsed and a 4 MiB burst: %d frames buffered, want 2", len(all))
	}
	if st := c.stats; st.Evicted != MaxBufferedFrames+10 || st.Frames != MaxBufferedFrames+12 {
		t.Errorf("stats %+v", st)
	}
}

// TestCaptureEndsWhenTapIsDeleted plays QEMU exiting on the source host:
// the tap goes away, the capture ends, and its buffer stays readable.
func TestCaptureEndsWhenTapIsDeleted(t *testing.T) {
	n := newTestNet(t)
	tap := n.addTap("tap0", false)
	c := n.capture("tap0", time.Minute)
	wire := n.injector("vout")
	if err := wire.Send(testFrame(bcastMAC, peerMAC, "last-words", 60)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "frame", func() bool { return len(tagged(c.Since(time.Time{}))) == 1 })

	start := time.Now()
	tap.Close() // a non-persistent tap is deleted with its last fd
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var got []string
	err := c.Follow(ctx, time.Time{}, func(f Frame) error { got = append(got, tagged([]Frame{f})...); return nil })
	if !errors.Is(err, unix.ENODEV) || !slices.Equal(got, []string{"last-words"}) {
		t.Fatalf("Follow after the tap was deleted = %v with %q, want ENODEV after [last-words]", err, got)
	}
	t.Logf("capture noticed the deleted tap after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if tags := tagged(c.Since(time.Time{})); len(tags) != 1 {
		t.Errorf("Since after the tap went = %q", tags)
	}
}
