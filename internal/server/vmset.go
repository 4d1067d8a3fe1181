package server

import (
	"errors"
	"net/http"

	"github.com/shoalvm/shoal/internal/api"
)

// errUnchanged aborts a settings write that would change nothing.
var errUnchanged = errors.New("settings unchanged")

// updateVM answers PATCH /v1/vms/{name}: it changes a VM's HA, failover
// priority and anti-affinity group with a compare-and-swap of its spec.
// None of them needs the VM's host to act, so it does not wait.
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	var req api.UpdateVMRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := checkUpdate(req); err != nil {
		return err
	}
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	want := sp
	regroup, err := applySettings(&want, req)
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
	undo := func() {}
	if regroup {
		rev, err := s.st.Revision(ctx)
		if err != nil {
			return err
		}
		if undo, err = s.cache.admitGroup(ctx, rev, sp, want.AntiAffinity); err != nil {
			return err
		}
	}
	_, err = s.st.UpdateVM(ctx, name, func(v *api.VMSpec) error {
		before := *v
		changed := api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", name)
		if v.ID != sp.ID {
			return changed
		}
		// What admitGroup checked must still hold: same host, not
		// started since (a stopped VM was not checked).
		if regroup && (v.Host != sp.Host || v.Power != api.PowerStopped && sp.Power == api.PowerStopped) {
			return changed
		}
		again, err := applySettings(v, req)
		switch {
		case err != nil:
			return err
		case again != regroup:
			return changed
		case v.HA == before.HA && v.Priority == before.Priority && v.AntiAffinity == before.AntiAffinity:
			return errUnchanged
		}
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		undo()
		return notFoundHint(err, "see 'shoal vm list'")
	}
	if err == nil {
		s.log.Info("vm settings changed", "name", name, "ha", want.HA, "priority", want.Priority, "anti_affinity", want.AntiAffinity)
	}
	vm, _, err := s.loadVM(ctx, name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// checkUpdate validates a settings change on its own, before any VM is
// read. Pure.
func checkUpdate(req api.UpdateVMRequest) error {
	if req.HA == nil && req.Priority == nil && req.AntiAffinity == nil {
		return api.Errorf(api.ErrInvalid, "nothing to change: give --ha, --priority or --anti-affinity")
	}
	if req.Priority != nil {
		if err := api.ValidatePriority(*req.Priority); err != nil {
			return err
		}
		if *req.Priority != "" && req.HA != nil && !*req.HA {
			return api.Errorf(api.ErrInvalid, "--priority needs --ha: a VM without HA has no failover priority")
		}
	}
	if req.AntiAffinity != nil && *req.AntiAffinity != "" {
		if err := api.ValidateName("anti-affinity group", *req.AntiAffinity); err != nil {
			return err
		}
	}
	return nil
}

// applySettings makes a checked settings change to a spec, given its
// current state, and reports whether the VM's anti-affinity group
// changes. Turning HA off clears the priority. Pure.
func applySettings(sp *api.VMSpec, req api.UpdateVMRequest) (regroup bool, err error) {
	if sp.Deleting {
		return false, api.Errorf(api.ErrConflict, "vm %q is being deleted", sp.Name)
	}
	ha := sp.HA
	if req.HA != nil {
		ha = *req.HA
	}
	if req.Priority != nil && *req.Priority != "" && !ha {
		return false, api.Errorf(api.ErrInvalid, "vm %q is not highly available: --priority needs --ha=true", sp.Name)
	}
	if req.AntiAffinity != nil && *req.AntiAffinity != sp.AntiAffinity {
		if m := sp.Migration; m != nil {
			return false, api.Errorf(api.ErrConflict, "vm %q is migrating to %s: change its anti-affinity group once the migration is over",
				sp.Name, m.Target)
		}
		sp.AntiAffinity, regroup = *req.AntiAffinity, true
	}
	sp.HA = ha
	if req.Priority != nil {
		sp.Priority = *req.Priority
	}
	if !ha {
		sp.Priority = ""
	}
	return regroup, nil
}
