package server

import (
	"context"
	"net/http"

	"github.com/shoalvm/shoal/internal/api"
)

// hostViews returns every host with its liveness and allocations filled
// in, from the placement cache once it has caught up with the store.
func (s *Server) hostViews(ctx context.Context) ([]api.Host, error) {
	rev, err := s.st.Revision(ctx)
	if err != nil {
		return nil, err
	}
	return s.cache.hostViews(ctx, rev, s.cfg.Heartbeats)
}

// hostState derives a host's state from its record and whether its
// liveness lease holds. Pure.
func hostState(h api.Host, alive bool) string {
	switch {
	case h.State == api.HostMaintenance:
		return h.State
	case !alive:
		return api.HostDown
	}
	return api.HostUp
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) error {
	hosts, err := s.hostViews(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, hosts)
	return nil
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) error {
	rev, err := s.st.Revision(r.Context())
	if err != nil {
		return err
	}
	h, ok, err := s.cache.hostView(r.Context(), rev, r.PathValue("name"), s.cfg.Heartbeats)
	if err != nil {
		return err
	}
	if !ok {
		return api.Errorf(api.ErrNotFound, "host %q not found: see 'shoal host list'", r.PathValue("name"))
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	nets, err := s.st.ListNetworks(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, nets)
	return nil
}
