package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// coalescer sits between a TLS connection and its TCP socket. Go's TLS
// writes each record (16 KiB at most) with a system call of its own;
// while batching, the coalescer gathers them, and Flush sends them in
// one write. Outside a batch (the handshake, alerts, a record written by
// the reading side) it writes straight through.
//
// On the receiving side it reads the socket in large chunks: TLS asks for
// little at a time (a record's header, then its body), and each of those
// would otherwise be a system call of its own.
type coalescer struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
	// read side, used by TLS's reader only
	rbuf       []byte
	rpos, rend int
}

// readChunk is how much the receiving side reads from the socket at once.
const readChunk = 256 << 10

func (c *coalescer) Read(p []byte) (int, error) {
	if c.rpos == c.rend {
		if len(p) >= readChunk {
			return c.Conn.Read(p)
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, readChunk)
		}
		n, err := c.Conn.Read(c.rbuf)
		c.rpos, c.rend = 0, n
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, c.rbuf[c.rpos:c.rend])
	c.rpos += n
	return n, nil
}

// coalesceLimit is the most a batch holds before it is sent anyway.
const coalesceLimit = 1 << 20

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= coalesceLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// batch starts gathering writes.
func (c *coalescer) batch() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// Flush sends what was gathered and ends the batch.
func (c *coalescer) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.flushLocked()
}

func (c *coalescer) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// batched is a TLS connection over a coalescer: what splice copies into
// it goes out in as few writes as the records allow.
type batched struct {
	*tls.Conn
	co *coalescer
}

// newBatched wraps raw in TLS (client or server side per cfg use).
func newBatched(raw net.Conn, cfg *tls.Config, client bool) *batched {
	co := &coalescer{Conn: raw}
	if client {
		return &batched{tls.Client(co, cfg), co}
	}
	return &batched{tls.Server(co, cfg), co}
}

// Close closes the TCP connection at once, without TLS's close_notify:
// that alert would wait for a batch stuck on a silent peer (up to the 5 s
// write deadline crypto/tls gives it), and cutting a stream to a silent
// peer at once is what Close is for here.
func (b *batched) Close() error { return b.co.Conn.Close() }

// write sends p as TLS records in one batch.
func (b *batched) write(p []byte) error {
	b.co.batch()
	_, err := b.Conn.Write(p)
	if ferr := b.co.Flush(); err == nil {
		err = ferr
	}
	return err
}

// gatherRecords is how many TLS records copyGathered holds at most.
const gatherRecords = 64

// copyGathered copies the TLS connection src into dst until src ends.
// A TLS read yields one record (16 KiB at most); a reader fills buffers
// while a writer sends all those ready in one vectored write, so that a
// fast stream costs few system calls on dst.
func copyGathered(dst net.Conn, src *batched) error {
	free := make(chan []byte, gatherRecords)
	full := make(chan []byte, gatherRecords)
	for range gatherRecords {
		free <- make([]byte, 16<<10+256)
	}
	rerr := make(chan error, 1)
	go func() {
		defer close(full)
		for {
			b := <-free
			n, err := src.Read(b[:cap(b)])
			if n > 0 {
				full <- b[:n]
			} else {
				free <- b
			}
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				rerr <- err
				return
			}
		}
	}()
	var werr error
	for b := range full {
		bufs := net.Buffers{b}
	more:
		for len(bufs) < gatherRecords {
			select {
			case nb, ok := <-full:
				if !ok {
					break more
				}
				bufs = append(bufs, nb)
			default:
				break more
			}
		}
		sent := append([][]byte(nil), bufs...)
		if werr == nil {
			_, werr = bufs.WriteTo(dst)
			if werr != nil {
				src.Close() // ends the reader
			}
		}
		for _, s := range sent {
			free <- s[:cap(s)]
		}
	}
	if err := <-rerr; werr == nil {
		werr = err
	}
	return werr
}
