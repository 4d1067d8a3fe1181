package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// Limits of the migration controller.
const (
	migrationTick    = 100 * time.Millisecond
	prepareTimeout   = 2 * time.Minute  // for the target to get ready (it may first fetch the image)
	stallTimeout     = 30 * time.Second // without any progress, a migration is called off
	targetDownGrace  = 3 * time.Second  // a target host down this long fails the migration
	finalReportGrace = 3 * time.Second  // after the commit, for the hosts' last figures
)

// migrator follows the migrations in flight: it ends them when the hosts
// are done (recording the figures in the VM's history), and calls them
// off when they fail, stall, or lose their target. Its decisions live in
// judge, which is pure; all state is in etcd, so a restarted server
// resumes following where the last one stopped.
type migrator struct {
	st  *store.Store
	log *slog.Logger
	ev  *eventLog
	ctx context.Context

	mu        sync.Mutex
	following map[string]bool // VM ids followed by this process
}

func newMigrator(st *store.Store, log *slog.Logger, ev *eventLog) *migrator {
	return &migrator{st: st, log: log, ev: ev, following: map[string]bool{}} // ctx: set while leading
}

// start follows every migration left in flight by an earlier server, and
// calls off those whose start was cut short.
func (m *migrator) start(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	if err := m.scan(ctx); err != nil {
		return err
	}
	specs, _, err := m.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	active, err := m.st.ActiveMigrations(ctx)
	if err != nil {
		return err
	}
	for _, sp := range specs {
		if sp.Migration != nil && active[sp.ID].ID != sp.Migration.ID {
			m.log.Warn("migration without a record; calling it off", "vm", sp.Name)
			_ = m.clear(ctx, sp.Name, sp.ID, sp.Migration.ID)
		}
	}
	go rescan(ctx, m.scan)
	return nil
}

// scan follows every migration in flight (another replica may have
// started one).
func (m *migrator) scan(ctx context.Context) error {
	active, err := m.st.ActiveMigrations(ctx)
	if err != nil {
		return err
	}
	for id := range active {
		m.follow(id)
	}
	return nil
}

// follow starts following the migration of a VM, unless it is followed.
// Only the leader follows migrations: elsewhere it does nothing, and the
// leader's scan picks the migration up.
func (m *migrator) follow(vmID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.following[vmID] || m.ctx == nil || m.ctx.Err() != nil {
		return
	}
	m.following[vmID] = true
	ctx := m.ctx
	go func() {
		defer func() {
			m.mu.Lock()
			delete(m.following, vmID)
			m.mu.Unlock()
		}()
		m.run(ctx, vmID)
	}()
}

// watch is what judge remembers between looks at one migration.
type watch struct {
	lastMark   string    // progress signature at the last change
	lastChange time.Time // when progress last changed
	targetDown time.Time // since when the target is seen down (zero: up)
	sourceDown time.Time // since when the source is seen down (zero: up)
	endedAt    time.Time // when the end was first seen
	name       string    // the VM's name (set by step)
}

// run follows the migration of VM vmID until it has ended: a look at
// each change of its spec or record, and at least every migrationTick
// (for the clocks of judge).
func (m *migrator) run(ctx context.Context, vmID string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wt watch
	t := time.NewTicker(migrationTick)
	defer t.Stop()
	var changes <-chan struct{}
	for {
		done, err := m.step(ctx, vmID, &wt, time.Now())
		if err != nil {
			m.log.Warn("migration controller", "vm_id", vmID, "err", err)
		}
		if done {
			return
		}
		if changes == nil && wt.name != "" {
			changes = m.st.MigrationChanges(ctx, wt.name, vmID)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changes:
		}
	}
}

// step looks at a migration once and acts on judge's verdict.
func (m *migrator) step(ctx context.Context, vmID string, wt *watch, now time.Time) (bool, error) {
	rec, err := m.st.ActiveMigration(ctx, vmID)
	if api.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	wt.name = rec.VM
	sp, err := m.st.GetVM(ctx, rec.VM)
	var spec *api.VMSpec
	if err == nil && sp.ID == vmID {
		spec = &sp
	} else if err != nil && !api.IsNotFound(err) {
		return false, err
	}
	alive, err := m.st.AliveHosts(ctx)
	if err != nil {
		return false, err
	}
	v := judge(rec, spec, alive, wt, now)
	switch v.action {
	case actWait:
		return false, nil
	case actAbort:
		m.log.Warn("calling off migration", "vm", rec.VM, "from", rec.From, "to", rec.To, "why", v.reason)
		return false, m.abort(ctx, vmID, rec.ID, v.result, v.reason)
	}
	rec.Result, rec.EndedAt = v.result, now.UTC()
	if rec.Error == "" {
		rec.Error = v.reason
	}
	finish(&rec)
	if err := m.st.FinishMigration(ctx, vmID, rec); err != nil {
		return false, err
	}
	m.log.Info("migration ended", "vm", rec.VM, "from", rec.From, "to", rec.To, "result", rec.Result,
		"total_ms", rec.TotalMs, "downtime_ms", rec.DowntimeMs, "bytes", rec.Bytes, "error", rec.Error)
	m.ev.record(ctx, migrationEndEvent(rec))
	return true, nil
}

// finish fills a record's figures from the hosts' last reports.
//
// The downtime is the guest's pause: from the source stopping it to the
// target resuming it, by the two hosts' clocks. It is at least QEMU's
// downtime (on the source, from the stop to the stream's end) plus the
// target's switch (from the stream's end there to the resume); more when
// the target took longer to read the stream's last part than the source
// to send it. Without both times, or with clocks that make the pause
// shorter than that sum, it is the sum.
func finish(rec *api.MigrationRecord) {
	rec.TotalMs = rec.EndedAt.Sub(rec.StartedAt).Milliseconds()
	if p := rec.Progress; p != nil {
		rec.Bytes, rec.DiskBytes, rec.Relayed, rec.Postcopy = p.Moved, p.DiskLen, p.Relayed, p.Postcopy
		if rec.Result == api.MigrationCompleted {
			rec.DowntimeMs = p.DowntimeMs + rec.SwitchMs
			if !p.StoppedAt.IsZero() && !rec.ResumedAt.IsZero() {
				if d := rec.ResumedAt.Sub(p.StoppedAt).Milliseconds(); d > rec.DowntimeMs && d < rec.TotalMs {
					rec.DowntimeMs = d
				}
			}
		}
	}
	rec.Progress = nil
}

// abort records why a migration is called off, then takes it out of the
// VM's spec, unless it committed meanwhile (compare-and-swap): the source
// then resumes the VM and the target discards its copy.
func (m *migrator) abort(ctx context.Context, vmID, migID, result, reason string) error {
	if _, err := m.st.UpdateMigration(ctx, vmID, func(r *api.MigrationRecord) error {
		if r.ID != migID {
			return api.Errorf(api.ErrConflict, "the migration is over")
		}
		if r.Error == "" {
			r.Result, r.Error = result, reason
		}
		return nil
	}); err != nil {
		return err
	}
	rec, err := m.st.ActiveMigration(ctx, vmID)
	if err != nil {
		return err
	}
	return m.clear(ctx, rec.VM, vmID, migID)
}

// clear takes migration migID out of the VM's spec, if it is still there.
func (m *migrator) clear(ctx context.Context, name, vmID, migID string) error {
	_, err := m.st.UpdateVM(ctx, name, func(v *api.VMSpec) error {
		if v.ID != vmID || v.Migration == nil || v.Migration.ID != migID {
			return errNothingToDo
		}
		v.Migration = nil
		return nil
	})
	if err == errNothingToDo || api.IsNotFound(err) {
		return nil
	}
	return err
}

var errNothingToDo = api.Errorf(api.ErrConflict, "nothing to do")

// wait returns the record of migration migID once it has ended.
func (m *migrator) wait(ctx context.Context, vmID, migID string) (api.MigrationRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		hist, err := m.st.Migrations(ctx, vmID)
		if err != nil {
			return api.MigrationRecord{}, err
		}
		for _, h := range hist {
			if h.ID == migID {
				return h, nil
			}
		}
		if err := pause(ctx, migrationTick); err != nil {
			return api.MigrationRecord{}, api.Errorf(api.ErrUnavailable, "the migration has not ended yet")
		}
	}
}
