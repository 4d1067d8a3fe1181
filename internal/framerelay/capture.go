// Package framerelay rescues the Ethernet frames that reach a VM's tap on the
// source host of a live migration after the VM has stopped reading them, and
// replays them into the VM's tap on the destination host.
//
// A Capture records, with a packet socket, every frame the kernel transmits
// through a tap towards its reader (QEMU, hence the guest); the socket gets a
// copy, so QEMU's own reads are undisturbed. An Injector transmits frames
// through a tap so that its reader receives them as if the bridge had
// forwarded them. WriteFrame and ReadFrame carry frames between hosts.
//
// Frames are normalised on capture: TCP segmentation-offload super-frames are
// cut into wire-sized segments and partial checksums are completed, so the
// frames can be injected on any tap regardless of its offload settings.
package framerelay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Memory caps of a Capture's buffer; the oldest frames go first.
const (
	MaxBufferedFrames = 4096
	MaxBufferedBytes  = 4 << 20
)

// Frame is one Ethernet frame (destination MAC first, no FCS) with the time
// the capture read it. Data is shared between callers and must not be
// modified.
type Frame struct {
	At   time.Time
	Data []byte
}

// Stats counts what a Capture saw.
type Stats struct {
	Frames      uint64 // frames buffered (after splitting super-frames)
	Evicted     uint64 // frames dropped from the buffer, oldest first
	Offloaded   uint64 // frames that arrived as TSO super-frames or with a partial checksum
	Unsupported uint64 // offloaded frames that could not be normalised
	KernelDrops uint64 // frames the kernel dropped because we read too slowly
}

// Capture records the frames an interface transmits. It is safe for
// concurrent use.
type Capture struct {
	ifname  string
	ifindex int
	keep    time.Duration
	f       *os.File
	done    chan struct{} // closed when the reader goroutine has returned

	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex
	stop   func() bool // detaches the context watcher
	buf    []Frame     // oldest first
	first  uint64      // sequence number of buf[0]
	bytes  int
	notify chan struct{} // closed and replaced whenever buf grows or the capture ends
	ended  error         // why the capture stopped, once it has
	stats  Stats
}

// StartCapture starts recording the frames that the kernel transmits through
// ifname towards its reader: for a tap, the frames going to the guest
// (sockaddr_ll pkttype PACKET_OUTGOING). Frames the reader writes into the
// tap are not recorded. ifname is looked up in the calling thread's network
// namespace; the capture stays in that namespace. The buffer keeps at least
// the last keep of frames, within MaxBufferedFrames and MaxBufferedBytes;
// keep <= 0 keeps as much as those caps allow. The capture runs until Close
// or until ctx ends; its buffer stays readable after that.
func StartCapture(ctx context.Context, ifname string, keep time.Duration) (*Capture, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	f, ifindex, err := openPacket(ifname, unix.ETH_P_ALL, setupCapture)
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	c := &Capture{
		ifname:  ifname,
		ifindex: ifindex,
		keep:    keep,
		f:       f,
		done:    make(chan struct{}),
		notify:  make(chan struct{}),
	}
	go c.read()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	c.mu.Lock()
	c.stop = stop
	c.mu.Unlock()
	return c, nil
}

// linkPoll is how often a capture whose link went down checks whether the
// link still exists.
const linkPoll = 100 * time.Millisecond

// linkGone returns an error if the captured interface no longer exists in
// the socket's namespace.
func (c *Capture) linkGone(rc syscall.RawConn) error {
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ierr = err
			return
		}
		ifr.SetUint32(uint32(c.ifindex))
		ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFNAME, ifr)
	}); err != nil {
		return err
	}
	if errors.Is(ierr, unix.ENODEV) {
		return fmt.Errorf("interface %s was deleted: %w", c.ifname, ierr)
	}
	return nil
}

// read is the capture loop; it returns when the socket is closed or fails.
func (c *Capture) read() {
	defer close(c.done)
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.end(err)
		return
	}
	buf := make([]byte, vnetHdrLen+256<<10)
	polling := false
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		switch {
		case errors.Is(err, unix.ENETDOWN) || errors.Is(err, os.ErrDeadlineExceeded):
			// The link went down. The kernel resumes delivery if it comes
			// back up, but says nothing if it is deleted (a tap goes with
			// its QEMU), so poll for that while it stays quiet.
			if err := c.linkGone(rc); err != nil {
				c.end(err)
				return
			}
			polling = true
			c.f.SetReadDeadline(time.Now().Add(linkPoll))
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			c.end(err)
			return
		}
		now := time.Now()
		if polling {
			polling = false
			c.f.SetReadDeadline(time.Time{})
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_OUTGOING {
			continue // the socket filter should have dropped it already
		}
		if n < vnetHdrLen || n > len(buf) {
			c.count(func(s *Stats) { s.Unsupported++ }) // truncated
			continue
		}
		h := parseVnetHdr(buf)
		frames, err := normalize(h, buf[vnetHdrLen:n])
		if h.gsoType != unix.VIRTIO_NET_HDR_GSO_NONE || h.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			c.count(func(s *Stats) { s.Offloaded++ })
		}
		if err != nil {
			c.count(func(s *Stats) { s.Unsupported++ })
			continue
		}
		c.add(now, frames)
	}
}

func (c *Capture) count(fn func(*Stats)) {
	c.mu.Lock()
	fn(&c.stats)
	c.mu.Unlock()
}

// Close stops the capture and releases its socket. Buffered frames stay
// readable through Since and Follow.
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		stop := c.stop
		c.mu.Unlock()
		if stop != nil {
			stop()
		}
		c.end(net.ErrClosed)
		if stats, err := c.kernelStats(); err == nil {
			c.count(func(s *Stats) { s.KernelDrops += uint64(stats.Drops) })
		}
		if err := c.f.Close(); err != nil {
			c.closeErr = fmt.Errorf("close capture on %s: %w", c.ifname, err)
		}
		<-c.done
	})
	return c.closeErr
}

// kernelStats reads (and resets) the socket's PACKET_STATISTICS.
func (c *Capture) kernelStats() (*unix.TpacketStats, error) {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var st *unix.TpacketStats
	var serr error
	if err := rc.Control(func(fd uintptr) {
		st, serr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	}); err != nil {
		return nil, err
	}
	return st, serr
}

// Stats returns the capture's counters so far.
func (c *Capture) Stats() Stats {
	if st, err := c.kernelStats(); err == nil {
		c.count(func(s *Stats) { s.KernelDrops += uint64(st.Drops) })
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}
