package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/shoalvm/shoal/internal/api"
)

// errUnchanged aborts a settings write that would change nothing.
var errUnchanged = errors.New("settings unchanged")

// updateVM answers PATCH /v1/vms/{name}: it changes a VM's HA, failover
// priority, anti-affinity group and size with a compare-and-swap of its
// spec (and of its project's usage, for a size). None of them needs the
// VM's host to act at once (a new size applies from the VM's next
// start), so it does not wait.
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	var req api.UpdateVMRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	size, err := checkUpdate(req)
	if err != nil {
		return err
	}
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	want := sp
	ch, err := applySettings(&want, req, size)
	if err != nil {
		return err
	}
	if want.HA != sp.HA && sp.Host != "" {
		// A host that is away has not learned the change: it would not
		// fence a VM that became HA, and failover must not act on it.
		alive, err := s.st.HostAlive(ctx, sp.Host)
		if err != nil {
			return err
		}
		if !alive {
			return api.Errorf(api.ErrConflict, "host %s of vm %s is down: change its HA setting once the host is back (or recover the VM first)", sp.Host, name)
		}
	}
	undo, err := s.admitSettings(ctx, sp, want, ch)
	if err != nil {
		return err
	}
	_, err = s.st.UpdateVMCounted(ctx, name, func(v *api.VMSpec) error {
		before := *v
		changed := api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", name)
		if v.ID != sp.ID {
			return changed
		}
		// What the cache checked must still hold: same host, same size,
		// not started since (a stopped VM was not checked).
		if (ch.regroup || ch.resize) && (v.Host != sp.Host || v.Power != api.PowerStopped && sp.Power == api.PowerStopped) ||
			ch.resize && (v.CPUs != sp.CPUs || v.MemoryMiB != sp.MemoryMiB) {
			return changed
		}
		again, err := applySettings(v, req, size)
		switch {
		case err != nil:
			return err
		case again != ch:
			return changed
		case v.HA == before.HA && v.Priority == before.Priority && v.AntiAffinity == before.AntiAffinity &&
			v.CPUs == before.CPUs && v.MemoryMiB == before.MemoryMiB:
			return errUnchanged
		}
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		undo()
		return notFoundHint(err, "see 'shoal vm list'")
	}
	if err == nil {
		s.log.Info("vm settings changed", "name", name, "ha", want.HA, "priority", want.Priority, "anti_affinity", want.AntiAffinity,
			"cpus", want.CPUs, "memory_mib", want.MemoryMiB)
	}
	vm, _, err := s.loadVM(ctx, name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// admitSettings has the placement cache check and hold what a change
// from sp to want needs where the VM is (its anti-affinity group, its
// size); undo gives it back if the change is not written after all.
func (s *Server) admitSettings(ctx context.Context, sp, want api.VMSpec, ch settingsChange) (undo func(), err error) {
	undo = func() {}
	if !ch.regroup && !ch.resize {
		return undo, nil
	}
	rev, err := s.st.Revision(ctx)
	if err != nil {
		return nil, err
	}
	if ch.regroup {
		if undo, err = s.cache.admitGroup(ctx, rev, sp, want.AntiAffinity); err != nil {
			return nil, err
		}
	}
	if ch.resize {
		undoGroup := undo
		undoSize, err := s.cache.admitResize(ctx, rev, sp, want, s.cfg.Policy)
		if err != nil {
			undoGroup()
			return nil, err
		}
		undo = func() { undoSize(); undoGroup() }
	}
	return undo, nil
}

// sizeChange is a checked new size; a zero field is left as it is.
type sizeChange struct {
	cpus   int
	memMiB int64
}

// checkUpdate validates a settings change on its own, before any VM is
// read, with the limits and messages of a create, and returns the new
// size it asks for. Pure.
func checkUpdate(req api.UpdateVMRequest) (sizeChange, error) {
	var size sizeChange
	if req.HA == nil && req.Priority == nil && req.AntiAffinity == nil && req.CPUs == nil && req.Memory == nil {
		return size, api.Errorf(api.ErrInvalid, "nothing to change: give --cpus, --memory, --ha, --priority or --anti-affinity")
	}
	if req.CPUs != nil {
		if err := checkCPUs(*req.CPUs); err != nil {
			return size, err
		}
		size.cpus = *req.CPUs
	}
	if req.Memory != nil {
		m, err := parseMemory(*req.Memory)
		if err != nil {
			return size, err
		}
		size.memMiB = m
	}
	if req.Priority != nil {
		if err := api.ValidatePriority(*req.Priority); err != nil {
			return size, err
		}
		if *req.Priority != "" && req.HA != nil && !*req.HA {
			return size, api.Errorf(api.ErrInvalid, "--priority needs --ha: a VM without HA has no failover priority")
		}
	}
	if req.AntiAffinity != nil && *req.AntiAffinity != "" {
		if err := api.ValidateName("anti-affinity group", *req.AntiAffinity); err != nil {
			return size, err
		}
	}
	return size, nil
}

// settingsChange is what a settings change does beyond the spec: a VM
// that changes its anti-affinity group (regroup) or its size (resize)
// needs the placement cache's check.
type settingsChange struct{ regroup, resize bool }

// applySettings makes a checked settings change to a spec, given its
// current state. Turning HA off clears the priority. Pure.
func applySettings(sp *api.VMSpec, req api.UpdateVMRequest, size sizeChange) (settingsChange, error) {
	var ch settingsChange
	if sp.Deleting {
		return ch, api.Errorf(api.ErrConflict, "vm %q is being deleted", sp.Name)
	}
	ha := sp.HA
	if req.HA != nil {
		ha = *req.HA
	}
	if req.Priority != nil && *req.Priority != "" && !ha {
		return ch, api.Errorf(api.ErrInvalid, "vm %q is not highly available: --priority needs --ha=true", sp.Name)
	}
	cpus, mem := sp.CPUs, sp.MemoryMiB
	if size.cpus > 0 {
		cpus = size.cpus
	}
	if size.memMiB > 0 {
		mem = size.memMiB
	}
	if cpus != sp.CPUs || mem != sp.MemoryMiB {
		if m := sp.Migration; m != nil {
			return ch, migratingSize(sp.Name, m.Target)
		}
		sp.Resize(cpus, mem)
		ch.resize = true
	}
	if req.AntiAffinity != nil && *req.AntiAffinity != sp.AntiAffinity {
		if m := sp.Migration; m != nil {
			return ch, api.Errorf(api.ErrConflict, "vm %q is migrating to %s: change its anti-affinity group once the migration is over",
				sp.Name, m.Target)
		}
		sp.AntiAffinity, ch.regroup = *req.AntiAffinity, true
	}
	sp.HA = ha
	if req.Priority != nil {
		sp.Priority = *req.Priority
	}
	if !ha {
		sp.Priority = ""
	}
	return ch, nil
}
