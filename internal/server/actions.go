package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// waitSpec says whether and how long an API call waits for the VM's host
// to act on the change it wrote.
type waitSpec struct {
	wait    bool
	timeout time.Duration
}

// vmAction handles start, stop, restart, pause and resume.
func (s *Server) vmAction(w http.ResponseWriter, r *http.Request) error {
	name, action := r.PathValue("name"), r.PathValue("action")
	ws, err := s.wantWait(r)
	if err != nil {
		return err
	}
	if _, err := applyAction(&api.VMSpec{Power: api.PowerStopped}, "", action, true); errors.Is(err, api.ErrInvalid) {
		return err
	}
	var stop api.StopRequest
	if (action == "stop" || action == "restart") && r.ContentLength != 0 {
		if err := decode(r, &stop); err != nil {
			return err
		}
	}
	undo := func() {}
	var admitted api.VMSpec // as the start's check saw it, or newer
	if action == "start" {
		if admitted, err = s.st.GetVM(r.Context(), name); err != nil {
			return notFoundHint(err, "see 'shoal vm list'")
		}
		if undo, err = s.cache.admitStart(r.Context(), admitted.Rev, name, s.cfg.Policy); err != nil {
			return err
		}
	}
	var target func(api.VM) bool
	sp, err := s.st.UpdateVM(r.Context(), name, func(sp *api.VMSpec) error {
		vm, _, err := s.loadVM(r.Context(), name)
		if err != nil {
			return err
		}
		if sp.Deleting {
			return api.Errorf(api.ErrConflict, "vm %q is being deleted", name)
		}
		if action == "start" && (sp.CPUs != admitted.CPUs || sp.MemoryMiB != admitted.MemoryMiB) {
			// Its host was checked for the size it had then.
			return api.Errorf(api.ErrConflict, "vm %q changed its size meanwhile, try again", name)
		}
		target, err = applyAction(sp, vm.State, action, stop.Force)
		if err == nil && (action == "start" || action == "stop" || action == "restart") {
			// Its next QEMU, if any, has the size set.
			sp.StartedCPUs, sp.StartedMemoryMiB = 0, 0
		}
		return err
	})
	if err != nil {
		undo()
		return notFoundHint(err, "see 'shoal vm list'")
	}
	return s.respondAfter(w, r, http.StatusOK, name, sp.Rev, ws, target, "")
}

// applyAction changes a spec for a power action, given the VM's current
// state, and returns the condition the caller waits for. Pure.
func applyAction(sp *api.VMSpec, state, action string, force bool) (func(api.VM) bool, error) {
	is := func(st string) func(api.VM) bool { return func(vm api.VM) bool { return vm.State == st } }
	running := sp.Power != api.PowerStopped
	if m := sp.Migration; m != nil {
		return nil, api.Errorf(api.ErrConflict, "vm %q is migrating to %s: wait for it, or cancel it with 'shoal vm migrate %s --cancel'",
			sp.Name, m.Target, sp.Name)
	}
	switch action {
	case "start":
		if sp.Power == api.PowerPaused {
			return nil, api.Errorf(api.ErrConflict, "vm %q is paused: use 'shoal vm resume %s'", sp.Name, sp.Name)
		}
		if running && state != api.StateFailed {
			return nil, api.Errorf(api.ErrConflict, "vm %q is already running", sp.Name)
		}
		sp.Power, sp.StopForce = api.PowerRunning, false
		return is(api.StateRunning), nil
	case "stop":
		if !running && !force {
			return nil, api.Errorf(api.ErrConflict, "vm %q is already stopped", sp.Name)
		}
		sp.Power, sp.StopForce = api.PowerStopped, force
		return is(api.StateStopped), nil
	case "restart":
		if !running {
			return nil, api.Errorf(api.ErrConflict, "vm %q is stopped: use 'shoal vm start %s'", sp.Name, sp.Name)
		}
		sp.RestartGen++
		gen := sp.RestartGen
		sp.Power, sp.StopForce = api.PowerRunning, force
		return func(vm api.VM) bool { return vm.State == api.StateRunning && vm.RestartGen >= gen }, nil
	case "pause":
		if sp.Power != api.PowerRunning || state != api.StateRunning {
			return nil, api.Errorf(api.ErrConflict, "vm %q is %s: only a running VM can be paused", sp.Name, state)
		}
		sp.Power = api.PowerPaused
		return is(api.StatePaused), nil
	case "resume":
		if sp.Power != api.PowerPaused {
			return nil, api.Errorf(api.ErrConflict, "vm %q is not paused", sp.Name)
		}
		sp.Power = api.PowerRunning
		return is(api.StateRunning), nil
	}
	return nil, api.Errorf(api.ErrInvalid, "unknown action %q: use start, stop, restart, pause or resume", action)
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	force := r.URL.Query().Get("force") == "true" || r.URL.Query().Get("force") == "1"
	ws, err := s.wantWait(r)
	if err != nil {
		return err
	}
	_, err = s.st.UpdateVM(r.Context(), name, func(sp *api.VMSpec) error {
		vm, _, err := s.loadVM(r.Context(), name)
		if err != nil {
			return err
		}
		if m := sp.Migration; m != nil {
			return api.Errorf(api.ErrConflict, "vm %q is migrating to %s: wait for it, or cancel it with 'shoal vm migrate %s --cancel'",
				name, m.Target, name)
		}
		if !force && (sp.Power != api.PowerStopped || vm.State == api.StateRunning || vm.State == api.StatePaused) {
			return api.Errorf(api.ErrConflict, "vm %q is %s: stop it first, or delete with --force", name, vm.State)
		}
		sp.Deleting = true
		return nil
	})
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	s.log.Info("vm delete requested", "name", name, "force", force)
	if !ws.wait {
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), ws.timeout)
	defer cancel()
	for {
		if _, err := s.st.GetVM(ctx, name); api.IsNotFound(err) {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return api.Errorf(api.ErrUnavailable, "vm %q is still being deleted by its host after %s", name, ws.timeout)
		}
	}
}

// respondAfter answers with the VM once its host has acted on the spec
// written at rev and target holds (or at once when the caller asked not
// to wait). A VM that the host reports failed is an error; what names the
// change in that message (e.g. "was created, but").
func (s *Server) respondAfter(w http.ResponseWriter, r *http.Request, code int, name string, rev int64, ws waitSpec, target func(api.VM) bool, what string) error {
	ctx, cancel := context.WithTimeout(r.Context(), ws.timeout)
	defer cancel()
	var vm api.VM
	timedOut := func() error {
		return api.Errorf(api.ErrUnavailable, "vm %q %sis %s after %s; its host may be down (see 'shoal host list')", name, what, vm.State, ws.timeout)
	}
	for {
		cur, _, err := s.loadVM(ctx, name)
		switch {
		case err == nil:
			vm = cur
		case ctx.Err() != nil && r.Context().Err() == nil && vm.Name != "":
			return timedOut() // the time ran out during the read
		default:
			return err
		}
		seen := vm.ObservedRev >= rev
		switch {
		case !ws.wait || seen && target(vm):
			writeJSON(w, code, vm)
			return nil
		case seen && vm.State == api.StateFailed:
			return api.Errorf(api.ErrConflict, "vm %q %sfailed on host %s: %s", name, what, vm.Host, vm.Error)
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return timedOut()
		}
	}
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("wait: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}
