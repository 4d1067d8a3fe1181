package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// drainTick is how often the drain controller looks at each running drain.
const drainTick = 200 * time.Millisecond

// drainer follows the running drains: each look gathers what planDrain
// needs from the store, starts the migrations and reassignments it
// plans, and writes the report back. All state is in etcd (the report),
// so a restarted server resumes following where the last one stopped.
type drainer struct {
	st  *store.Store
	log *slog.Logger
	ev  *eventLog
	// migrate starts the live migration of a VM (Server.startMigration).
	migrate func(ctx context.Context, name string, req api.MigrateRequest) (api.MigrationRecord, error)
	// place picks another host for a stopped VM, as of revision rev or later.
	place func(ctx context.Context, rev int64, sp api.VMSpec) (string, error)
	ctx   context.Context

	mu        sync.Mutex
	following map[string]bool // drain ids followed by this process
}

func newDrainer(st *store.Store, log *slog.Logger, ev *eventLog,
	migrate func(context.Context, string, api.MigrateRequest) (api.MigrationRecord, error),
	place func(context.Context, int64, api.VMSpec) (string, error)) *drainer {
	return &drainer{st: st, log: log, ev: ev, migrate: migrate, place: place, following: map[string]bool{}}
}

// start follows every drain left running by an earlier server.
func (d *drainer) start(ctx context.Context) error {
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	if err := d.scan(ctx); err != nil {
		return err
	}
	go rescan(ctx, d.scan)
	return nil
}

// scan follows every running drain (another replica may have started one).
func (d *drainer) scan(ctx context.Context) error {
	reps, err := d.st.ListDrains(ctx)
	if err != nil {
		return err
	}
	for _, r := range reps {
		if r.State == api.DrainRunning {
			d.follow(r.Host, r.ID, nil)
		}
	}
	return nil
}

// follow starts following drain id of host, unless it is followed. Once
// its first look is written, looked (if not nil) is closed.
func (d *drainer) follow(host, id string, looked chan<- struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.following[id] {
		if looked != nil {
			close(looked)
		}
		return
	}
	if d.ctx == nil || d.ctx.Err() != nil { // not the leader: its scan picks the drain up
		if looked != nil {
			close(looked)
		}
		return
	}
	d.following[id] = true
	ctx := d.ctx
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.following, id)
			d.mu.Unlock()
		}()
		d.run(ctx, host, id, looked)
	}()
}

func (d *drainer) run(ctx context.Context, host, id string, looked chan<- struct{}) {
	t := time.NewTicker(drainTick)
	defer t.Stop()
	for {
		done, err := d.step(ctx, host, id, time.Now())
		if err != nil {
			d.log.Warn("drain controller", "host", host, "drain", id, "err", err)
		}
		if looked != nil {
			close(looked)
			looked = nil
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// errDrainChanged refuses to write a report that changed since it was read.
var errDrainChanged = errors.New("the drain changed meanwhile")

// step looks at a drain once: it plans, acts, and writes the report. It
// returns true once the drain is over (or gone).
func (d *drainer) step(ctx context.Context, host, id string, now time.Time) (bool, error) {
	rep, err := d.st.GetDrain(ctx, host)
	if api.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if rep.ID != id || rep.State != api.DrainRunning {
		return true, nil
	}
	h, err := d.st.GetHost(ctx, host)
	if err != nil && !api.IsNotFound(err) {
		return false, err
	}
	resumed := err != nil || h.State != api.HostMaintenance // a removed host has nothing to drain
	cands, specs, err := d.candidates(ctx, host)
	if err != nil {
		return false, err
	}
	plan := planDrain(drainInput{Report: rep, VMs: cands, Outcomes: d.outcomes(ctx, rep), Resumed: resumed, Now: now})
	next := plan.Report
	at := map[string]int{}
	for i, e := range next.VMs {
		at[e.Name] = i
	}
	for _, name := range plan.Migrate {
		e := &next.VMs[at[name]]
		rec, err := d.migrate(ctx, name, api.MigrateRequest{MigrationOptions: rep.Options})
		afterStart(e, rec, err, now)
	}
	for _, name := range plan.Reassign {
		e := &next.VMs[at[name]]
		to, err := d.reassign(ctx, host, specs[name])
		afterReassign(e, to, err, now)
	}
	over := drainOver(next)
	if over {
		next.State, next.EndedAt = api.DrainDone, now.UTC()
	}
	base, err := reportBytes(rep)
	if err != nil {
		return false, err
	}
	_, err = d.st.UpdateDrain(ctx, host, id, func(r *api.DrainReport) error {
		if cur, err := reportBytes(*r); err != nil || cur != base {
			return errDrainChanged
		}
		*r = next
		return nil
	})
	switch {
	case errors.Is(err, errDrainChanged):
		return false, nil // another look wrote first: look again
	case errors.Is(err, api.ErrConflict), api.IsNotFound(err):
		return true, nil // replaced by another drain
	case err != nil:
		return false, err
	}
	d.announce(ctx, rep, next)
	return over, nil
}

// candidates returns the VMs with a part on host as the planner sees
// them, and their specs by name.
func (d *drainer) candidates(ctx context.Context, host string) ([]drainCand, map[string]api.VMSpec, error) {
	all, _, err := d.st.ListVMs(ctx)
	if err != nil {
		return nil, nil, err
	}
	var cands []drainCand
	specs := map[string]api.VMSpec{}
	for _, sp := range all {
		if !sp.OnHost(host) {
			continue
		}
		st, err := d.st.GetStatus(ctx, sp.ID)
		if err != nil && !api.IsNotFound(err) {
			return nil, nil, err
		}
		specs[sp.Name] = sp
		cands = append(cands, drainCandOf(sp, ptrIf(st, err == nil), host))
	}
	return cands, specs, nil
}

// drainCandOf is how the planner sees VM sp (reported st, or nil) of a
// drain of host. Pure.
func drainCandOf(sp api.VMSpec, st *api.VMStatus, host string) drainCand {
	vm := api.MergeVM(sp, st)
	c := drainCand{Name: sp.Name, ID: sp.ID, State: vm.State, Power: sp.Power, Pool: sp.Pool, Error: vm.Error,
		Inbound: sp.Host != host, Migrating: sp.Migration != nil, Deleting: sp.Deleting}
	c.Settled = st != nil && st.ID == sp.ID && st.Host == sp.Host && st.ObservedRev >= sp.Rev
	return c
}

// outcomes finds out how the migrations the drain started are doing. A
// migration it cannot look up now is left out (the planner then waits).
func (d *drainer) outcomes(ctx context.Context, rep api.DrainReport) map[string]migOutcome {
	out := map[string]migOutcome{}
	for _, e := range rep.VMs {
		if e.Result != api.DrainMigrating {
			continue
		}
		if o, ok := d.outcome(ctx, e); ok {
			out[e.Migration] = o
		}
	}
	return out
}

func (d *drainer) outcome(ctx context.Context, e api.DrainVM) (migOutcome, bool) {
	cur, err := d.st.ActiveMigration(ctx, e.ID)
	switch {
	case err == nil && cur.ID == e.Migration:
		return migOutcome{Running: true}, true
	case err != nil && !api.IsNotFound(err):
		return migOutcome{}, false
	}
	hist, err := d.st.Migrations(ctx, e.ID)
	if err != nil {
		return migOutcome{}, false
	}
	for _, h := range hist {
		if h.ID == e.Migration {
			return migOutcome{Rec: h}, true
		}
	}
	sp, err := d.st.GetVM(ctx, e.Name)
	switch {
	case api.IsNotFound(err) || err == nil && sp.ID != e.ID:
		return migOutcome{Gone: true}, true
	case err != nil:
		return migOutcome{}, false
	}
	// The VM is there, its migration in flight nowhere and in no history.
	return migOutcome{Rec: api.MigrationRecord{ID: e.Migration, VM: e.Name, From: sp.Host, To: e.To,
		Result: api.MigrationFailed, Error: "its record was lost"}}, true
}

// reassign gives stopped VM sp, on a shared pool, another host than
// host, by compare-and-swap on the spec the drain judged: a VM that
// changed meanwhile (started, say) is left alone.
func (d *drainer) reassign(ctx context.Context, host string, sp api.VMSpec) (string, error) {
	to, err := d.place(ctx, sp.Rev, sp)
	if err != nil {
		return "", err
	}
	_, err = d.st.UpdateVM(ctx, sp.Name, func(v *api.VMSpec) error {
		if v.ID != sp.ID || v.Rev != sp.Rev || v.Host != host || v.Power != api.PowerStopped || v.Migration != nil || v.Deleting {
			return api.Errorf(api.ErrConflict, "vm %q changed meanwhile; the drain tries again", sp.Name)
		}
		v.Host = to
		return nil
	})
	if err != nil {
		return "", err
	}
	d.log.Info("stopped vm reassigned", "vm", sp.Name, "from", host, "to", to)
	return to, nil
}
