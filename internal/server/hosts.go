package server

import (
	"context"
	"net/http"

	"github.com/shoalvm/shoal/internal/api"
)

// hostViews returns every host with its liveness and allocations filled in.
func (s *Server) hostViews(ctx context.Context) ([]api.Host, error) {
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	specs, _, err := s.st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	alive, err := s.st.AliveHosts(ctx)
	if err != nil {
		return nil, err
	}
	for i := range hosts {
		h := &hosts[i]
		h.State = hostState(*h, alive[h.Name])
		if s.cfg.Heartbeats != nil {
			if t, ok := s.cfg.Heartbeats.LastHeartbeat(h.Name); ok {
				h.LastHeartbeat = t.UTC()
			}
		}
		for _, v := range specs {
			if v.Host != h.Name {
				continue
			}
			h.VMs++
			if v.Power != api.PowerStopped {
				h.AllocatedMiB += v.MemoryMiB
			}
		}
	}
	return hosts, nil
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
	hosts, err := s.hostViews(r.Context())
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.Name == r.PathValue("name") {
			writeJSON(w, http.StatusOK, h)
			return nil
		}
	}
	return api.Errorf(api.ErrNotFound, "host %q not found: see 'shoal host list'", r.PathValue("name"))
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	nets, err := s.st.ListNetworks(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, nets)
	return nil
}
