package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/ha"
	"github.com/shoalvm/shoal/internal/store"
)

// recoverVM restarts a VM whose host is dead on another host, at the
// user's request: for VMs that failover does not move (not HA, or given
// up). The host must be fenced and the disk on a shared pool; the move is
// the same guarded transaction as a failover's (store.FailOver). The VM's
// power intent stays as it was: a running VM starts on its new host, a
// stopped one is only reassigned.
func (s *Server) recoverVM(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	ws, err := s.wantWait(r)
	if err != nil {
		return err
	}
	var req api.RecoverRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	if req.To != "" {
		if err := api.ValidateName("host", req.To); err != nil {
			return err
		}
	}
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return notFoundHint(err, "see 'shoal vm list'")
	}
	if err := s.canRecover(ctx, sp, req.To, req.Force); err != nil {
		return err
	}
	dead := sp.Host
	rev, err := s.st.Revision(ctx) // placement sees the hosts as they are now
	if err != nil {
		return err
	}
	to, undo, err := s.cache.reserveRecovery(ctx, rev, sp, req.To, s.cfg.Policy)
	if err != nil {
		return err
	}
	moved, err := s.st.FailOver(ctx, sp, to, dead, "recovered by the user from failed host "+dead)
	if err != nil {
		undo()
		return err
	}
	s.log.Info("vm recovered", "vm", name, "from", dead, "to", to, "power", sp.Power)
	s.events.record(ctx, api.Event{Kind: api.EventVMRecovered, VM: name, Host: dead, To: to,
		Message: fmt.Sprintf("vm %s recovered from failed host %s onto %s by the user", name, dead, to)})
	want := map[string]string{api.PowerRunning: api.StateRunning, api.PowerPaused: api.StatePaused}[sp.Power]
	if want == "" {
		want = api.StateStopped
	}
	target := func(vm api.VM) bool { return vm.Host == to && vm.State == want }
	return s.respondAfter(w, r, http.StatusOK, name, moved.Rev, ws, target, "was recovered onto "+to+", but ")
}

// canRecover says whether VM sp may be recovered now, onto to ("" =
// anywhere): its host is dead and fenced, its disk on a shared pool.
func (s *Server) canRecover(ctx context.Context, sp api.VMSpec, to string, force bool) error {
	switch {
	case sp.Deleting:
		return api.Errorf(api.ErrConflict, "vm %q is being deleted", sp.Name)
	case sp.Migration != nil:
		return api.Errorf(api.ErrConflict, "vm %s is migrating to %s: try again shortly, once the migration has ended (see 'shoal vm migrate %s --follow')",
			sp.Name, sp.Migration.Target, sp.Name)
	}
	alive, err := s.st.HostAlive(ctx, sp.Host)
	if err != nil {
		return err
	}
	switch {
	case alive:
		return api.Errorf(api.ErrConflict, "host %s is up: vm %s runs there; use 'shoal vm migrate' to move it", sp.Host, sp.Name)
	case !sp.SharedDisk():
		return api.Errorf(api.ErrConflict, "vm %s has its disk on the local pool of %s, which is down: it can run again only when %s is back",
			sp.Name, sp.Host, sp.Host)
	case to == sp.Host:
		return api.Errorf(api.ErrConflict, "vm %s is on host %s, which is down: recover it onto another host", sp.Name, sp.Host)
	}
	if !sp.HA && !force {
		return api.Errorf(api.ErrConflict, "vm %s is not HA, so host %s does not kill it when it is cut off, and Shoal cannot tell a dead host from a cut-off one: make sure %s is powered off, then run 'shoal vm recover %s --force'",
			sp.Name, sp.Host, sp.Host, sp.Name)
	}
	if left := s.fenceLeft(ctx, sp.Host, time.Now()); left > 0 {
		return api.Errorf(api.ErrConflict, "host %s is not fenced yet: try again in %s", sp.Host, left)
	}
	return nil
}

// fenceLeft is how long until host, whose lease is gone, is surely fenced
// (its agent has killed its HA VMs), rounded up to the second; 0 once it
// is. It counts from when this server's failover controller saw it down,
// else (another replica leads) from the host's last host.lost event; a
// host seen down by neither has the whole wait ahead.
func (s *Server) fenceLeft(ctx context.Context, host string, now time.Time) time.Duration {
	safe := ha.DefaultConfig().SafeAfter()
	left := safe
	if since, ok := s.failover.downSince(host); ok {
		left = since.Add(safe).Sub(now)
	} else if evs, err := s.st.ListEvents(ctx, store.EventFilter{Host: host, Since: now.Add(-24 * time.Hour)}); err == nil {
		// Not the leader: the leader's host.lost event tells.
		for i := len(evs) - 1; i >= 0; i-- {
			e := evs[i]
			if e.Host != host || (e.Kind != api.EventHostLost && e.Kind != api.EventHostBack) {
				continue
			}
			if e.Kind == api.EventHostLost { // and not back since
				left = e.Time.Add(safe).Sub(now)
			}
			break
		}
	}
	if left <= 0 {
		return 0
	}
	return (left + time.Second - 1).Truncate(time.Second)
}
