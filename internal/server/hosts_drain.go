package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// Limits of a drain request.
const (
	defaultDrainParallel = 2
	maxDrainParallel     = 16
	firstLookTimeout     = 5 * time.Second // the drain answer waits this long for the plan's first look
)

// checkDrainRequest validates a drain request and fills in defaults.
// Pure.
func checkDrainRequest(req *api.DrainRequest) error {
	if req.Parallel < 0 || req.Parallel > maxDrainParallel {
		return api.Errorf(api.ErrInvalid, "parallel %d is out of range: use 1 to %d live migrations at once", req.Parallel, maxDrainParallel)
	}
	if req.Parallel == 0 {
		req.Parallel = defaultDrainParallel
	}
	return checkMigrateOptions(&req.MigrationOptions)
}

// drainHost puts a host in maintenance and starts moving its VMs off:
// running VMs by live migration, stopped VMs on a shared pool by giving
// them another host. It answers 202 with the report after the drain's
// first look (which starts the first migrations); the drain controller
// does the rest.
func (s *Server) drainHost(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	var req api.DrainRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	if err := checkDrainRequest(&req); err != nil {
		return err
	}
	if _, err := s.st.GetHost(ctx, name); err != nil {
		return notFoundHint(err, "see 'shoal host list'")
	}
	alive, err := s.st.HostAlive(ctx, name)
	if err != nil {
		return err
	}
	if !alive {
		return api.Errorf(api.ErrConflict, "host %s is down, and a drain moves running VMs by live migration, which needs the host up: bring its agent back (see 'shoal host list') and drain again", name)
	}
	rep := api.DrainReport{ID: newID(), Host: name, State: api.DrainRunning, Parallel: req.Parallel,
		Options: req.MigrationOptions, StartedAt: time.Now().UTC(), VMs: []api.DrainVM{}}
	if _, err := s.st.StartDrain(ctx, rep); err != nil {
		return notFoundHint(err, "see 'shoal host list'")
	}
	s.log.Info("drain started", "host", name, "parallel", req.Parallel, "id", rep.ID)
	s.events.record(ctx, api.Event{Kind: api.EventDrainStarted, Severity: api.SeverityInfo, Host: name,
		Message: fmt.Sprintf("drain of %s started: the host is in maintenance (no new VMs), and its VMs move off, %d live migration(s) at a time", name, req.Parallel)})
	looked := make(chan struct{})
	s.drains.follow(name, rep.ID, looked)
	select {
	case <-looked:
	case <-time.After(firstLookTimeout):
	case <-ctx.Done():
	}
	if cur, err := s.st.GetDrain(context.WithoutCancel(ctx), name); err == nil && cur.ID == rep.ID {
		rep = cur
	}
	writeJSON(w, http.StatusAccepted, rep)
	return nil
}

// getDrain shows the host's running drain, or else its last one.
func (s *Server) getDrain(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	rep, err := s.st.GetDrain(r.Context(), name)
	if api.IsNotFound(err) {
		if _, herr := s.st.GetHost(r.Context(), name); api.IsNotFound(herr) {
			return notFoundHint(herr, "see 'shoal host list'")
		}
		return api.Errorf(api.ErrNotFound, "host %s has never been drained: start with 'shoal host drain %s'", name, name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}

// resumeHost puts a host in maintenance back in service: it takes new
// VMs and incoming migrations again. A drain still running starts no more
// moves (those under way finish).
func (s *Server) resumeHost(w http.ResponseWriter, r *http.Request) error {
	ctx, name := r.Context(), r.PathValue("name")
	if _, err := s.st.SetHostState(ctx, name, "", func(h api.Host) error {
		if h.State != api.HostMaintenance {
			return api.Errorf(api.ErrConflict, "host %s is not in maintenance, so there is nothing to resume: it is in service already", name)
		}
		return nil
	}); err != nil {
		return notFoundHint(err, "see 'shoal host list'")
	}
	msg := fmt.Sprintf("host %s is back in service: it takes new VMs and incoming migrations again", name)
	if rep, err := s.st.GetDrain(ctx, name); err == nil && rep.State == api.DrainRunning {
		msg += "; its drain starts no more moves (the live migrations under way finish)"
	}
	s.log.Info("host resumed", "host", name)
	s.events.record(ctx, api.Event{Kind: api.EventHostResumed, Severity: api.SeverityInfo, Host: name, Message: msg})
	rev, err := s.st.Revision(ctx)
	if err != nil {
		return err
	}
	h, ok, err := s.cache.hostView(ctx, rev, name, s.cfg.Heartbeats)
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.ErrNotFound, "host %q not found: see 'shoal host list'", name)
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}
