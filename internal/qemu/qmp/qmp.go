// Package qmp is a client for the QEMU Machine Protocol (QMP), the JSON
// protocol QEMU speaks on its control monitor socket.
//
// A Client owns one connection. Commands may be issued concurrently: each
// request carries a unique "id" that QEMU echoes in its reply, so replies are
// matched to callers regardless of order. Asynchronous events are delivered
// on a buffered channel; when the consumer falls behind, the oldest buffered
// events are dropped so the reader never blocks (see DroppedEvents).
//
// When the connection ends (QEMU exited, or Close was called), every pending
// and later Execute fails with an error wrapping ErrClosed, and the Events
// channel is closed.
//
// QEMU serves one QMP client per monitor socket at a time: a second Dial to
// a socket that already has a client gets no greeting until the first one
// disconnects, so Dial waits until its context ends.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is wrapped by the errors of calls that fail because the
// connection to QEMU is gone (QEMU exited, the socket broke, or Close).
var ErrClosed = errors.New("qmp: connection closed")

// EventBuffer is how many events the Events channel holds before the oldest
// are dropped.
const EventBuffer = 256

// defaultGreetingTimeout bounds the wait for QEMU's greeting when the
// caller's context has no deadline.
const defaultGreetingTimeout = 10 * time.Second

// Event is an asynchronous QMP event such as STOP, RESUME or SHUTDOWN.
type Event struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time
}

// Error is an "error" reply from QEMU to a command.
type Error struct {
	Class string `json:"class"` // e.g. "GenericError", "CommandNotFound"
	Desc  string `json:"desc"`
	// Command is the command that failed; filled in by the client, not QEMU.
	Command string `json:"-"`
}

func (e *Error) Error() string {
	if e.Command == "" {
		return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc)
	}
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Client is a connection to one QEMU QMP socket. Its methods are safe for
// concurrent use.
type Client struct {
	conn net.Conn

	wmu sync.Mutex // serializes writes of whole requests

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	dead    error            // non-nil once the connection is unusable
	last    map[string]Event // the latest event of each name

	events  chan Event
	dropped atomic.Uint64
	done    chan struct{} // closed when the reader has exited

	closeOnce sync.Once
	closeErr  error
}

type reply struct {
	ret json.RawMessage
	err error
}

// message is any line QEMU sends: greeting, reply or event.
type message struct {
	QMP       json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID json.RawMessage `json:"id"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// Dial connects to the QMP socket at socketPath, reads QEMU's greeting and
// negotiates capabilities (qmp_capabilities), after which the client is in
// command mode. If ctx has no deadline, the greeting wait is bounded by 10s.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultGreetingTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socketPath, err)
	}

	dec := json.NewDecoder(conn)
	// Abort the blocking greeting read when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	var greeting message
	err = dec.Decode(&greeting)
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("qmp: no greeting on %s (is another client connected?): %w", socketPath, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting on %s: %w", socketPath, err)
	}
	if len(greeting.QMP) == 0 {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: unexpected first message (not a QMP greeting)", socketPath)
	}

	c := &Client{
		conn:    conn,
		pending: make(map[uint64]chan reply),
		last:    make(map[string]Event),
		events:  make(chan Event, EventBuffer),
		done:    make(chan struct{}),
	}
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiate capabilities on %s: %w", socketPath, err)
	}
	return c, nil
}

// Execute runs command with args (nil, or anything encoding/json turns into
// a JSON object) and decodes the reply's "return" value into result unless
// result is nil. An error reply from QEMU is returned as a *Error. If ctx
// ends first, Execute returns ctx's error; QEMU may still run the command.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, nil, result)
}

// ExecuteWithFile is Execute, with f passed to QEMU alongside the
// command (SCM_RIGHTS), as getfd and add-fd take it. QEMU keeps its own
// copy of the descriptor; the caller still closes f.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File, result any) error {
	if _, ok := c.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp %s: passing a file needs a unix socket", command)
	}
	return c.execute(ctx, command, args, unix.UnixRights(int(f.Fd())), result)
}

func (c *Client) execute(ctx context.Context, command string, args any, oob []byte, result any) error {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.dead != nil {
		err := c.dead
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	line, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	line = append(line, '\n')
	c.wmu.Lock()
	err = c.write(line, oob)
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: send: %w", command, errors.Join(ErrClosed, err))
	}

	select {
	case r := <-ch:
		if r.err != nil {
			var qerr *Error
			if errors.As(r.err, &qerr) {
				qerr.Command = command
				return qerr
			}
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		if result != nil && len(r.ret) > 0 {
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// write sends one request line, with oob (ancillary data) on its first
// byte if any.
func (c *Client) write(line, oob []byte) error {
	if oob == nil {
		_, err := c.conn.Write(line)
		return err
	}
	n, _, err := c.conn.(*net.UnixConn).WriteMsgUnix(line, oob, nil)
	if err == nil && n < len(line) {
		_, err = c.conn.Write(line[n:])
	}
	return err
}

// Events returns the channel of asynchronous events. It is closed when the
// connection ends. There is one channel per Client: concurrent receivers
// share the events between them.
func (c *Client) Events() <-chan Event { return c.events }

// LastEvent returns the latest event named name that QEMU sent on this
// connection, whether or not anyone received it from Events, so that what
// QEMU said last (a SHUTDOWN before it exited) is never lost to a full or
// unread channel. It keeps working after the connection ended.
func (c *Client) LastEvent(name string) (Event, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev, ok := c.last[name]
	return ev, ok
}

// DroppedEvents reports how many events were discarded because the Events
// channel was full.
func (c *Client) DroppedEvents() uint64 { return c.dropped.Load() }

// Done is closed once the connection has ended and Events is closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection. Pending calls fail with ErrClosed. It does
// not affect QEMU, which keeps running and accepts a new client.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.dead == nil {
			c.dead = fmt.Errorf("%w by client", ErrClosed)
		}
		c.mu.Unlock()
		if err := c.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			c.closeErr = err
		}
		<-c.done
	})
	return c.closeErr
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Client) readLoop(dec *json.Decoder) {
	var cause error
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			cause = err
			break
		}
		switch {
		case m.Event != "":
			ev := toEvent(&m)
			c.mu.Lock()
			c.last[ev.Name] = ev
			c.mu.Unlock()
			c.deliver(ev)
		case len(m.ID) > 0:
			var id uint64
			if err := json.Unmarshal(m.ID, &id); err != nil {
				continue // not one of ours
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch == nil {
				continue // caller gave up (context ended)
			}
			if m.Error != nil {
				ch <- reply{err: m.Error}
			} else {
				ch <- reply{ret: m.Return}
			}
		default:
			// A reply without id (e.g. to unparsable input) cannot be
			// matched; we never send such input, so ignore it.
		}
	}

	c.mu.Lock()
	if c.dead == nil {
		c.dead = fmt.Errorf("%w: %v", ErrClosed, cause)
	}
	dead := c.dead
	pending := c.pending
	c.pending = make(map[uint64]chan reply)
	c.mu.Unlock()
	for _, ch := range pending {
		ch <- reply{err: dead}
	}
	_ = c.conn.Close()
	close(c.events)
	close(c.done)
}

// deliver queues ev without ever blocking: when the buffer is full the
// oldest queued event is discarded. Only the reader goroutine sends.
func (c *Client) deliver(ev Event) {
	for {
		select {
		case c.events <- ev:
			return
		default:
		}
		select {
		case <-c.events:
			c.dropped.Add(1)
		default:
		}
	}
}

func toEvent(m *message) Event {
	ev := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	return ev
}
