package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/framerelay"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/netguard"
	"github.com/shoalvm/shoal/internal/pki"
)

// The frame relay keeps the frames that reach the source's tap while the
// VM switches hosts: from the moment the source's CPUs stop until the
// network has learnt the VM's new place, such frames would be lost with
// the source's QEMU, and a TCP client would wait for a retransmission.
// The source captures them and sends them to the target, which delivers
// them to the VM once it runs there.
const (
	relayKeep      = 2 * time.Second        // frames the source keeps before the switch
	relayMargin    = 20 * time.Millisecond  // frames this long before the stop are sent too (duplicates are harmless)
	relayFor       = 3 * time.Second        // how long the source forwards after the switch
	relayLifetime  = 10 * time.Minute       // a target's listener gives up after this
	relayDialLimit = 500 * time.Millisecond // to reach the target's listener
)

// relayState is the frame relay of the VM's current migration, on either
// side.
type relayState struct {
	mu sync.Mutex
	relayParts
	// source side, kept after the relay stops, until the next starts:
	heard time.Time // the target's last heartbeat
	lost  bool      // the target ended the connection (see relayLost)
}

// relayParts are the pieces of a relay, guarded by relayState.mu.
type relayParts struct {
	// source side
	capture *framerelay.Capture
	conn    net.Conn
	stop    context.CancelFunc
	mark    time.Time
	sent    int
	// target side
	listener net.Listener
	live     bool
	queue    [][]byte
	inject   *framerelay.Injector
	got      int
}

// relayStart, on the source, starts capturing the frames for the VM and
// connects to the target's relay listener, before the migration starts.
func (w *worker) relayStart(s *api.VMSpec) {
	w.relayStop()
	w.relay.mu.Lock()
	w.relay.heard, w.relay.lost = time.Time{}, false // of an earlier migration
	w.relay.mu.Unlock()
	ep := s.Migration.Endpoint
	if ep == nil || ep.Relay == "" {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := framerelay.StartCapture(ctx, netdev.TapName(s.ID), relayKeep)
	if err != nil {
		cancel()
		w.log.Warn("frame relay: cannot capture; frames during the switch may be lost", "err", err)
		return
	}
	conn, err := w.dialRelay(ctx, ep.Relay, s.Migration.Target)
	if err != nil {
		cancel()
		c.Close()
		w.log.Warn("frame relay: cannot reach the target; frames during the switch may be lost", "err", err)
		return
	}
	r := &w.relay
	r.mu.Lock()
	r.capture, r.conn, r.stop, r.mark, r.sent = c, conn, cancel, time.Time{}, 0
	r.mu.Unlock()
	go w.hearBeats(conn)
}

func (w *worker) dialRelay(ctx context.Context, addr, target string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, relayDialLimit)
	defer cancel()
	if w.a.cfg.PeerTLS == nil {
		var d net.Dialer
		return d.DialContext(dctx, "tcp", addr)
	}
	cfg := w.a.cfg.PeerTLS.Clone()
	cfg.VerifyConnection = pki.RequireRole(pki.OUAgent, target)
	d := tls.Dialer{Config: cfg}
	return d.DialContext(dctx, "tcp", addr)
}

// relayMark notes that the source's CPUs stopped at t: frames from about
// then on are for the target. The earliest mark wins.
func (w *worker) relayMark(t time.Time) {
	t = t.Add(-relayMargin)
	w.relay.mu.Lock()
	if w.relay.mark.IsZero() || t.Before(w.relay.mark) {
		w.relay.mark = t
	}
	w.relay.mu.Unlock()
}

// relayForward, once the migration completed, streams the frames caught
// since the mark (and those still arriving) to the target for a while.
func (w *worker) relayForward(s *api.VMSpec) {
	r := &w.relay
	r.mu.Lock()
	c, conn, mark, stop := r.capture, r.conn, r.mark, r.stop
	r.mu.Unlock()
	if c == nil || mark.IsZero() {
		w.relayStop()
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), relayFor)
		defer cancel()
		defer stop()
		bw := bufio.NewWriter(conn)
		var werr error // the target's end failed
		err := c.Follow(ctx, mark, func(f framerelay.Frame) error {
			werr = framerelay.WriteFrame(bw, f.Data)
			if werr == nil {
				werr = bw.Flush()
			}
			if werr == nil {
				r.mu.Lock()
				r.sent++
				r.mu.Unlock()
			}
			return werr
		})
		r.mu.Lock()
		n := r.sent
		r.mu.Unlock()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			w.log.Debug("frame relay ended", "err", err)
		}
		if werr != nil {
			w.relayLost(conn)
		}
		w.log.Info("frame relay: frames sent to the target", "frames", n, "to", s.Migration.Target)
		w.relayStop()
	}()
}

// relayed is how many frames the relay has passed on for the current
// migration so far.
func (w *worker) relayed() int {
	w.relay.mu.Lock()
	defer w.relay.mu.Unlock()
	return w.relay.sent + w.relay.got
}

// relayStop releases the relay's capture, connection and listener.
func (w *worker) relayStop() {
	r := &w.relay
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		r.stop()
	}
	if r.capture != nil {
		r.capture.Close()
	}
	if r.conn != nil {
		r.conn.Close()
	}
	if r.listener != nil {
		r.listener.Close()
	}
	if r.inject != nil {
		r.inject.Close()
	}
	r.relayParts = relayParts{}
}

// relayStopTarget releases the target's side of the relay (its listener
// and delivery), leaving a source's forwarding alone.
func (w *worker) relayStopTarget() {
	r := &w.relay
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listener != nil {
		r.listener.Close()
	}
	if r.inject != nil {
		r.inject.Close()
	}
	r.listener, r.inject, r.live, r.queue = nil, nil, false, nil
}

// relayListen, on the target, opens the listener the source sends frames
// to, and returns its address ("" if it cannot: the migration goes on
// without).
func (w *worker) relayListen(s *api.VMSpec, from netip.Addr) string {
	w.relayStop()
	l, err := net.Listen("tcp", net.JoinHostPort(w.a.cfg.MigrationIP, "0"))
	if err != nil {
		w.log.Warn("frame relay: cannot listen", "err", err)
		return ""
	}
	l = netguard.OnlyFrom(l, from, w.log)
	if w.a.cfg.PeerTLS != nil {
		cfg := w.a.cfg.PeerTLS.Clone()
		cfg.VerifyConnection = pki.RequireRole(pki.OUAgent, s.Migration.Source)
		l = tls.NewListener(l, cfg)
	}
	r := &w.relay
	r.mu.Lock()
	r.listener = l
	r.mu.Unlock()
	tap := netdev.TapName(s.ID)
	go func() {
		timer := time.AfterFunc(relayLifetime, func() { l.Close() })
		defer timer.Stop()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			if tc, ok := conn.(*tls.Conn); ok {
				hctx, cancel := context.WithTimeout(context.Background(), 2*relayDialLimit)
				err := tc.HandshakeContext(hctx)
				cancel()
				if err != nil {
					conn.Close()
					continue
				}
			}
			// One source per migration: once it is here, stop listening.
			l.Close()
			go w.relayReceive(conn, tap)
			return
		}
	}()
	return l.Addr().String()
}

// relayReceive takes frames from the source: kept until the VM runs here,
// then delivered at once.
func (w *worker) relayReceive(conn net.Conn, tap string) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(relayLifetime))
	go sendBeats(conn)
	br := bufio.NewReader(conn)
	for {
		f, err := framerelay.ReadFrame(br)
		if err != nil {
			return
		}
		r := &w.relay
		r.mu.Lock()
		if !r.live {
			if len(r.queue) < 1000 { // the tap's own queue holds no more
				r.queue = append(r.queue, f)
			}
			r.mu.Unlock()
			continue
		}
		in := r.inject
		r.got++
		r.mu.Unlock()
		if in != nil {
			_ = in.Send(f)
		}
	}
}

// relayDeliver, once the VM runs here, delivers the frames kept so far
// and lets later ones through directly.
func (w *worker) relayDeliver(tap string) {
	r := &w.relay
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listener == nil {
		return
	}
	in, err := framerelay.OpenInjector(tap)
	if err != nil {
		w.log.Warn("frame relay: cannot deliver", "err", err)
		return
	}
	r.inject, r.live = in, true
	for _, f := range r.queue {
		_ = in.Send(f)
	}
	r.got += len(r.queue)
	r.queue = nil
	l := r.listener
	time.AfterFunc(relayFor+time.Second, func() {
		r.mu.Lock()
		same := r.listener == l
		r.mu.Unlock()
		if same { // not a newer migration's relay
			w.relayStop()
		}
	})
}
