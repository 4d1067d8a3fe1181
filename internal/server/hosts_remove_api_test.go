package server

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

// TestAPIRemoveHost: a host with VMs, or up and in service, is refused;
// a down host without VMs leaves the cluster, and every certificate
// issued to it so far is refused from then on (a new one is not).
func TestAPIRemoveHost(t *testing.T) {
	gone := testHost("host2", 4096, 4)
	gone.LastHeartbeat = time.Now().Add(-time.Hour) // down: no liveness lease
	h := newAPIHarness(t, testHost("host1", 4096, 4), gone)
	h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "256M", Disk: "1G", Host: "host1"})

	if r := h.call("DELETE", "/v1/hosts/host1", nil); r.code != http.StatusConflict ||
		!strings.Contains(string(r.body), "still has VMs (web1)") {
		t.Fatalf("remove a host with a VM: %d %s", r.code, r.body)
	}
	h.call("DELETE", "/v1/vms/web1?force=true", nil)
	if r := h.call("DELETE", "/v1/hosts/host1", nil); r.code != http.StatusConflict ||
		!strings.Contains(string(r.body), "drain it first") {
		t.Fatalf("remove a host in service: %d %s", r.code, r.body)
	}
	if r := h.call("DELETE", "/v1/hosts/nohost", nil); r.code != http.StatusNotFound {
		t.Fatalf("remove an unknown host: %d %s", r.code, r.body)
	}

	old := &x509.Certificate{NotBefore: time.Now().Add(-pki.Backdate - time.Minute)}
	certs := h.srv.HostCerts()
	if err := certs.Revoked(context.Background(), "host2", old); err != nil {
		t.Fatalf("host2's certificate refused before its removal: %v", err)
	}
	if r := h.call("DELETE", "/v1/hosts/host2", nil); r.code != http.StatusNoContent {
		t.Fatalf("remove a down host: %d %s", r.code, r.body)
	}
	if r := h.call("GET", "/v1/hosts/host2", nil); r.code != http.StatusNotFound {
		t.Errorf("removed host still shown: %d %s", r.code, r.body)
	}
	err := certs.Revoked(context.Background(), "host2", old)
	if !errors.Is(err, api.ErrUnauthorized) || !strings.Contains(err.Error(), "removed from the cluster") {
		t.Errorf("removed host's certificate: %v", err)
	}
	later := &x509.Certificate{NotBefore: time.Now().Add(2*time.Second - pki.Backdate)}
	if err := certs.Revoked(context.Background(), "host2", later); err != nil {
		t.Errorf("a certificate issued after the removal (joined again): %v", err)
	}
	if ev := h.events("?kind=" + api.EventHostRemoved); len(ev) != 1 || ev[0].Host != "host2" {
		t.Errorf("events: %+v", ev)
	}
}
