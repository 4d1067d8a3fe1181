package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
)

// canAttach says whether volume v may be attached to the VM of spec sp,
// whose host is h (the zero Host if unknown): nil, or an error naming
// the first reason in one line. Pure.
func canAttach(sp api.VMSpec, v api.Volume, h api.Host) error {
	switch {
	case sp.Deleting:
		return api.Errorf(api.ErrConflict, "vm %q is being deleted", sp.Name)
	case sp.Migration != nil:
		return api.Errorf(api.ErrConflict, "vm %q is migrating: attach the volume once the migration is over", sp.Name)
	case v.VM == sp.Name:
		return api.Errorf(api.ErrConflict, "volume %q is attached to vm %s already", v.Name, sp.Name)
	case v.VM != "":
		return api.Errorf(api.ErrConflict, "volume %q is attached to vm %s: detach it first ('shoal vm detach %s %s')", v.Name, v.VM, v.VM, v.Name)
	case v.State != api.VolumeReady:
		return api.Errorf(api.ErrConflict, "volume %q is %s: attach it once it is ready", v.Name, v.State)
	case api.ProjectOf(v.Project) != api.ProjectOf(sp.Project):
		return api.Errorf(api.ErrConflict, "volume %q is of project %s and vm %s of project %s: a volume is attached within its project",
			v.Name, api.ProjectOf(v.Project), sp.Name, api.ProjectOf(sp.Project))
	}
	ps, ok := poolOf(h, v.Pool)
	switch {
	case h.Name != "" && !ok:
		return api.Errorf(api.ErrConflict, "host %s of vm %s has no pool %q, where volume %s is", h.Name, sp.Name, v.Pool, v.Name)
	case !ps.Shared && sp.HA:
		return api.Errorf(api.ErrConflict, "vm %s is highly available and volume %q is in host %s's own pool %q: an HA VM's volumes must be on a shared pool, reachable where it fails over",
			sp.Name, v.Name, v.Host, v.Pool)
	case !ps.Shared && v.Host != sp.Host:
		return api.Errorf(api.ErrConflict, "volume %q is in host %s's own pool %q and vm %s is on %s: use a volume of a shared pool, or one on %s",
			v.Name, v.Host, v.Pool, sp.Name, sp.Host, sp.Host)
	}
	return nil
}

// slotOf is the hot-plug slot sp gives the volume of id.
func slotOf(sp api.VMSpec, id string) int {
	for _, r := range sp.Volumes {
		if r.ID == id {
			return r.Slot
		}
	}
	return 0
}

// volumesMove says whether the volumes of the VM of spec sp, on host
// src, can follow it to another host: those of a host's own pool cannot.
// Pure.
func volumesMove(sp api.VMSpec, src api.Host) error {
	for _, r := range sp.Volumes {
		if ps, ok := poolOf(src, r.Pool); ok && !ps.Shared {
			return api.Errorf(api.ErrConflict, "vm %q has volume %s in host %s's own pool %q, which cannot follow it: detach it first, or use volumes of a shared pool",
				sp.Name, r.Name, src.Name, r.Pool)
		}
	}
	return nil
}

// opens reports whether the VM's running QEMU has the volume of id open
// (as its host last said).
func opens(vm api.VM, id string) bool { return slices.Contains(vm.OpenVolumes, id) }

func (s *Server) attachVolume(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	var req api.AttachRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	ws, err := s.wantWait(r)
	if err != nil {
		return err
	}
	audit.SetObject(ctx, "vm/"+name)
	if err := s.seesVolume(ctx, req.Volume); err != nil {
		return err
	}
	if v, err := s.st.GetVolume(ctx, req.Volume); err == nil {
		if _, err := s.releaseStale(ctx, v); err != nil {
			return err
		}
	}
	hosts, err := s.hostViews(ctx)
	if err != nil {
		return err
	}
	var id string
	sp, err := s.st.AttachVolume(ctx, name, req.Volume, func(sp api.VMSpec, v api.Volume) error {
		id = v.ID
		i := slices.IndexFunc(hosts, func(h api.Host) bool { return h.Name == sp.Host })
		var h api.Host
		if i >= 0 {
			h = hosts[i]
		}
		return canAttach(sp, v, h)
	})
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list' and 'shoal volume list'")
	}
	if vm, _, err := s.loadVM(ctx, name); err == nil && (sp.Power == api.PowerStopped || vm.VolumeSlots < slotOf(sp, id)) {
		ws.wait = false // attached at its next start
	}
	return s.respondAfter(w, r, http.StatusOK, name, sp.Rev, ws, func(vm api.VM) bool {
		return opens(vm, id) || vm.State == api.StateStopped
	}, "has volume "+req.Volume+" in its spec, but ")
}

func (s *Server) detachVolume(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	var req api.AttachRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	audit.SetObject(ctx, "vm/"+name)
	if err := s.seesVolume(ctx, req.Volume); err != nil {
		return err
	}
	sp, v, err := s.st.DetachVolume(ctx, name, req.Volume)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list' and 'shoal volume list'")
	}
	// Free the volume only once the VM's QEMU has let it go.
	if !s.awaitVM(ctx, name, func(vm api.VM, err error) bool {
		return api.IsNotFound(err) || err == nil && (vm.ObservedRev >= sp.Rev || vm.State == api.StateStopped) && !opens(vm, v.ID)
	}) {
		return api.Errorf(api.ErrUnavailable, "vm %q still has volume %q open after %s; its host may be down (see 'shoal host list'): the volume stays the VM's until it lets it go",
			name, v.Name, s.cfg.WaitTimeout)
	}
	if _, err := s.st.FreeVolume(ctx, name, v.Name, func(api.VMSpec) bool {
		vm, _, err := s.loadVM(ctx, name)
		return err == nil && opens(vm, v.ID)
	}); err != nil {
		return err
	}
	vm, _, err := s.loadVM(ctx, name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// releaseStale frees volume v if the VM it names neither lists it nor
// has it open (a VM deleted, or a detach cut short by a crash), and
// returns it as it is then.
func (s *Server) releaseStale(ctx context.Context, v api.Volume) (api.Volume, error) {
	if v.VM == "" {
		return v, nil
	}
	free, err := s.st.FreeVolume(ctx, v.VM, v.Name, func(api.VMSpec) bool {
		vm, _, err := s.loadVM(ctx, v.VM)
		return err != nil && !api.IsNotFound(err) || opens(vm, v.ID)
	})
	if errors.Is(err, api.ErrConflict) {
		return v, nil // in use indeed
	}
	return free, err
}

// seesVolume is api.ErrNotFound if the caller may not see volume name
// (another project's); a missing volume is left to the store to say.
func (s *Server) seesVolume(ctx context.Context, name string) error {
	id := caller(ctx)
	if id.Project == "" {
		return nil
	}
	v, err := s.st.GetVolume(ctx, name)
	if err == nil && !id.Sees(v.Project) {
		return api.Errorf(api.ErrNotFound, "volume %q not found: see 'shoal volume list'", name)
	}
	return nil
}

// awaitVM reads VM name until done, given it (or the error reading it),
// says so: false if that takes longer than the server's wait timeout.
func (s *Server) awaitVM(ctx context.Context, name string, done func(api.VM, error) bool) bool {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.WaitTimeout)
	defer cancel()
	for {
		vm, _, err := s.loadVM(ctx, name)
		if done(vm, err) {
			return true
		}
		if pause(ctx, 20*time.Millisecond) != nil {
			return false
		}
	}
}
