package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// Defaults of a migration's options.
const (
	defaultDowntimeMs = 50
	maxDowntimeMs     = 2_000_000
)

// migrateVM starts a live migration: it picks (or checks) the target,
// holds room there, records the migration and writes it into the VM's
// spec. The hosts do the rest; the migration controller watches.
func (s *Server) migrateVM(w http.ResponseWriter, r *http.Request) error {
	var req api.MigrateRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := checkMigrateOptions(&req.MigrationOptions); err != nil {
		return err
	}
	rec, err := s.startMigration(r.Context(), r.PathValue("name"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, rec)
	return nil
}

// startMigration starts the live migration of VM name as req asks (its
// options checked already) and returns its record.
func (s *Server) startMigration(ctx context.Context, name string, req api.MigrateRequest) (api.MigrationRecord, error) {
	vm, sp, err := s.loadVM(ctx, name)
	if err != nil {
		return api.MigrationRecord{}, err
	}
	if err := canMigrate(vm, sp, req.To); err != nil {
		return api.MigrationRecord{}, err
	}
	if len(sp.Volumes) > 0 {
		hosts, err := s.hostViews(ctx)
		if err != nil {
			return api.MigrationRecord{}, err
		}
		if i := slices.IndexFunc(hosts, func(h api.Host) bool { return h.Name == sp.Host }); i >= 0 {
			if err := volumesMove(sp, hosts[i]); err != nil {
				return api.MigrationRecord{}, err
			}
		}
	}
	from, err := s.hostIP(ctx, sp.Host)
	if err != nil {
		return api.MigrationRecord{}, err
	}
	// The target's QEMU gets the size the VM runs at, which its host
	// reports (the spec's may have changed since it started).
	mig := api.Migration{CPUs: vm.RunningCPUs, MemoryMiB: vm.RunningMemoryMiB, VolumeSlots: vm.VolumeSlots}
	if mig.CPUs == 0 || mig.MemoryMiB == 0 { // a host that does not say
		mig.CPUs, mig.MemoryMiB = sp.CPUs, sp.MemoryMiB
		if sp.StartedCPUs > 0 {
			mig.CPUs, mig.MemoryMiB = sp.StartedCPUs, sp.StartedMemoryMiB
		}
	}
	sized := sp
	sized.Migration = &mig
	to, undo, err := s.cache.reserveMigration(ctx, sp.Rev, sized, req.To, s.cfg.Policy)
	if err != nil {
		return api.MigrationRecord{}, err
	}
	now := time.Now().UTC()
	rec := api.MigrationRecord{ID: newID(), VM: name, From: sp.Host, To: to, Result: api.MigrationRunning,
		Shared: sp.SharedDisk(), Insecure: req.Insecure, StartedAt: now}
	// The record and the spec naming the migration are written together.
	mig.ID, mig.Source, mig.SourceAddr, mig.Target, mig.Options, mig.StartedAt = rec.ID, sp.Host, from.String(), to, req.MigrationOptions, now
	if _, err := s.st.BeginMigration(ctx, sp, rec, mig); err != nil {
		undo()
		return rec, err
	}
	s.log.Info("migration requested", "vm", name, "from", sp.Host, "to", to, "id", rec.ID)
	s.events.record(ctx, migrationStartEvent(rec, sp.Pool))
	s.migrations.follow(sp.ID)
	return rec, nil
}

// hostIP returns the IP address of host's agent, from which its
// migration streams come.
func (s *Server) hostIP(ctx context.Context, host string) (netip.Addr, error) {
	h, err := s.st.GetHost(ctx, host)
	if err != nil {
		return netip.Addr{}, err
	}
	u, err := url.Parse(h.Address)
	var ip netip.Addr
	if err == nil {
		ip, err = netip.ParseAddr(u.Hostname())
	}
	if err != nil || ip.IsUnspecified() {
		return netip.Addr{}, api.Errorf(api.ErrConflict, "host %s has no address its migration streams come from (it registered %q): restart its agent with --listen IP:PORT", host, h.Address)
	}
	return ip, nil
}

// checkMigrateOptions validates options and fills in defaults.
func checkMigrateOptions(o *api.MigrationOptions) error {
	if o.DowntimeMs < 0 || o.DowntimeMs > maxDowntimeMs {
		return api.Errorf(api.ErrInvalid, "downtime %d ms is out of range: use 1 to %d", o.DowntimeMs, maxDowntimeMs)
	}
	if o.DowntimeMs == 0 {
		o.DowntimeMs = defaultDowntimeMs
	}
	if o.BandwidthBytes < 0 {
		return api.Errorf(api.ErrInvalid, "bandwidth must not be negative")
	}
	if o.PostcopyAfterMs < 0 {
		return api.Errorf(api.ErrInvalid, "post-copy delay must not be negative")
	}
	return nil
}

// canMigrate says whether vm may migrate now, to to ("" = anywhere). Pure.
func canMigrate(vm api.VM, sp api.VMSpec, to string) error {
	switch {
	case sp.Deleting:
		return api.Errorf(api.ErrConflict, "vm %q is being deleted", sp.Name)
	case sp.Migration != nil:
		return api.Errorf(api.ErrConflict, "vm %q is already migrating to %s; follow it with 'shoal vm migrate %s --follow' or cancel it with --cancel",
			sp.Name, sp.Migration.Target, sp.Name)
	case sp.Power != api.PowerRunning || vm.State != api.StateRunning:
		return api.Errorf(api.ErrConflict, "vm %q is %s: only a running VM migrates live", sp.Name, vm.State)
	case to != "" && to == sp.Host:
		return api.Errorf(api.ErrConflict, "vm %q already runs on host %s", sp.Name, to)
	}
	if to != "" {
		if err := api.ValidateName("host", to); err != nil {
			return err
		}
	}
	return nil
}

// getMigration shows the VM's migration in flight, or else its last one,
// with an ETag. A request with If-None-Match naming the record's ETag
// waits until the record changes (up to ?timeout=, default and at most
// migrationWaitMax) and then answers with it, or answers 304 Not
// Modified: a client follows a migration without polling.
func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	known := r.Header.Get("If-None-Match")
	var ws waitSpec
	if known != "" { // ?timeout= matters only then
		var err error
		if ws, err = s.wantWait(r); err != nil {
			return err
		}
	}
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	var changes <-chan struct{}
	if known != "" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, min(ws.timeout, migrationWaitMax))
		defer cancel()
		changes = s.st.MigrationChanges(ctx, name, sp.ID) // before the first look: no change is missed
	}
	for {
		rec, err := s.lastMigration(ctx, name, sp.ID)
		if err != nil {
			if known != "" && ctx.Err() != nil && r.Context().Err() == nil {
				w.WriteHeader(http.StatusNotModified) // the wait ended while looking
				return nil
			}
			return err
		}
		tag, err := etagOf(rec)
		if err != nil {
			return err
		}
		w.Header().Set("ETag", tag)
		if tag != known {
			writeJSON(w, http.StatusOK, rec)
			return nil
		}
		select {
		case <-changes:
		case <-ctx.Done():
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
}

// migrationWaitMax bounds how long a GET of a migration waits for a
// change.
const migrationWaitMax = 30 * time.Second

// etagOf is a strong ETag of a migration record: a hash of its JSON.
func etagOf(rec api.MigrationRecord) (string, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	h := fnv.New64a()
	h.Write(b)
	return fmt.Sprintf(`"%016x"`, h.Sum64()), nil
}

// lastMigration is VM vmID's (named name) migration in flight, or else
// its last one.
func (s *Server) lastMigration(ctx context.Context, name, vmID string) (api.MigrationRecord, error) {
	rec, err := s.st.ActiveMigration(ctx, vmID)
	if err == nil || !api.IsNotFound(err) {
		return rec, err
	}
	hist, err := s.st.Migrations(ctx, vmID)
	if err != nil {
		return rec, err
	}
	if len(hist) == 0 {
		return rec, api.Errorf(api.ErrNotFound, "vm %q has never migrated", name)
	}
	return hist[0], nil
}

// cancelMigration calls off the VM's migration in flight; the VM keeps
// running on its source.
func (s *Server) cancelMigration(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	if sp.Migration == nil {
		return api.Errorf(api.ErrConflict, "vm %q is not migrating", name)
	}
	if rec, err := s.st.ActiveMigration(ctx, sp.ID); err == nil && rec.Progress != nil && rec.Progress.Postcopy {
		return api.Errorf(api.ErrConflict, "too late to cancel: the migration of vm %q is in post-copy (the VM already runs on %s); wait for it to end", name, sp.Migration.Target)
	}
	if err := s.migrations.abort(ctx, sp.ID, sp.Migration.ID, api.MigrationCancelled, "cancelled by the user"); err != nil {
		return err
	}
	rec, err := s.migrations.wait(ctx, sp.ID, sp.Migration.ID)
	if err != nil {
		return err
	}
	if rec.Result == api.MigrationCompleted {
		return api.Errorf(api.ErrConflict, "too late: the migration of vm %q had already completed (it runs on %s)", name, rec.To)
	}
	writeJSON(w, http.StatusOK, rec)
	return nil
}

// withMigrations adds the migration in flight and the history to a VM's
// view.
func (s *Server) withMigrations(ctx context.Context, vm *api.VM) error {
	if vm.Migration != nil {
		if rec, err := s.st.ActiveMigration(ctx, vm.ID); err == nil && rec.ID == vm.Migration.ID {
			vm.Migration = &rec
		}
	}
	hist, err := s.st.Migrations(ctx, vm.ID)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return fmt.Errorf("migration history: %w", err)
	}
	vm.Migrations = hist
	return nil
}
