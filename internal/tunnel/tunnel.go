// Package tunnel carries a migration's streams between two hosts over
// mutual TLS held by the agents, so that QEMU itself speaks only plain
// streams over local unix sockets.
//
// On the target, a Listener accepts connections from the one source
// host; each connection opens with a byte naming its kind (the memory
// stream, the disk mirror) and is spliced to the local unix socket where
// QEMU serves that kind. On the source, a Forwarder listens on a local
// unix socket for QEMU and carries each connection to the target's
// Listener, or, for a Direct stream, to a TLS server of another kind
// (the target's QEMU, which decrypts the memory stream itself). Closing
// either end cuts every stream at once, which is how a migration that is
// called off stops QEMU without waiting for TCP to give up on a silent
// peer.
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/netguard"
)

// Kinds of streams.
const (
	Migration byte = 'M' // QEMU's migration stream
	Disk      byte = 'N' // NBD, for the disk mirror
	// Direct streams go to a TLS server that is not a Listener (QEMU's
	// own TLS listener), so they open with no kind byte.
	Direct byte = 0
)

// handshakeLimit bounds the TLS handshake and the kind byte of a stream.
const handshakeLimit = 5 * time.Second

// directHandshakeLimit bounds the handshake of a Direct stream. Its TLS
// server is the target's QEMU, which may still be starting when the
// source connects (the target's agent holds the connection until then),
// so it gets longer. Closing the Forwarder ends a handshake at once.
const directHandshakeLimit = 2 * time.Minute

// copyBuffer is the size of each direction's copy buffer.
const copyBuffer = 256 << 10

// streams tracks open connections so that Close can cut them all.
type streams struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// add registers conns; false if already closed (the caller closes them).
func (s *streams) add(conns ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	for _, c := range conns {
		s.conns[c] = struct{}{}
	}
	s.wg.Add(1)
	return true
}

func (s *streams) done(conns ...net.Conn) {
	s.mu.Lock()
	for _, c := range conns {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// closeAll cuts every stream and waits until their copies end.
func (s *streams) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// splice copies a to b and b to a until both directions end. When one
// side stops sending, the other is told (a half-close), so that QEMU's
// streams end as they would on a direct connection.
func splice(a, b net.Conn) error {
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn) {
		var err error
		if b, ok := dst.(*batched); ok {
			err = copyBatched(b, src)
		} else if b, ok := src.(*batched); ok {
			err = copyGathered(dst, b)
		} else {
			_, err = io.CopyBuffer(dst, src, make([]byte, copyBuffer))
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
		errc <- err
	}
	go cp(a, b)
	go cp(b, a)
	err := <-errc
	if err != nil {
		// One direction failed: the stream is broken, end the other.
		a.Close()
		b.Close()
	}
	err2 := <-errc
	a.Close()
	b.Close()
	return errors.Join(err, err2)
}

// copyBatched copies src into the TLS connection b until src ends, each
// read going out as one batch of records.
func copyBatched(b *batched, src net.Conn) error {
	buf := make([]byte, copyBuffer)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := b.write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Listener is the target's end: it takes streams from the source.
type Listener struct {
	l       net.Listener
	cfg     *tls.Config // nil: plain TCP
	targets map[byte]string
	log     *slog.Logger
	s       streams
	done    chan struct{}
}

// Listen listens on addr (IP:PORT; port 0 picks one) for streams from
// the address from (the source host's; others are refused), each carried
// to the unix socket targets[kind]. With cfg, every connection must be
// TLS, and cfg decides which peers it accepts; nil means plain TCP.
func Listen(addr string, from netip.Addr, cfg *tls.Config, targets map[byte]string, log *slog.Logger) (*Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen on %s: %w", addr, err)
	}
	l = netguard.OnlyFrom(l, from, log)
	t := &Listener{l: l, cfg: cfg, targets: targets, log: log, done: make(chan struct{})}
	go t.serve()
	return t, nil
}

// Addr is the address the listener listens on.
func (t *Listener) Addr() string { return t.l.Addr().String() }

// Close stops listening and cuts every stream.
func (t *Listener) Close() error {
	err := t.l.Close()
	<-t.done
	t.s.closeAll()
	return err
}

func (t *Listener) serve() {
	defer close(t.done)
	for {
		c, err := t.l.Accept()
		if err != nil {
			return
		}
		go t.handle(c)
	}
}

// handle reads a stream's kind and splices it to QEMU's socket.
func (t *Listener) handle(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(handshakeLimit))
	if t.cfg != nil {
		tc := newBatched(c, t.cfg, false)
		c = tc
		if err := tc.Handshake(); err != nil {
			t.log.Warn("tunnel: refused a connection", "from", c.RemoteAddr(), "err", err)
			c.Close()
			return
		}
	}
	var kind [1]byte
	if _, err := io.ReadFull(c, kind[:]); err != nil {
		c.Close()
		return
	}
	path, ok := t.targets[kind[0]]
	if !ok {
		t.log.Warn("tunnel: unknown stream kind", "kind", kind[0], "from", c.RemoteAddr())
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	q, err := net.DialTimeout("unix", path, handshakeLimit)
	if err != nil {
		t.log.Warn("tunnel: cannot reach QEMU", "socket", path, "err", err)
		c.Close()
		return
	}
	if !t.s.add(c, q) {
		c.Close()
		q.Close()
		return
	}
	defer t.s.done(c, q)
	if err := splice(c, q); err != nil {
		t.log.Debug("tunnel: stream ended", "kind", string(kind[:]), "err", err)
	}
}

// Forwarder is the source's end: a unix socket for QEMU whose
// connections it carries to the target.
type Forwarder struct {
	l      net.Listener
	path   string
	remote string
	kind   byte
	cfg    *tls.Config
	log    *slog.Logger
	s      streams
	done   chan struct{}
	ctx    context.Context // ends the handshakes under way at Close
	cancel context.CancelFunc
}

// Forward listens on the unix socket path (replacing a stale one) and
// carries each connection QEMU makes there to the Listener at remote, as
// a stream of kind. With cfg the link is TLS, cfg deciding which peer it
// accepts; nil means plain TCP.
func Forward(path, remote string, kind byte, cfg *tls.Config, log *slog.Logger) (*Forwarder, error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen on %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{l: l, path: path, remote: remote, kind: kind, cfg: cfg, log: log, done: make(chan struct{}),
		ctx: ctx, cancel: cancel}
	go f.serve()
	return f, nil
}

// Path is the unix socket QEMU connects to.
func (f *Forwarder) Path() string { return f.path }

// Close stops listening, cuts every stream and removes the socket.
func (f *Forwarder) Close() error {
	f.cancel()
	err := f.l.Close()
	<-f.done
	f.s.closeAll()
	_ = os.Remove(f.path)
	return err
}

func (f *Forwarder) serve() {
	defer close(f.done)
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		go f.handle(c)
	}
}

func (f *Forwarder) handle(c net.Conn) {
	limit := handshakeLimit
	if f.kind == Direct {
		limit = directHandshakeLimit
	}
	ctx, cancel := context.WithTimeout(f.ctx, limit)
	defer cancel()
	r, err := Dial(ctx, f.remote, f.kind, f.cfg)
	if err != nil {
		f.log.Warn("tunnel: cannot reach the target", "remote", f.remote, "err", err)
		c.Close()
		return
	}
	if !f.s.add(c, r) {
		c.Close()
		r.Close()
		return
	}
	defer f.s.done(c, r)
	if err := splice(c, r); err != nil {
		f.log.Debug("tunnel: stream ended", "kind", string([]byte{f.kind}), "err", err)
	}
}

// SendBuffer is the send buffer (SO_SNDBUF; Linux doubles it) of a
// stream Dial opens. Left to the kernel it grows to 4 MiB when the far
// end reads slower than this end writes, as a migration target does:
// QEMU on the source counts what sits there as sent, and at the switch
// the guest stays paused until that backlog has crossed. The receiving
// end's buffer (qemu.IncomingRecvBuffer) bounds the window anyway.
const SendBuffer = 128 << 10

// Dial opens a stream of kind to the Listener at remote.
func Dial(ctx context.Context, remote string, kind byte, cfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", remote)
	if err != nil {
		return nil, fmt.Errorf("tunnel: dial %s: %w", remote, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetWriteBuffer(SendBuffer)
	}
	if cfg != nil {
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(remote)
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		b := newBatched(c, cfg, true)
		if err := b.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("tunnel: dial %s: %w", remote, err)
		}
		c = b
	}
	if kind == Direct {
		return c, nil
	}
	if _, err := c.Write([]byte{kind}); err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel: open stream to %s: %w", remote, err)
	}
	return c, nil
}
