package agent

import (
	"net"
	"testing"
	"time"
)

// The source counts the target as gone after relaySilence without a
// heartbeat, or at once when the target ends the relay's connection; a
// connection this side closed, or one of an earlier relay, says nothing.
func TestTargetSilent(t *testing.T) {
	now := time.Now()
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	other, otherPeer := net.Pipe()
	defer other.Close()
	defer otherPeer.Close()

	w := &worker{}
	if d := w.targetSilent(now); d != 0 {
		t.Errorf("no relay: silent %s, want 0", d)
	}
	w.relay.conn = conn
	if d := w.targetSilent(now); d != 0 {
		t.Errorf("never heard: silent %s, want 0", d)
	}
	w.relay.heard = now.Add(-time.Second)
	if d := w.targetSilent(now); d != 0 {
		t.Errorf("heard 1s ago: silent %s, want 0", d)
	}
	w.relay.heard = now.Add(-3 * time.Second)
	if d := w.targetSilent(now); d != 3*time.Second {
		t.Errorf("heard 3s ago: silent %s, want 3s", d)
	}

	w.relay.heard = now
	w.relayLost(other) // not the relay's connection
	if d := w.targetSilent(now); d != 0 {
		t.Errorf("another connection failed: silent %s, want 0", d)
	}
	w.relayLost(conn)
	if d := w.targetSilent(now); d <= 0 {
		t.Errorf("the target ended the connection: silent %s, want > 0", d)
	}
	w.relay.conn = nil // the relay stopped since: the loss stands
	if d := w.targetSilent(now); d <= 0 {
		t.Errorf("after the relay stopped: silent %s, want > 0", d)
	}

	// This side stopped the relay (relayStop) before its reader failed.
	w.relay.lost = false
	w.relay.heard = now.Add(-3 * time.Second)
	w.relayLost(conn)
	if d := w.targetSilent(now); d != 0 {
		t.Errorf("relay stopped by this side: silent %s, want 0", d)
	}
}
