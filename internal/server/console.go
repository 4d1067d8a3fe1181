package server

import (
	"io"
	"net/http"
	"os"

	"github.com/shoalvm/shoal/internal/api"
)

// ConsoleProtocol is the Upgrade token of the console endpoint: after the
// 101 response the connection carries the raw serial console both ways.
const ConsoleProtocol = "shoal-console"

func (s *Server) hostOf(r *http.Request) (HostAccess, api.VM, error) {
	vm, _, err := s.loadVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, vm, err
	}
	h, ok := s.cfg.Hosts[vm.Host]
	if !ok {
		return nil, vm, api.Errorf(api.ErrUnavailable, "host %s of vm %q is not reachable from this server", vm.Host, vm.Name)
	}
	return h, vm, nil
}

func (s *Server) vmLogs(w http.ResponseWriter, r *http.Request) error {
	h, vm, err := s.hostOf(r)
	if err != nil {
		return err
	}
	f, err := os.Open(h.LogPath(vm.ID))
	if os.IsNotExist(err) {
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
	if r.Header.Get("Upgrade") != ConsoleProtocol {
		return api.Errorf(api.ErrInvalid, "the console endpoint needs 'Upgrade: %s'", ConsoleProtocol)
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
	hj, ok := w.(http.Hijacker)
	if !ok {
		return api.Errorf(api.ErrInternal, "connection cannot be upgraded")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	_, _ = buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + ConsoleProtocol + "\r\n\r\n")
	if err := buf.Flush(); err != nil {
		return nil
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(backend, buf); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, backend); done <- struct{}{} }()
	<-done
	return nil
}
