package server

import (
	"context"

	"github.com/shoalvm/shoal/internal/api"
)

// letMigrate makes the fake hosts carry out live migrations (on) or
// leave them waiting for their target (off, the default).
func (h *apiHarness) letMigrate(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.migrate = on
}

func (h *apiHarness) migrating() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.migrate
}

// fakeMigration plays both hosts of VM sp's migration through the store,
// one step per call, as the agents would: the target says where it waits
// (MigrationReady), the source reports its last figures
// (MigrationProgress), then the target reports its switch time and
// commits the move by compare-and-swap (CommitMigration: Host = Target,
// Migration = nil). It moves no VM.
func (h *apiHarness) fakeMigration(ctx context.Context, sp api.VMSpec) {
	m := sp.Migration
	same := func(v *api.VMSpec) error {
		if v.ID != sp.ID || v.Migration == nil || v.Migration.ID != m.ID {
			return api.Errorf(api.ErrConflict, "the migration of vm %q was cancelled or replaced", sp.Name)
		}
		return nil
	}
	if m.Endpoint == nil {
		_, _ = h.st.UpdateVM(ctx, sp.Name, func(v *api.VMSpec) error {
			if err := same(v); err != nil {
				return err
			}
			v.Migration.Endpoint = &api.MigrationEndpoint{URI: "tcp:" + m.Target + ":4444"}
			return nil
		})
		return
	}
	if _, err := h.st.UpdateMigration(ctx, sp.ID, func(r *api.MigrationRecord) error {
		if r.ID != m.ID {
			return api.Errorf(api.ErrConflict, "migration %s is over", m.ID)
		}
		r.Progress = &api.MigrationProgress{ID: m.ID, Phase: api.MigrationCompleted, Total: 64 << 20, Moved: 70 << 20, DowntimeMs: 30}
		r.SwitchMs = 11
		return nil
	}); err != nil {
		return
	}
	_, _ = h.st.UpdateVM(ctx, sp.Name, func(v *api.VMSpec) error {
		if err := same(v); err != nil {
			return err
		}
		v.Host, v.Migration = m.Target, nil
		return nil
	})
}
