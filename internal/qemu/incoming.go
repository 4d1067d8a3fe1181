package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoalvm/shoal/internal/netguard"
)

// IncomingRecvBuffer is the receive buffer (SO_RCVBUF; Linux doubles it)
// of a stream taken by ListenIncoming. Left to the kernel, the buffer of
// a migration target's socket grows to many megabytes while QEMU, busy
// loading pages, reads slower than the source sends: when the source
// stops the guest and sends its last pages, the target still has that
// much to read before it can resume the guest, and the guest stays
// paused the while (in a two-host lab, 11 MB of backlog: tens of
// milliseconds of pause). 256 KiB (a window of about that much) still
// carries 1 GB/s over a round trip of 0.2 ms, a 10 Gbit/s LAN's; in the
// lab, against 512 KiB, it cut the median pause from 51 to 43 ms with
// the total time unchanged (24 migrations each).
const IncomingRecvBuffer = 256 << 10

// incomingFirstByte bounds how long an accepted connection may stay
// silent before it is dropped: a migration source sends at once.
const incomingFirstByte = 30 * time.Second

// incomingFD is the name under which the accepted stream is given to QEMU.
const incomingFD = "migration-in"

// An IncomingListener waits for a migration stream on behalf of a QEMU
// launched with Config.Incoming, and gives QEMU the first connection
// that sends anything (getfd and migrate-incoming "fd:"). Listening in
// the caller's process rather than QEMU's lets it size the socket's
// receive buffer (IncomingRecvBuffer); a connection that opens and
// closes without a word (a port scan) is dropped instead of failing the
// migration, as it would if QEMU listened itself; and it can listen
// before that QEMU is launched (see Attach), so that the source need not
// wait for the launch to start.
type IncomingListener struct {
	l   net.Listener
	log *slog.Logger

	mu      sync.Mutex
	p       *Process              // set by Attach
	waiting map[net.Conn]struct{} // accepted, not yet sent anything
	ready   *net.TCPConn          // the stream, come before Attach
	handed  bool                  // the stream has come
	closed  bool
}

// ListenIncoming listens on addr ("HOST:PORT"; port 0 picks a free one)
// for a migration stream from the address from (the source host's; a
// connection from anywhere else is refused), to be given to the QEMU
// that Attach names. Give the source "tcp:" + Addr().
func ListenIncoming(ctx context.Context, log *slog.Logger, addr string, from netip.Addr) (*IncomingListener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, IncomingRecvBuffer)
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("qemu: listen for an incoming migration on %s: %w", addr, err)
	}
	il := &IncomingListener{l: netguard.OnlyFrom(l, from, log), log: log, waiting: map[net.Conn]struct{}{}}
	go il.accept()
	return il, nil
}

// Attach sets the capabilities and parameters of o on p, a target
// launched with Config.Incoming, and gives p the stream: at once if the
// source has connected already, else as soon as it does. Until then the
// source's writes wait in the socket's buffers.
func (il *IncomingListener) Attach(ctx context.Context, p *Process, o IncomingOptions) error {
	if !il.free() {
		return fmt.Errorf("qemu %s: incoming migration: %w", p.Dir, errListenerTaken)
	}
	if err := p.setIncoming(ctx, o); err != nil {
		return err
	}
	il.mu.Lock()
	if il.p != nil || il.closed {
		il.mu.Unlock()
		return fmt.Errorf("qemu %s: incoming migration: %w", p.Dir, errListenerTaken)
	}
	il.p = p
	c := il.ready
	il.ready = nil
	il.mu.Unlock()
	if c == nil {
		return nil
	}
	return il.give(p, c)
}

var errListenerTaken = errors.New("listener already attached or closed")

// free reports whether no QEMU was attached yet and il is open.
func (il *IncomingListener) free() bool {
	il.mu.Lock()
	defer il.mu.Unlock()
	return il.p == nil && !il.closed
}

// Addr is the address the listener took, "HOST:PORT".
func (il *IncomingListener) Addr() string { return il.l.Addr().String() }

// Close stops listening and drops connections not handed over. A stream
// QEMU already has goes on.
func (il *IncomingListener) Close() error {
	err := il.l.Close()
	il.mu.Lock()
	conns := il.waiting
	il.waiting = map[net.Conn]struct{}{}
	if il.ready != nil {
		conns[il.ready] = struct{}{}
		il.ready = nil
	}
	il.closed = true
	il.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	if errors.Is(err, net.ErrClosed) {
		return nil // by the handover, or closed twice
	}
	return err
}

func (il *IncomingListener) accept() {
	for {
		c, err := il.l.Accept()
		if err != nil {
			return
		}
		il.mu.Lock()
		if il.handed || il.closed {
			il.mu.Unlock()
			c.Close()
			continue
		}
		il.waiting[c] = struct{}{}
		il.mu.Unlock()
		go il.consider(c.(*net.TCPConn))
	}
}

// consider takes c as the stream if it is the first connection to send,
// and gives it to QEMU if Attach has named it already.
func (il *IncomingListener) consider(c *net.TCPConn) {
	spoke := waitFirstByte(c, incomingFirstByte)
	il.mu.Lock()
	_, mine := il.waiting[c]
	delete(il.waiting, c)
	if !spoke || !mine || il.handed || il.closed {
		il.mu.Unlock()
		if !spoke && mine {
			il.log.Warn("dropped a connection to the incoming migration's port that sent nothing", "from", c.RemoteAddr())
		}
		c.Close()
		return
	}
	il.handed = true
	others := il.waiting
	il.waiting = map[net.Conn]struct{}{}
	p := il.p
	if p == nil {
		il.ready = c // Attach gives it
	}
	il.mu.Unlock()
	_ = il.l.Close() // one stream per migration
	for o := range others {
		o.Close()
	}
	if p == nil {
		return
	}
	if err := il.give(p, c); err != nil {
		il.log.Warn("could not give the incoming migration's stream to QEMU", "err", err)
	}
}

// give hands c to p. c is closed afterwards (QEMU holds its own
// descriptor); on a failure, that fails the source's migration at once.
func (il *IncomingListener) give(p *Process, c *net.TCPConn) error {
	defer c.Close()
	f, err := c.File()
	if err != nil {
		return fmt.Errorf("qemu %s: incoming migration: %w", p.Dir, err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": incomingFD}, f, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	if err := p.MigrateIncoming(ctx, "fd:"+incomingFD); err != nil {
		// QEMU's copy would keep the source's stream open.
		_ = p.qmp.Execute(ctx, "closefd", map[string]any{"fdname": incomingFD}, nil)
		return err
	}
	return nil
}

// waitFirstByte reports whether c has data to read within d, without
// reading it.
func waitFirstByte(c *net.TCPConn, d time.Duration) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		return false
	}
	defer c.SetReadDeadline(time.Time{})
	var n int
	var rerr error
	buf := make([]byte, 1)
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	return err == nil && rerr == nil && n > 0
}
