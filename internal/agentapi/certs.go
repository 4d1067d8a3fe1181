package agentapi

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// Certs is the control plane's part in hosts' certificates: it renews
// them and knows which were revoked (a host removed from the cluster).
type Certs interface {
	// Renew signs a new certificate for host, from its request, valid for
	// the address addr the host called from.
	Renew(host string, csrPEM []byte, addr net.IP) ([]byte, error)
	// SignMigration signs host's migration certificate (pki.OUMigration)
	// from its request, valid for addr.
	SignMigration(host string, csrPEM []byte, addr net.IP) ([]byte, error)
	// Revoked returns an error (api.ErrUnauthorized) if cert, presented
	// by host, is no longer to be accepted.
	Revoked(ctx context.Context, host string, cert *x509.Certificate) error
}

var errNoCerts = api.Errorf(api.ErrUnavailable, "this server does not renew host certificates")

// RenewRequest is the body of POST /v1/agent/renew.
type RenewRequest struct {
	CSR string `json:"csr,omitempty"` // PEM, with the host's key
	// MigrationCSR asks for the host's migration certificate.
	MigrationCSR string `json:"migration_csr,omitempty"`
}

// RenewResponse carries a host's renewed certificate.
type RenewResponse struct {
	Cert          string `json:"cert,omitempty"`           // PEM
	MigrationCert string `json:"migration_cert,omitempty"` // PEM
}

// renew signs a renewed certificate for the calling host: its name comes
// from the certificate it called with, its address from the connection.
func (h *Handler) renew(ctx context.Context, host string, w http.ResponseWriter, r *http.Request) error {
	var req RenewRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if h.Certs == nil {
		return errNoCerts
	}
	var out RenewResponse
	if req.CSR == "" && req.MigrationCSR == "" {
		return api.Errorf(api.ErrInvalid, "send csr, migration_csr or both")
	}
	if req.CSR != "" {
		cert, err := h.Certs.Renew(host, []byte(req.CSR), RemoteIP(r))
		if err != nil {
			return err
		}
		out.Cert = string(cert)
	}
	if req.MigrationCSR != "" {
		cert, err := h.Certs.SignMigration(host, []byte(req.MigrationCSR), RemoteIP(r))
		if err != nil {
			return err
		}
		out.MigrationCert = string(cert)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// revoked refuses a host whose certificate was revoked, or has expired
// since its connection's handshake.
func (h *Handler) revoked(ctx context.Context, host string, r *http.Request) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	c := r.TLS.PeerCertificates[0]
	if time.Now().After(c.NotAfter) {
		return api.Errorf(api.ErrUnauthorized, "the certificate of host %s expired at %s: join it again with a new token ('shoal cluster token')",
			host, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if h.Certs == nil {
		return nil
	}
	return h.Certs.Revoked(ctx, host, c)
}

// RemoteIP returns the address a request came from, if over IP.
func RemoteIP(r *http.Request) net.IP {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}

// Renew asks the control plane for a renewed certificate of this host,
// for the request csrPEM (made with the host's key), and returns it.
func (c *Remote) Renew(ctx context.Context, csrPEM []byte) ([]byte, error) {
	out, err := c.renew(ctx, RenewRequest{CSR: string(csrPEM)})
	return []byte(out.Cert), err
}

// RenewMigration asks the control plane for this host's migration
// certificate, for the request csrPEM (made with its migration key).
func (c *Remote) RenewMigration(ctx context.Context, csrPEM []byte) ([]byte, error) {
	out, err := c.renew(ctx, RenewRequest{MigrationCSR: string(csrPEM)})
	return []byte(out.MigrationCert), err
}

func (c *Remote) renew(ctx context.Context, req RenewRequest) (RenewResponse, error) {
	var out RenewResponse
	err := c.do(ctx, "POST", "/v1/agent/renew", req, &out)
	return out, err
}
