package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/qemu"
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
		// A QEMU left by an earlier migration that never completed.
		if err := w.destroy(ctx, false); err != nil {
			return err
		}
		alive = false
	}
	if !alive {
		if mine {
			return nil // our copy is gone: this migration fails; the control plane calls it off
		}
		if err := w.prepareIncoming(ctx, s); err != nil {
			w.log.Warn("cannot prepare for the incoming migration", "err", err)
			w.a.incomingFailed(ctx, s, err)
			return nil
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
// on a local pool, to be filled by the source's mirror), launches the
// waiting QEMU, and tells the control plane where it listens.
func (w *worker) prepareIncoming(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	ip := w.a.cfg.MigrationIP
	if ip == "" {
		return errors.New("this host has no address for migration streams")
	}
	creds := ""
	if !m.Options.Insecure {
		if w.a.cfg.TLSDir == "" {
			return errors.New("this host has no cluster certificate to encrypt the migration; use --insecure")
		}
		creds = tlsServerID
	}
	pool, err := w.a.pool(s.Pool)
	if err != nil {
		return err
	}
	if err := w.ensureFiles(ctx, s); err != nil {
		return err
	}
	dir := w.a.vmDir(s.ID)
	if err := writeAtomic(filepath.Join(dir, incomingFile), []byte(m.ID)); err != nil {
		return err
	}
	p, err := w.launch(ctx, s, true)
	if err != nil {
		return err
	}
	w.proc = p
	if creds != "" {
		if err := p.AddTLSCreds(ctx, creds, w.a.cfg.TLSDir, true); err != nil {
			return err
		}
	}
	ep := api.MigrationEndpoint{}
	if !pool.Shared {
		port, err := freePort(ip)
		if err != nil {
			return err
		}
		if err := p.StartNBDServer(ctx, ip, port, creds); err != nil {
			return err
		}
		if err := p.ExportDisk(ctx, "disk0"); err != nil {
			return err
		}
		ep.NBD = net.JoinHostPort(ip, strconv.Itoa(port))
	}
	if err := p.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return err
	}
	uri, err := p.PrepareIncoming(ctx, "tcp:"+net.JoinHostPort(ip, "0"), qemu.IncomingOptions{
		TLSCreds: creds, PostCopy: m.Options.PostcopyAfterMs > 0})
	if err != nil {
		return err
	}
	ep.URI = uri
	ep.Relay = w.relayListen(s)
	w.log.Info("waiting for the incoming migration", "from", m.Source, "uri", ep.URI, "nbd", ep.NBD)
	return w.a.cp.MigrationReady(ctx, w.a.cfg.Host, *s, ep)
}

// awaitIncoming waits for the whole VM to arrive, then commits and
// resumes it here. A change of plan (the migration called off) discards
// the copy.
func (w *worker) awaitIncoming(ctx context.Context, s *api.VMSpec) error {
	t := time.NewTicker(migrationPoll)
	defer t.Stop()
	events := w.proc.QMP().Events()
	for {
		q, err := w.proc.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch q.Status {
		case "completed", "postcopy-active":
			return w.commitIncoming(ctx, s, time.Now())
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
			w.poke()
			if l := w.latest(); l == nil || l.Migration == nil || l.Migration.ID != s.Migration.ID {
				return nil // reconcile discards the copy
			}
			sleep(ctx, migrationPoll/4)
		case <-events:
		case <-t.C:
		}
	}
}

// commitIncoming makes this host the VM's owner and resumes it. If the
// commit loses to an abort, the copy is discarded without ever running.
func (w *worker) commitIncoming(ctx context.Context, s *api.VMSpec, arrived time.Time) error {
	// The disk export must go before the VM may ever leave again (its
	// block backend would hold the disk). Stopping is a no-op without one.
	if err := w.proc.StopNBDServer(ctx); err != nil {
		w.log.Warn("stop disk export", "err", err)
	}
	var v api.VMSpec
	for tries := 0; ; tries++ {
		var err error
		v, err = w.a.cp.CommitMigration(ctx, w.a.cfg.Host, *s)
		if err == nil {
			break
		}
		if errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrUnauthorized) {
			w.log.Warn("migration was called off before its commit; discarding this copy", "err", err)
			return w.destroy(ctx, false)
		}
		if tries%100 == 0 {
			w.log.Warn("cannot commit the migration yet; retrying", "err", err)
		}
		sleep(ctx, 50*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := w.proc.Resume(ctx); err != nil {
		return fmt.Errorf("resume after migration: %w", err)
	}
	if err := w.proc.AnnounceSelf(ctx); err != nil {
		w.log.Warn("announce", "err", err)
	}
	switchMs := max(time.Since(arrived).Milliseconds(), 1)
	if err := w.a.cp.MigrationProgress(ctx, w.a.cfg.Host, s.ID, api.MigrationProgress{ID: s.Migration.ID, Phase: "resumed", SwitchMs: switchMs}); err != nil {
		w.log.Debug("switch time not recorded", "err", err)
	}
	w.relayDeliver(netdev.TapName(s.ID))
	_ = os.Remove(filepath.Join(w.a.vmDir(s.ID), incomingFile))
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
