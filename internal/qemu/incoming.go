package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// IncomingRecvBuffer is the receive buffer (SO_RCVBUF; Linux doubles it)
// of a stream taken by ListenIncoming. Left to the kernel, the buffer of
// a migration target's socket grows to many megabytes while QEMU, busy
// loading pages, reads slower than the source sends: when the source
// stops the guest and sends its last pages, the target still has that
// much to read before it can resume the guest, and the guest stays
// paused the while (in a two-host lab, 11 MB of backlog: tens of
// milliseconds of pause). 512 KiB still covers a 10 Gbit/s link's
// round trip of 0.4 ms.
const IncomingRecvBuffer = 512 << 10

// incomingFirstByte bounds how long an accepted connection may stay
// silent before it is dropped: a migration source sends at once.
const incomingFirstByte = 30 * time.Second

// incomingFD is the name under which the accepted stream is given to QEMU.
const incomingFD = "migration-in"

// An IncomingListener waits for a migration stream on behalf of a QEMU
// launched with Config.Incoming, and gives QEMU the first connection
// that sends anything (getfd and migrate-incoming "fd:"). Listening in
// the caller's process rather than QEMU's lets it size the socket's
// receive buffer (IncomingRecvBuffer), and a connection that opens and
// closes without a word (a port scan) is dropped instead of failing the
// migration, as it would if QEMU listened itself.
type IncomingListener struct {
	p   *Process
	l   net.Listener
	log *slog.Logger

	mu      sync.Mutex
	waiting map[net.Conn]struct{} // accepted, not yet sent anything
	handed  bool                  // a stream has gone to QEMU
	closed  bool
}

// ListenIncoming sets the capabilities and parameters of o on p, a
// target launched with Config.Incoming, and listens on addr
// ("HOST:PORT"; port 0 picks a free one) for the source's stream. Give
// the source "tcp:" + Addr().
func (p *Process) ListenIncoming(ctx context.Context, log *slog.Logger, addr string, o IncomingOptions) (*IncomingListener, error) {
	if err := p.setIncoming(ctx, o); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, IncomingRecvBuffer)
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("qemu %s: listen for the incoming migration on %s: %w", p.Dir, addr, err)
	}
	il := &IncomingListener{p: p, l: l, log: log, waiting: map[net.Conn]struct{}{}}
	go il.accept()
	return il, nil
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

// consider hands c to QEMU if it is the first connection to send.
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
	il.mu.Unlock()
	_ = il.l.Close() // one stream per migration
	for o := range others {
		o.Close()
	}
	if err := il.handOver(c); err != nil {
		// Closing c fails the source's migration at once.
		il.log.Warn("could not give the incoming migration's stream to QEMU", "err", err)
	}
	c.Close() // QEMU holds its own descriptor
}

func (il *IncomingListener) handOver(c *net.TCPConn) error {
	f, err := c.File()
	if err != nil {
		return fmt.Errorf("qemu %s: incoming migration: %w", il.p.Dir, err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := il.p.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": incomingFD}, f, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", il.p.Dir, err)
	}
	if err := il.p.MigrateIncoming(ctx, "fd:"+incomingFD); err != nil {
		// QEMU's copy would keep the source's stream open.
		_ = il.p.qmp.Execute(ctx, "closefd", map[string]any{"fdname": incomingFD}, nil)
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
