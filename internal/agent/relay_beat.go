package agent

import (
	"net"
	"time"
)

// The relay's connection also tells the source that the target is still
// there: the target sends a byte every relayBeat, and a source that hears
// nothing for relaySilence knows the target is cut off or dead seconds
// before the control plane's liveness does. It then stops its disk mirror
// (whose writes would hang, and with them the guest's writes to the same
// blocks) and reports the migration failed; the control plane calls it off.
const (
	relayBeat    = 250 * time.Millisecond
	relaySilence = 2 * time.Second
)

// sendBeats, on the target, writes a heartbeat on conn until it fails.
func sendBeats(conn net.Conn) {
	t := time.NewTicker(relayBeat)
	defer t.Stop()
	for range t.C {
		_ = conn.SetWriteDeadline(time.Now().Add(relaySilence))
		if _, err := conn.Write([]byte{0}); err != nil {
			return
		}
	}
}

// hearBeats, on the source, notes each heartbeat from the target until
// conn fails.
func (w *worker) hearBeats(conn net.Conn) {
	b := make([]byte, 64)
	for {
		n, err := conn.Read(b)
		if n > 0 {
			w.relay.mu.Lock()
			if w.relay.conn == conn {
				w.relay.heard = time.Now()
			}
			w.relay.mu.Unlock()
		}
		if err != nil {
			w.relayLost(conn)
			return
		}
	}
}

// relayLost notes that conn, the relay's connection, failed. Unless this
// side closed it (relayStop), the target's end is gone: the target's
// agent died (the kernel closed its sockets) or the network failed.
func (w *worker) relayLost(conn net.Conn) {
	w.relay.mu.Lock()
	if w.relay.conn == conn {
		w.relay.lost = true
	}
	w.relay.mu.Unlock()
}

// targetSilent reports how long the target of the current migration has
// not been heard from, once it was heard at least once, if that is over
// relaySilence or the target ended the relay's connection (0: it is
// there, or there is no relay to tell).
func (w *worker) targetSilent(now time.Time) time.Duration {
	w.relay.mu.Lock()
	defer w.relay.mu.Unlock()
	r := &w.relay
	if r.heard.IsZero() {
		return 0
	}
	d := now.Sub(r.heard)
	switch {
	case r.lost:
		return max(d, time.Millisecond)
	case r.conn != nil && d > relaySilence:
		return d
	}
	return 0
}
