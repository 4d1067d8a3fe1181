package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/crashpoint"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/storage"
)

// incoming runs the target side of s's migration: a QEMU with the VM's
// devices, paused and waiting for the stream, and, once the whole VM has
// arrived, the commit of ownership by compare-and-swap followed by the
// resume. Until that commit succeeds the copy here never runs, so at any
// instant at most one copy of the VM runs.
func (w *worker) incoming(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	if err := w.attach(ctx); err != nil {
		return err
	}
	alive := w.alive()
	w.guestExit = false
	dir := w.a.vmDir(s.ID)
	mine := readTrim(filepath.Join(dir, incomingFile)) == m.ID
	if alive && !mine {
		// A QEMU left by an earlier migration that never completed, unless
		// it runs the guest: then this spec is older than what happened
		// here, and the next one will say so.
		if st, err := w.proc.Status(ctx); err == nil && st == "running" {
			w.log.Warn("the VM runs here, yet the spec asks for an incoming migration; waiting for a newer spec", "migration", m.ID)
			return nil
		}
		if err := w.destroy(ctx, false); err != nil {
			return err
		}
		alive = false
	}
	if !alive {
		if mine {
			return nil // our copy is gone: this migration fails; the control plane calls it off
		}
		if w.inFailed == m.ID {
			return nil // already reported; the control plane calls it off
		}
		if err := w.prepareIncoming(ctx, s); err != nil {
			if strings.Contains(err.Error(), "No space left on device") {
				err = fmt.Errorf("pool %s of host %s is full: free space there, or migrate to another host (--to): %w", s.Pool, w.a.cfg.Host, err)
			}
			w.log.Warn("cannot prepare for the incoming migration", "err", err)
			w.inFailed = m.ID
			w.a.incomingFailed(ctx, s, err)
			return w.destroy(ctx, false) // nothing half-made stays
		}
	}
	return w.awaitIncoming(ctx, s)
}

// incomingFailed tells the control plane this host cannot take the VM.
func (a *Agent) incomingFailed(ctx context.Context, s *api.VMSpec, cause error) {
	ep := api.MigrationEndpoint{Error: fmt.Sprintf("target %s: %v", a.cfg.Host, cause)}
	if err := a.cp.MigrationReady(ctx, a.cfg.Host, *s, ep); err != nil {
		a.log.Warn("could not report the failed preparation", "err", err)
	}
}

// prepareIncoming makes the VM's files here (an empty overlay for a disk
// on a local pool, to be filled by the source's mirror), opens the ends
// the source connects to and tells the control plane where they are,
// then launches the waiting QEMU.
//
// This agent listens for the memory stream and hands it to QEMU (see
// qemu.ListenIncoming: the socket's receive buffer stays small, so the
// guest's pause at the switch does not wait for a backlog). It listens
// before QEMU's launch, so the source starts meanwhile: its disk mirror
// goes to qemu-nbd, which runs already, and its memory stream waits in
// the socket's buffers until QEMU takes it. By default QEMU takes the
// stream with TLS, with this host's certificate, and admits only the
// source host's (the source's agent encrypts the stream); a disk mirror
// comes through this agent, over mutual TLS with the source's (see
// tunnel.go). With --insecure, the stream is in clear and qemu-nbd
// listens on TCP itself.
func (w *worker) prepareIncoming(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	ip := w.a.cfg.MigrationIP
	if ip == "" {
		return errors.New("this host has no address for migration streams")
	}
	secure := !m.Options.Insecure
	if secure && (w.a.cfg.PeerTLS == nil || w.a.cfg.QEMUTLSDir == "") {
		return errors.New("this host has no cluster certificate to encrypt the migration; use --insecure")
	}
	from, err := netip.ParseAddr(m.SourceAddr)
	if err != nil {
		return fmt.Errorf("the source host %s's address %q is unknown, and the streams are taken only from it", m.Source, m.SourceAddr)
	}
	if m.Options.PostcopyAfterMs > 0 && s.UID != 0 && !unprivilegedUserfaultfd() {
		return errors.New("post-copy needs the target's QEMU to use userfaultfd, which this kernel allows only to privileged processes, and QEMU runs unprivileged here: " +
			"set sysctl vm.unprivileged_userfaultfd=1 on the hosts that are to take post-copy migrations, or migrate without --postcopy-after")
	}
	pool := storage.Pool{Name: s.Pool, Shared: true} // a boot volume: every host opens it
	if s.BootVolume == nil {
		if pool, err = w.a.pool(s.Pool); err != nil {
			return err
		}
	}
	if err := w.ensureFiles(ctx, s); err != nil {
		return err
	}
	dir := w.a.vmDir(s.ID)
	if err := writeAtomic(filepath.Join(dir, incomingFile), []byte(m.ID)); err != nil {
		return err
	}
	ep, err := w.incomingEnds(s, pool, secure, from)
	if err != nil {
		return err
	}
	if err := w.a.cp.MigrationReady(ctx, w.a.cfg.Host, *s, ep); err != nil {
		return err
	}
	w.log.Info("waiting for the incoming migration", "from", m.Source, "uri", ep.URI, "nbd", ep.NBD)
	crashpoint.Hit("agent-migrate-in-before-launch") // the source may be connected already
	p, err := w.launch(ctx, s, true)
	if err != nil {
		return err
	}
	w.proc = p
	// The disks stay inactive (unlocked) until the guest resumes here,
	// after the commit: a copy that never commits, say because this
	// agent died once the stream was in, must not hold the lock of a
	// shared disk that the source needs to resume the guest. (A local
	// pool's disk is written by the mirror's qemu-nbd until then anyway.)
	in := qemu.IncomingOptions{PostCopy: m.Options.PostcopyAfterMs > 0, LateBlockActivate: true}
	if secure {
		if err := w.addTLSCreds(ctx, p, s); err != nil {
			return err
		}
		if err := p.AddAuthz(ctx, migAuthz, pki.AgentDN(m.Source)...); err != nil {
			return err
		}
		in.TLSCreds, in.TLSAuthz = migTLSCreds, migAuthz
	}
	return w.incomingAttach(ctx, p, in)
}

// incomingEnds opens, before the target's QEMU runs, the ends the source
// connects to, each taking connections only from the source's address
// from: the memory stream's listener, the disk mirror's for a local pool
// (qemu-nbd, reached through this agent), and the frame relay's. Unless
// insecure, the disk mirror comes over mutual TLS with the source. It
// returns the endpoint that names them.
func (w *worker) incomingEnds(s *api.VMSpec, pool storage.Pool, secure bool, from netip.Addr) (api.MigrationEndpoint, error) {
	ip := w.a.cfg.MigrationIP
	ep := api.MigrationEndpoint{}
	if !pool.Shared {
		// The source mirrors the disk into a qemu-nbd of its own, not into
		// the target's QEMU, which keeps its disk inactive until the guest
		// resumes here, as on a shared pool.
		nbdSock := filepath.Join(w.a.vmDir(s.ID), tunnelNBDSock)
		srv, err := qemu.ServeNBD(w.log, pool.DiskPath(s.ID), "disk0", nbdSock, "")
		if err != nil {
			return ep, err
		}
		w.nbd = srv
		addr, err := w.tunnelListen(s, nbdSock, from, secure)
		if err != nil {
			return ep, err
		}
		ep.NBD = tunnelScheme + addr
	}
	addr, err := w.incomingListen(net.JoinHostPort(ip, "0"), from)
	if err != nil {
		return ep, err
	}
	ep.URI = "tcp:" + addr
	if secure {
		ep.URI = tlsScheme + addr
	}
	ep.Relay = w.relayListen(s, from)
	return ep, nil
}

// awaitIncoming waits for the whole VM to arrive, then commits and
// resumes it here. A change of plan (the migration called off) discards
// the copy.
func (w *worker) awaitIncoming(ctx context.Context, s *api.VMSpec) error {
	t := time.NewTicker(migrationPoll)
	defer t.Stop()
	events := w.proc.QMP().Events()
	kicked := false
	defer w.handBack(&kicked)
	for {
		q, err := w.proc.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch q.Status {
		case "completed", "postcopy-active":
			return w.commitIncoming(ctx, s, time.Now(), q.Status == "postcopy-active")
		case "failed", "cancelled":
			w.log.Warn("incoming migration failed", "status", q.Status, "err", q.Error)
			return nil // the source says so too; the control plane calls it off
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.proc.Exited():
			w.close()
			w.log.Warn("the waiting QEMU exited: the incoming migration failed", "log", qemuLogTail(w.a.vmDir(s.ID)))
			return nil
		case <-w.kick:
			kicked = true
			if l := w.latest(); l == nil || l.Migration == nil || l.Migration.ID != s.Migration.ID {
				return nil // reconcile discards the copy
			}
		case <-events:
		case <-t.C:
		}
	}
}

// commitIncoming makes this host the VM's owner and resumes it. If the
// commit loses to an abort, the copy is discarded without ever running.
func (w *worker) commitIncoming(ctx context.Context, s *api.VMSpec, arrived time.Time, postcopy bool) error {
	// The mirror's receiving end writes out what it holds and lets go of
	// the disk, which QEMU then takes over when the guest resumes.
	if err := w.stopNBD(); err != nil {
		w.log.Warn("stop the disk mirror's receiving end", "err", err)
	}
	crashpoint.Hit("agent-migrate-in-before-commit") // the whole VM is here, not yet ours
	var v api.VMSpec
	for tries := 0; ; tries++ {
		var err error
		v, err = w.a.cp.CommitMigration(ctx, w.a.cfg.Host, *s)
		if err == nil {
			break
		}
		if errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrUnauthorized) || api.IsNotFound(err) {
			w.log.Warn("migration was called off before its commit; discarding this copy", "err", err)
			return w.destroy(ctx, false)
		}
		if l := w.latest(); l == nil || l.Migration == nil || l.Migration.ID != s.Migration.ID {
			w.log.Warn("the migration is over (called off, or the VM was given to a host otherwise); not committing this copy")
			return nil // reconcile acts on the new spec
		}
		if tries%100 == 0 {
			w.log.Warn("cannot commit the migration yet; retrying", "err", err)
		}
		sleep(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	// The copy is committed: from now on it is the VM, not a copy to
	// discard (see discardUncommitted).
	_ = os.Remove(filepath.Join(w.a.vmDir(s.ID), incomingFile))
	// The commit is this host's own write: act on it at once rather than
	// on the older spec still held, which names the source as the owner.
	w.update(&v)
	w.markHA(v.HA) // before it runs: the fence watchdog must know it
	if err := w.proc.Resume(ctx); err != nil {
		return fmt.Errorf("resume after migration: %w", err)
	}
	resumed := time.Now()
	if err := w.proc.AnnounceSelf(ctx); err != nil {
		w.log.Warn("announce", "err", err)
	}
	switchMs := max(resumed.Sub(arrived).Milliseconds(), 1)
	if err := w.a.cp.MigrationProgress(ctx, w.a.cfg.Host, s.ID, api.MigrationProgress{ID: s.Migration.ID, Phase: "resumed",
		SwitchMs: switchMs, ResumedAt: resumed}); err != nil {
		w.log.Debug("switch time not recorded", "err", err)
	}
	w.relayDeliver(netdev.TapName(s.ID))
	if postcopy {
		// The source still sends memory: the tunnel goes once it is done.
		go w.tunnelStopWhenDone(w.proc)
	} else {
		w.tunnelStop() // the streams are over
	}
	w.log.Info("migration committed; the VM runs here", "from", s.Migration.Source)
	w.status.StartedAt = w.now()
	return w.report(ctx, &v, api.StateRunning, "")
}

// freePort finds a TCP port free on ip.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// discardUncommitted kills, on the VM's owner, a QEMU that came in by a
// migration this host never committed: the VM was given to this host
// otherwise (a failover or recover while it migrated here), and that
// copy, complete or not, must not run. The VM then boots afresh.
func (w *worker) discardUncommitted(s *api.VMSpec) bool {
	marker := filepath.Join(w.a.vmDir(s.ID), incomingFile)
	if s.Migration != nil || readTrim(marker) == "" {
		return false
	}
	if w.proc == nil {
		_ = os.Remove(marker)
		return false
	}
	w.log.Warn("discarding the copy of an incoming migration that was never committed; the VM boots afresh", "name", s.Name)
	qemu.KillAll(w.log, w.a.vmDir(s.ID)) // first: a crash before the marker goes must not leave a copy to resume
	w.close()
	_ = os.Remove(marker)
	w.guestExit, w.exit = false, qemu.Exit{}
	return true
}

// unprivilegedUserfaultfdPath is the sysctl that lets unprivileged
// processes (a confined QEMU) use userfaultfd for faults in the kernel,
// as a post-copy migration's target does.
const unprivilegedUserfaultfdPath = "/proc/sys/vm/unprivileged_userfaultfd"

// unprivilegedUserfaultfd reports whether the sysctl allows it.
func unprivilegedUserfaultfd() bool {
	b, err := os.ReadFile(unprivilegedUserfaultfdPath)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
