package framerelay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"time"
)

// add appends frames captured at now and evicts what no longer fits.
func (c *Capture) add(now time.Time, frames [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range frames {
		c.buf = append(c.buf, Frame{At: now, Data: d})
		c.bytes += len(d)
		c.stats.Frames++
	}
	for len(c.buf) > 0 && (len(c.buf) > MaxBufferedFrames || c.bytes > MaxBufferedBytes ||
		(c.keep > 0 && now.Sub(c.buf[0].At) > c.keep)) {
		c.bytes -= len(c.buf[0].Data)
		c.buf[0] = Frame{}
		c.buf = c.buf[1:]
		c.first++
		c.stats.Evicted++
	}
	close(c.notify)
	c.notify = make(chan struct{})
}

// end records why the capture stopped and wakes followers.
func (c *Capture) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended != nil {
		return
	}
	if errors.Is(err, os.ErrClosed) {
		err = net.ErrClosed
	}
	c.ended = fmt.Errorf("capture on %s stopped: %w", c.ifname, err)
	close(c.notify)
	c.notify = make(chan struct{})
}

// indexLocked returns the index in buf of the first frame at or after t.
func (c *Capture) indexLocked(t time.Time) int {
	return sort.Search(len(c.buf), func(i int) bool { return !c.buf[i].At.Before(t) })
}

// Since returns the buffered frames captured at or after t, oldest first.
// Frame times come from time.Now, so a t taken on this host compares on the
// monotonic clock; a t without a monotonic reading (parsed, or from another
// host) compares on the wall clock.
func (c *Capture) Since(t time.Time) []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Frame(nil), c.buf[c.indexLocked(t):]...)
}

// Follow calls fn, in order, for every frame captured at or after since:
// first those already buffered, then new ones as they arrive. It returns
// when ctx ends (ctx.Err()), when fn returns an error (that error), or, after
// the last buffered frame, when the capture has stopped (an error wrapping
// net.ErrClosed after Close or the end of StartCapture's ctx, or
// unix.ENODEV once the interface was deleted, e.g. with its QEMU). A
// follower slower than the buffer's eviction skips the frames it missed.
func (c *Capture) Follow(ctx context.Context, since time.Time, fn func(Frame) error) error {
	c.mu.Lock()
	next := c.first + uint64(c.indexLocked(since))
	c.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.mu.Lock()
		next = max(next, c.first)
		batch := append([]Frame(nil), c.buf[next-c.first:]...)
		next += uint64(len(batch))
		wait, ended := c.notify, c.ended
		c.mu.Unlock()
		for _, f := range batch {
			if f.At.Before(since) {
				continue
			}
			if err := fn(f); err != nil {
				return err
			}
		}
		if len(batch) > 0 {
			continue
		}
		if ended != nil {
			return ended
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait:
		}
	}
}
