package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// removeHost removes a host from the cluster for good: its record goes,
// and its certificate is revoked on every server at once (its agent's
// next call is refused). A host with VMs, or up and in service, is
// refused.
func (s *Server) removeHost(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	if err := api.ValidateName("host", name); err != nil {
		return err
	}
	for try := 0; ; try++ {
		h, hostRev, err := s.st.HostRecord(ctx, name)
		if err != nil {
			return notFoundHint(err, "see 'shoal host list'")
		}
		alive, err := s.st.HostAlive(ctx, name)
		if err != nil {
			return err
		}
		vms, vmRev, err := s.st.ListVMs(ctx)
		if err != nil {
			return err
		}
		if err := canRemoveHost(h, alive, vms); err != nil {
			return err
		}
		err = s.st.RemoveHost(ctx, name, hostRev, vmRev, time.Now())
		if err == nil {
			break
		}
		if !errors.Is(err, api.ErrConflict) || try == 5 {
			return err
		}
	}
	s.log.Info("host removed", "host", name)
	s.events.record(ctx, api.Event{Kind: api.EventHostRemoved, Severity: api.SeverityInfo, Host: name,
		Message: fmt.Sprintf("host %s removed from the cluster; its certificate is revoked, so it can only join again with a new token", name)})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// canRemoveHost says whether host h may leave the cluster, given whether
// its liveness lease holds and the VMs' specs. Pure.
func canRemoveHost(h api.Host, alive bool, vms []api.VMSpec) error {
	var on []string
	for _, v := range vms {
		if v.OnHost(h.Name) {
			on = append(on, v.Name)
		}
	}
	if len(on) > 0 {
		slices.Sort(on)
		return api.Errorf(api.ErrConflict, "host %s still has VMs (%s): move them away ('shoal host drain %s') or delete them first",
			h.Name, strings.Join(on, ", "), h.Name)
	}
	if alive && h.State != api.HostMaintenance {
		return api.Errorf(api.ErrConflict, "host %s is up and in service: drain it first ('shoal host drain %s') or stop its agent", h.Name, h.Name)
	}
	return nil
}

// HostCerts renews hosts' certificates with this server's cluster CA and
// refuses those of removed hosts, for the agent API.
func (s *Server) HostCerts() agentapi.Certs { return hostCerts{pkiDir: s.cfg.PKIDir, st: s.st} }

type hostCerts struct {
	pkiDir string
	st     *store.Store
}

func (c hostCerts) Renew(host string, csrPEM []byte, addr net.IP) ([]byte, error) {
	return c.sign(pki.SignAgent, host, csrPEM, addr)
}

// sign signs host's request csrPEM with sign, for the address addr.
func (c hostCerts) sign(sign func(string, []byte, string, []net.IP) ([]byte, error), host string, csrPEM []byte, addr net.IP) ([]byte, error) {
	if c.pkiDir == "" {
		return nil, api.Errorf(api.ErrUnavailable, "this server holds no cluster CA to sign certificates with")
	}
	var addrs []net.IP
	if addr != nil {
		addrs = []net.IP{addr}
	}
	cert, err := sign(c.pkiDir, csrPEM, host, addrs)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "cannot sign the certificate request: %v", err)
	}
	return cert, nil
}

func (c hostCerts) SignMigration(host string, csrPEM []byte, addr net.IP) ([]byte, error) {
	return c.sign(pki.SignMigration, host, csrPEM, addr)
}

func (c hostCerts) Revoked(ctx context.Context, host string, cert *x509.Certificate) error {
	at, err := c.st.HostRevokedAt(ctx, host)
	if err != nil {
		return err
	}
	if !at.IsZero() && pki.IssuedBefore(cert, at) {
		return api.Errorf(api.ErrUnauthorized, "host %s was removed from the cluster at %s, which revoked its certificate: to bring it back, join it again with a new token ('shoal cluster token')",
			host, at.UTC().Format(time.RFC3339))
	}
	return nil
}
