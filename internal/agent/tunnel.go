package agent

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/tunnel"
)

// A migration's streams (memory, and the disk mirror of a local-pool
// disk) go between the two agents over mutual TLS with the cluster's
// certificates; each QEMU speaks plain NBD and migration over unix
// sockets in its VM's state dir. An endpoint of the form
// "tunnel:IP:PORT" names the target agent's end.
const (
	tunnelScheme   = "tunnel:"
	tunnelMigSock  = "mig.sock"     // target: QEMU's incoming migration
	tunnelNBDSock  = "nbd.sock"     // target: QEMU's NBD server
	forwardMigSock = "mig-out.sock" // source: where QEMU sends its migration
	forwardNBDSock = "nbd-out.sock" // source: where QEMU mirrors its disk
)

// tunnelState holds this host's ends of the current migration's tunnel.
type tunnelState struct {
	mu       sync.Mutex
	listener *tunnel.Listener    // target
	fwds     []*tunnel.Forwarder // source
}

// peerTLS is this host's TLS config for a link with agent peer only.
func (w *worker) peerTLS(peer string) *tls.Config {
	cfg := w.a.cfg.PeerTLS.Clone()
	cfg.VerifyConnection = pki.RequireRole(pki.OUAgent, peer)
	return cfg
}

// tunnelListen, on the target, opens the end the source connects to,
// carrying its streams to QEMU's sockets, and returns its address.
func (w *worker) tunnelListen(s *api.VMSpec, migSock, nbdSock string) (string, error) {
	w.tunnelStop()
	l, err := tunnel.Listen(net.JoinHostPort(w.a.cfg.MigrationIP, "0"), w.peerTLS(s.Migration.Source),
		map[byte]string{tunnel.Migration: migSock, tunnel.Disk: nbdSock}, w.log)
	if err != nil {
		return "", err
	}
	w.tun.mu.Lock()
	w.tun.listener = l
	w.tun.mu.Unlock()
	return l.Addr(), nil
}

// tunnelForward, on the source, opens the local sockets QEMU sends its
// streams to (the disk's only if disk), each carried to the target's end
// at remote, and returns their paths.
func (w *worker) tunnelForward(s *api.VMSpec, remote string, disk bool) (mig, nbd string, err error) {
	w.tunnelStop()
	dir := w.a.vmDir(s.ID)
	cfg := w.peerTLS(s.Migration.Target)
	var fwds []*tunnel.Forwarder
	defer func() {
		if err != nil {
			for _, f := range fwds {
				f.Close()
			}
		}
	}()
	f, err := tunnel.Forward(filepath.Join(dir, forwardMigSock), remote, tunnel.Migration, cfg, w.log)
	if err != nil {
		return "", "", err
	}
	fwds = append(fwds, f)
	mig = f.Path()
	if disk {
		f, err := tunnel.Forward(filepath.Join(dir, forwardNBDSock), remote, tunnel.Disk, cfg, w.log)
		if err != nil {
			return "", "", err
		}
		fwds = append(fwds, f)
		nbd = f.Path()
	}
	w.tun.mu.Lock()
	w.tun.fwds = fwds
	w.tun.mu.Unlock()
	return mig, nbd, nil
}

// tunnelStop closes this host's ends of the tunnel, cutting every stream
// still open: QEMU sees its migration and disk mirror end at once.
func (w *worker) tunnelStop() {
	w.tun.mu.Lock()
	l, fwds := w.tun.listener, w.tun.fwds
	w.tun.listener, w.tun.fwds = nil, nil
	w.tun.mu.Unlock()
	if l != nil {
		l.Close()
	}
	for _, f := range fwds {
		f.Close()
	}
}

// tunnelStopWhenDone closes the tunnel once p's incoming migration has
// ended (a post-copy migration goes on after the commit).
func (w *worker) tunnelStopWhenDone(p *qemu.Process) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), qmpTimeout)
		q, err := p.QueryMigrate(ctx)
		cancel()
		if err != nil || q.Done() {
			w.tunnelStop()
			return
		}
		select {
		case <-p.Exited():
			w.tunnelStop()
			return
		case <-time.After(migrationPoll):
		}
	}
}

// stopNBD ends the qemu-nbd that receives the disk mirror, if any.
func (w *worker) stopNBD() error {
	s := w.nbd
	w.nbd = nil
	return s.Stop()
}

// tunnelAddr returns the target agent's end named by an endpoint, if it
// is a tunnel.
func tunnelAddr(endpoint string) (string, bool) {
	return strings.CutPrefix(endpoint, tunnelScheme)
}
