package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/tunnel"
)

// A migration's streams are encrypted and authenticated with the
// cluster's certificates, and the source's agent is on the path of each,
// so that it can cut them at once.
//
//   - Memory: the source's QEMU sends its stream in clear to this agent
//     over a unix socket in the VM's state dir; the agent carries it over
//     TLS to the target, whose agent takes the connection and hands it to
//     its QEMU (incomingListen). That QEMU speaks TLS with credentials of
//     the target host's certificate and admits only the source host's
//     certificate (QEMU's tls-creds-x509 and authz). QEMU's own TLS is
//     slow to send (a TLS record and a system call per page) but quick
//     to receive; the agent's is quick to send. The endpoint is
//     "tls:IP:PORT".
//   - The disk mirror of a local-pool disk: between the two agents over
//     mutual TLS (package tunnel), each QEMU or qemu-nbd speaking plain
//     NBD over a unix socket. The endpoint is "tunnel:IP:PORT". (Earlier
//     versions sent memory this way too; a source still follows such an
//     endpoint.)
const (
	tlsScheme      = "tls:"
	tunnelScheme   = "tunnel:"
	tunnelNBDSock  = "nbd.sock"     // target: qemu-nbd, receiving the disk mirror
	forwardMigSock = "mig-out.sock" // source: where QEMU sends its migration
	forwardNBDSock = "nbd-out.sock" // source: where QEMU mirrors its disk
)

// Names of the QEMU objects of a migration target's TLS.
const (
	migTLSCreds = "mig-tls"
	migAuthz    = "mig-authz"
)

// tunnelState holds this host's ends of the current migration's tunnel.
type tunnelState struct {
	mu       sync.Mutex
	listener *tunnel.Listener       // target: the disk mirror
	incoming *qemu.IncomingListener // target: the memory stream
	fwds     []*tunnel.Forwarder    // source
}

// incomingListen, on the target, listens on addr for the memory stream
// (see incomingAttach); it returns the address taken.
func (w *worker) incomingListen(addr string, from netip.Addr) (string, error) {
	il, err := qemu.ListenIncoming(context.Background(), w.log, addr, from)
	if err != nil {
		return "", err
	}
	w.tun.mu.Lock()
	old := w.tun.incoming
	w.tun.incoming = il
	w.tun.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return il.Addr(), nil
}

// incomingAttach gives the memory stream to p, the target's QEMU, now or
// when it comes.
func (w *worker) incomingAttach(ctx context.Context, p *qemu.Process, o qemu.IncomingOptions) error {
	w.tun.mu.Lock()
	il := w.tun.incoming
	w.tun.mu.Unlock()
	if il == nil {
		return errors.New("the incoming migration's listener is closed")
	}
	return il.Attach(ctx, p, o)
}

// peerTLS is this host's TLS config for a link with agent peer only.
func (w *worker) peerTLS(peer string) *tls.Config {
	cfg := w.a.cfg.PeerTLS.Clone()
	cfg.VerifyConnection = pki.RequireRole(pki.OUAgent, peer)
	return cfg
}

// tunnelListen, on the target, opens the end the source's agent connects
// to from the address from for the disk mirror, carried to qemu-nbd's
// socket (over mutual TLS if secure), and returns its address.
func (w *worker) tunnelListen(s *api.VMSpec, nbdSock string, from netip.Addr, secure bool) (string, error) {
	w.tunnelStop()
	var cfg *tls.Config
	if secure {
		cfg = w.peerTLS(s.Migration.Source)
	}
	l, err := tunnel.Listen(net.JoinHostPort(w.a.cfg.MigrationIP, "0"), from, cfg,
		map[byte]string{tunnel.Disk: nbdSock}, w.log)
	if err != nil {
		return "", err
	}
	w.tun.mu.Lock()
	w.tun.listener = l
	w.tun.mu.Unlock()
	return l.Addr(), nil
}

// tunnelForward, on the source, opens the local sockets QEMU sends its
// streams to and returns their paths: the memory stream's, carried as a
// stream of migKind to migRemote (tunnel.Direct: QEMU's TLS listener),
// and, if nbdRemote is not empty, the disk mirror's, carried to the
// target agent's end there.
func (w *worker) tunnelForward(s *api.VMSpec, migRemote string, migKind byte, nbdRemote string) (mig, nbd string, err error) {
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
	migCfg := cfg
	if migKind == tunnel.Direct {
		// Straight to the target's QEMU, which holds its host's migration
		// certificate, never its agent's (see pki.OUMigration).
		migCfg = w.a.cfg.PeerTLS.Clone()
		migCfg.VerifyConnection = pki.RequireRole(pki.OUMigration, s.Migration.Target)
	}
	f, err := tunnel.Forward(filepath.Join(dir, forwardMigSock), migRemote, migKind, migCfg, w.log)
	if err != nil {
		return "", "", err
	}
	fwds = append(fwds, f)
	mig = f.Path()
	if nbdRemote != "" {
		f, err := tunnel.Forward(filepath.Join(dir, forwardNBDSock), nbdRemote, tunnel.Disk, cfg, w.log)
		if err != nil {
			return "", "", err
		}
		fwds = append(fwds, f)
		nbd = f.Path()
	}
	for _, f := range fwds {
		if err := giveSocket(s, f.Path()); err != nil {
			return "", "", err
		}
	}
	w.tun.mu.Lock()
	w.tun.fwds = fwds
	w.tun.mu.Unlock()
	return mig, nbd, nil
}

// nbdForward, on the source of an insecure migration, opens the local
// socket QEMU mirrors the disk to, carried in clear to the target agent's
// end at remote, and returns its path.
func (w *worker) nbdForward(s *api.VMSpec, remote string) (string, error) {
	w.tunnelStop()
	f, err := tunnel.Forward(filepath.Join(w.a.vmDir(s.ID), forwardNBDSock), remote, tunnel.Disk, nil, w.log)
	if err != nil {
		return "", err
	}
	if err := giveSocket(s, f.Path()); err != nil {
		f.Close()
		return "", err
	}
	w.tun.mu.Lock()
	w.tun.fwds = []*tunnel.Forwarder{f}
	w.tun.mu.Unlock()
	return f.Path(), nil
}

// tunnelStop closes this host's ends of the tunnel, cutting every stream
// still open: QEMU sees its migration and disk mirror end at once. (On
// the target, a memory stream already handed to QEMU is QEMU's.)
func (w *worker) tunnelStop() {
	w.tun.mu.Lock()
	l, il, fwds := w.tun.listener, w.tun.incoming, w.tun.fwds
	w.tun.listener, w.tun.incoming, w.tun.fwds = nil, nil, nil
	w.tun.mu.Unlock()
	if l != nil {
		l.Close()
	}
	if il != nil {
		il.Close()
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

// secureEndpoint returns the address an endpoint names for a stream the
// source's agent carries over TLS, and the kind of stream it takes.
func secureEndpoint(endpoint string) (addr string, kind byte, ok bool) {
	if addr, ok := strings.CutPrefix(endpoint, tlsScheme); ok {
		return addr, tunnel.Direct, true
	}
	if addr, ok := strings.CutPrefix(endpoint, tunnelScheme); ok {
		return addr, tunnel.Migration, true
	}
	return "", 0, false
}
