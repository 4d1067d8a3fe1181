package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/qemu"
)

// Files in a VM's state dir that tie QEMU's migration state to a
// migration of the control plane, so a restarted agent knows whether the
// migration QEMU reports is the one in the spec.
const (
	outgoingFile = "migration-out" // id of the migration this source started
	incomingFile = "migration-in"  // id of the migration this target waits for
)

// migrationPoll is how often the source samples a migration's progress
// (QEMU's MIGRATION events wake it sooner for the steps that matter).
const migrationPoll = 200 * time.Millisecond

// outgoing drives the source side of s's migration: once the target
// waits, it mirrors local disks and streams memory, then follows QEMU
// until the migration ends or is called off, publishing progress. The
// guest stops only for the final step; then QEMU waits "postmigrate"
// until the target commits (and this host drops the VM) or the migration
// is aborted (and reconcile resumes it here).
func (w *worker) outgoing(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	if err := w.report(ctx, s, api.StateMigrating, ""); err != nil {
		return err
	}
	if m.Endpoint == nil || m.Endpoint.Error != "" || w.migEnded == m.ID {
		// The target is not ready yet, or cannot take the VM, or it is
		// over: the control plane decides what comes next.
		return nil
	}
	dir := w.a.vmDir(s.ID)
	if readTrim(filepath.Join(dir, outgoingFile)) != m.ID {
		if err := writeAtomic(filepath.Join(dir, outgoingFile), []byte(m.ID)); err != nil {
			return err
		}
		if err := w.startOutgoing(ctx, s); err != nil {
			w.log.Warn("migration could not start", "err", err)
			w.migEnded = m.ID
			w.tunnelStop()
			w.abortMirror(ctx, s)
			return w.progress(ctx, s, api.MigrationProgress{ID: m.ID, Phase: api.MigrationFailed,
				Error: fmt.Sprintf("the streams to target host %s could not start: %v", m.Target, err)})
		}
	}
	return w.followOutgoing(ctx, s)
}

// startOutgoing mirrors the disk to the target when it is on a local pool,
// then starts the memory stream: through this agent, which encrypts it
// for the target's QEMU (TLS), or, with --insecure, straight from QEMU to
// the target's QEMU.
func (w *worker) startOutgoing(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	if cpus, mem := s.RunSize(); w.size.CPUs > 0 && (cpus != w.size.CPUs || mem != w.size.MemoryMiB) {
		return fmt.Errorf("the target's QEMU was given %d vCPUs and %d MiB, but the VM runs here with %d vCPUs and %d MiB; migrate it again",
			cpus, mem, w.size.CPUs, w.size.MemoryMiB)
	}
	if err := w.settleOldMigration(ctx); err != nil {
		return err
	}
	uri, mirror, err := w.outgoingStreams(s)
	if err != nil {
		return err
	}
	// The relay's connection also carries the target's heartbeats:
	// open it first, so a target cut off during the disk copy is noticed.
	w.relayStart(s)
	if mirror != nil {
		if err := mirror(ctx); err != nil {
			return err
		}
		if err := w.waitMirror(ctx, s); err != nil {
			return err
		}
	}
	w.migStart = time.Now()
	o := m.Options
	bw := o.BandwidthBytes
	if bw == 0 { // the API's "unlimited", not QEMU's default of 128 MiB/s
		bw = qemu.UnlimitedBandwidth
	}
	return w.proc.Migrate(ctx, uri, qemu.MigrateOptions{
		DowntimeLimit:  time.Duration(o.DowntimeMs) * time.Millisecond,
		BandwidthBytes: bw,
		AutoConverge:   o.AutoConverge,
		PostCopy:       o.PostcopyAfterMs > 0,
		// With a disk mirror, QEMU waits once the guest is stopped for
		// its last step, so that the mirror is finished (the target's
		// disk an exact copy) before the device state goes.
		PauseBeforeSwitchover: mirror != nil,
	})
}

// outgoingStreams returns where QEMU sends its migration and, if the disk
// is mirrored, what starts the mirror, for the target's endpoint.
func (w *worker) outgoingStreams(s *api.VMSpec) (string, func(context.Context) error, error) {
	ep := s.Migration.Endpoint
	if remote, kind, ok := secureEndpoint(ep.URI); ok {
		if w.a.cfg.PeerTLS == nil {
			return "", nil, fmt.Errorf("host %s has no cluster certificate to encrypt the migration; use --insecure", w.a.cfg.Host)
		}
		nbdRemote := ""
		if ep.NBD != "" {
			var ok bool
			if nbdRemote, ok = strings.CutPrefix(ep.NBD, tunnelScheme); !ok {
				return "", nil, fmt.Errorf("target disk export %q is not tunnel:HOST:PORT", ep.NBD)
			}
		}
		mig, nbd, err := w.tunnelForward(s, remote, kind, nbdRemote)
		if err != nil {
			return "", nil, err
		}
		var mirror func(context.Context) error
		if nbd != "" {
			mirror = func(ctx context.Context) error {
				return w.proc.MirrorToNBDUnix(ctx, "disk0", nbd, s.Migration.Options.BandwidthBytes)
			}
		}
		return "unix:" + mig, mirror, nil
	}
	if !s.Migration.Options.Insecure {
		// Clear text only when asked: a target (or whoever wrote its
		// endpoint) that offers it to a TLS migration is refused.
		return "", nil, fmt.Errorf("target endpoint %q is not encrypted, and the migration asked for TLS (use --insecure to allow clear text)", ep.URI)
	}
	if !strings.HasPrefix(ep.URI, "tcp:") {
		return "", nil, fmt.Errorf("target endpoint %q is none of tls:HOST:PORT, tunnel:HOST:PORT, tcp:HOST:PORT", ep.URI)
	}
	var mirror func(context.Context) error
	if ep.NBD != "" {
		nbdRemote, ok := strings.CutPrefix(ep.NBD, tunnelScheme)
		if !ok {
			return "", nil, fmt.Errorf("target disk export %q is not tunnel:HOST:PORT", ep.NBD)
		}
		nbd, err := w.nbdForward(s, nbdRemote)
		if err != nil {
			return "", nil, err
		}
		mirror = func(ctx context.Context) error {
			return w.proc.MirrorToNBDUnix(ctx, "disk0", nbd, s.Migration.Options.BandwidthBytes)
		}
	}
	return ep.URI, mirror, nil
}

// waitMirror waits until the disk mirror has caught up, publishing its
// progress; a change of plan stops it.
func (w *worker) waitMirror(ctx context.Context, s *api.VMSpec) error {
	t := time.NewTicker(migrationPoll)
	defer t.Stop()
	kicked := false
	defer w.handBack(&kicked)
	for {
		st, err := w.proc.MirrorStatus(ctx, "disk0")
		if err != nil {
			return err
		}
		if !st.Found || st.Error != "" {
			return fmt.Errorf("disk mirror to the target ended: %s", st.Error)
		}
		if st.Ready {
			w.mirrorLen = st.Len
			return nil
		}
		_ = w.progress(ctx, s, api.MigrationProgress{ID: s.Migration.ID, Phase: "disks", DiskDone: st.Offset, DiskLen: st.Len})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.proc.Exited():
			return fmt.Errorf("QEMU exited")
		case <-w.kick:
			kicked = true
			if !w.stillMigrating(s) {
				return fmt.Errorf("migration called off")
			}
		case <-t.C:
		}
	}
}

// stillMigrating reports whether the latest spec still asks for the
// migration of s.
func (w *worker) stillMigrating(s *api.VMSpec) bool {
	l := w.latest()
	return l != nil && !l.Deleting && l.Host == w.a.cfg.Host && l.Migration != nil && l.Migration.ID == s.Migration.ID
}

// followOutgoing follows a started migration to its end, handling the
// pause before switchover (finish the disk mirror, mark where frames for
// the target begin) and the switch to post-copy.
func (w *worker) followOutgoing(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	t := time.NewTicker(migrationPoll)
	defer t.Stop()
	postcopyAt := time.Time{}
	if m.Options.PostcopyAfterMs > 0 {
		postcopyAt = time.Now().Add(time.Duration(m.Options.PostcopyAfterMs) * time.Millisecond)
	}
	events := w.proc.QMP().Events()
	kicked := false
	defer w.handBack(&kicked)
	switched := false
	silent := false       // the target stopped answering, and that was reported
	var final time.Time   // when QEMU first said completed
	var stopped time.Time // when the guest stopped for the last step (QEMU's STOP event)
	for {
		q, err := w.proc.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		p := progressOf(m.ID, q)
		switch q.Status {
		case "pre-switchover":
			if switched {
				break // the continue is under way
			}
			switched = true
			w.relayMark(time.Now())
			if m.Endpoint.NBD != "" {
				if err := w.proc.CompleteMirror(ctx, "disk0"); err != nil {
					w.log.Warn("finishing the disk mirror failed; cancelling the migration", "err", err)
					_ = w.proc.CancelMigration(ctx)
					continue
				}
			}
			if err := w.proc.MigrateContinue(ctx, "pre-switchover"); err != nil {
				return err
			}
			continue
		case "completed":
			if q.TotalTime == 0 && !final.IsZero() && time.Since(final) < time.Second {
				// QEMU says completed a moment before it has the figures.
				sleep(ctx, 5*time.Millisecond)
				continue
			}
			if final.IsZero() {
				final = time.Now()
				continue
			}
			w.migEnded = m.ID
			if stopped.IsZero() { // the STOP event was missed
				stopped = time.Now().Add(-q.Downtime)
			}
			w.relayMark(stopped)
			p.StoppedAt = stopped
			w.log.Info("migration completed", "to", m.Target, "total", q.TotalTime, "downtime", q.Downtime,
				"bytes", q.TransferredBytes)
			w.relayForward(s)
			// The mirror was finished at the switchover; whatever is left
			// of it (nothing, normally) lets go of the target.
			w.abortMirror(ctx, s)
			if err := w.progress(ctx, s, p); err != nil {
				return err
			}
			return w.awaitCommit(ctx, s)
		case "failed", "cancelled", "none":
			w.migEnded = m.ID
			w.relayStop()
			w.tunnelStop()
			w.abortMirror(ctx, s)
			if p.Error == "" {
				p.Error = "QEMU reports the migration " + q.Status
			}
			w.log.Warn("migration failed", "to", m.Target, "err", p.Error)
			return w.progress(ctx, s, p)
		case "active":
			if !postcopyAt.IsZero() && time.Now().After(postcopyAt) {
				w.log.Info("pre-copy has not converged; switching to post-copy", "after", m.Options.PostcopyAfterMs)
				if err := w.proc.StartPostcopy(ctx); err != nil {
					w.log.Warn("post-copy", "err", err)
				}
				postcopyAt = time.Time{}
			}
		}
		if d := w.targetSilent(time.Now()); d > 0 && !silent {
			silent = true
			w.log.Warn("the target stopped answering; stopping the disk mirror and reporting the migration failed",
				"target", m.Target, "silent", d)
			if !p.Postcopy && m.Options.PostcopyAfterMs == 0 {
				// Without a return path, a target can only have the whole
				// VM once QEMU here says completed: cutting now is safe.
				w.tunnelStop()
			}
			w.abortMirror(ctx, s)
			_ = w.progress(ctx, s, api.MigrationProgress{ID: m.ID, Phase: api.MigrationFailed,
				Error: fmt.Sprintf("target host %s stopped answering for %s (network cut, or the host or its agent died)", m.Target, d.Round(100*time.Millisecond))})
		}
		if !silent {
			if err := w.progress(ctx, s, p); err != nil {
				w.log.Debug("migration progress not published", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.proc.Exited():
			w.migEnded = m.ID
			return w.progress(ctx, s, api.MigrationProgress{ID: m.ID, Phase: api.MigrationFailed, Error: "QEMU exited on the source"})
		case <-w.kick:
			kicked = true
			if !w.stillMigrating(s) && p.Postcopy {
				// Committed in post-copy: the target runs the guest and
				// takes the rest of its memory from here until the end.
				continue
			}
			if !w.stillMigrating(s) {
				w.log.Info("migration called off; cancelling")
				w.tunnelStop() // QEMU's streams end at once, even to a silent target
				_ = w.proc.CancelMigration(ctx)
				w.abortMirror(ctx, s)
				w.relayStop()
				w.migEnded = m.ID
				return nil
			}
		case ev := <-events:
			// The guest stops for the last step of the migration: frames
			// from then on are for the target.
			if ev.Name == "STOP" && ev.Timestamp.After(w.migStart) {
				w.relayMark(ev.Timestamp)
				if stopped.IsZero() {
					stopped = ev.Timestamp
				}
			}
		case <-t.C:
		}
	}
}

// awaitCommit waits, once the whole VM has gone, until the target has
// taken it over or the migration is called off (reconcile then drops the
// VM here, or resumes it). A target that stops answering meanwhile (its
// agent died before its commit, or the network failed) is reported at
// once: the control plane then calls the migration off, and the guest
// resumes here, without waiting seconds for the target host to be judged
// down. The call-off is a compare-and-swap, so a commit that came first
// stands.
func (w *worker) awaitCommit(ctx context.Context, s *api.VMSpec) error {
	m := s.Migration
	t := time.NewTicker(migrationPoll)
	defer t.Stop()
	kicked := false
	defer w.handBack(&kicked)
	for w.stillMigrating(s) {
		if d := w.targetSilent(time.Now()); d > 0 {
			w.log.Warn("the target stopped answering before taking the VM over; reporting the migration failed",
				"target", m.Target, "silent", d)
			return w.progress(ctx, s, api.MigrationProgress{ID: m.ID, Phase: api.MigrationFailed,
				Error: fmt.Sprintf("target host %s stopped answering after the whole VM was sent, before taking it over (its agent died, or the network failed)", m.Target)})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.kick:
			kicked = true
		case <-t.C:
		}
	}
	return nil
}

// abortMirror stops a disk mirror of s, if any. Its connection to the
// target is cut first: if the target no longer answers (a cut network, a
// dead host), the mirror's writes in flight would otherwise hang until
// TCP gives up, and with them QEMU's cancel of the job, and any guest
// write to the same blocks.
func (w *worker) abortMirror(ctx context.Context, s *api.VMSpec) {
	if s.Migration.Endpoint == nil || s.Migration.Endpoint.NBD == "" || w.proc == nil {
		return
	}
	if ap, err := netip.ParseAddrPort(s.Migration.Endpoint.NBD); err == nil {
		if n, err := netdev.CutTCP(ap); err != nil {
			w.log.Warn("cut the disk mirror's connection", "err", err)
		} else if n > 0 {
			w.log.Info("cut the disk mirror's connection to the target", "connections", n)
		}
	}
	if err := w.proc.AbortMirror(ctx, "disk0"); err != nil {
		w.log.Warn("stop disk mirror", "err", err)
	}
}

// progress publishes the migration's progress; it is rate-limited except
// for its final report.
func (w *worker) progress(ctx context.Context, s *api.VMSpec, p api.MigrationProgress) error {
	// The end, and post-copy (the target waits for it to commit), go out
	// at once.
	final := p.Phase == api.MigrationCompleted || p.Phase == api.MigrationFailed || p.Postcopy
	if !final && time.Since(w.lastProgress) < 500*time.Millisecond {
		return nil
	}
	w.lastProgress = time.Now()
	p.Relayed = w.relayed()
	if p.DiskLen == 0 {
		p.DiskLen = w.mirrorLen
	}
	return w.a.cp.MigrationProgress(ctx, w.a.cfg.Host, s.ID, p)
}

// progressOf turns QEMU's view into the API's.
func progressOf(id string, q qemu.MigrationStatus) api.MigrationProgress {
	p := api.MigrationProgress{ID: id, Total: q.TotalBytes, Moved: q.TransferredBytes, Left: q.RemainingBytes,
		DirtyBps: q.DirtyRate, Mbps: q.Mbps, TotalMs: q.TotalTime.Milliseconds(), Throttle: q.CPUThrottlePercent, Error: q.Error}
	switch q.Status {
	case "completed":
		p.Phase, p.DowntimeMs = api.MigrationCompleted, q.Downtime.Milliseconds()
	case "failed", "cancelled", "none":
		p.Phase = api.MigrationFailed
	case "postcopy-active", "postcopy-paused", "postcopy-recover":
		p.Phase, p.Postcopy = "postcopy", true
	case "pre-switchover", "device":
		p.Phase = "switchover"
	default:
		p.Phase = "memory"
	}
	if bps := q.Mbps * 1e6 / 8; bps > 0 {
		p.ETAMs = int64(float64(q.RemainingBytes) / bps * 1000)
	}
	return p
}

// migrationLost reports a migration whose source QEMU is gone.
func (w *worker) migrationLost(ctx context.Context, s *api.VMSpec) error {
	if err := w.report(ctx, s, api.StateMigrating, "QEMU is not running on the source"); err != nil {
		return err
	}
	if w.migEnded == s.Migration.ID {
		return nil
	}
	w.migEnded = s.Migration.ID
	w.tunnelStop()
	return w.progress(ctx, s, api.MigrationProgress{ID: s.Migration.ID, Phase: api.MigrationFailed,
		Error: "the VM is not running on the source " + w.a.cfg.Host})
}

// settleOldMigration makes sure no earlier migration still runs in QEMU
// (one called off may take a moment to wind down) before a new one.
func (w *worker) settleOldMigration(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := w.proc.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		if q.Done() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("an earlier migration is still %s in QEMU; try again later", q.Status)
		}
		if q.Status != "cancelling" {
			_ = w.proc.CancelMigration(ctx)
		}
		sleep(ctx, 50*time.Millisecond)
	}
}
