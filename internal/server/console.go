package server

import (
	"io"
	"net/http"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
)

// hostOf finds the VM of the request and a way to reach its host: in this
// process, or over the host's own API.
func (s *Server) hostOf(r *http.Request) (agentapi.Host, api.VM, error) {
	vm, _, err := s.loadVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, vm, err
	}
	if h, ok := s.cfg.Hosts[vm.Host]; ok {
		return h, vm, nil
	}
	rec, err := s.st.GetHost(r.Context(), vm.Host)
	if err != nil || rec.Address == "" || s.cfg.HostTLS == nil {
		return nil, vm, api.Errorf(api.ErrUnavailable, "host %s of vm %q is not reachable from this server", vm.Host, vm.Name)
	}
	return agentapi.HostClient{Name: rec.Name, Addr: rec.Address, TLS: s.cfg.HostTLS}, vm, nil
}

func (s *Server) vmLogs(w http.ResponseWriter, r *http.Request) error {
	h, vm, err := s.hostOf(r)
	if err != nil {
		return err
	}
	f, err := h.OpenLog(r.Context(), vm.ID)
	if api.IsNotFound(err) {
		return api.Errorf(api.ErrNotFound, "vm %q has no console log yet: it has not been started", vm.Name)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err = io.Copy(w, f)
	return err
}

func (s *Server) vmConsole(w http.ResponseWriter, r *http.Request) error {
	if r.Header.Get("Upgrade") != agentapi.ConsoleProtocol {
		return api.Errorf(api.ErrInvalid, "the console endpoint needs 'Upgrade: %s'", agentapi.ConsoleProtocol)
	}
	h, vm, err := s.hostOf(r)
	if err != nil {
		return err
	}
	if vm.State != api.StateRunning && vm.State != api.StatePaused {
		return api.Errorf(api.ErrConflict, "vm %q is %s: start it to use its console", vm.Name, vm.State)
	}
	backend, err := h.DialConsole(r.Context(), vm.ID)
	if err != nil {
		return err
	}
	defer backend.Close()
	return agentapi.Splice(w, backend)
}
