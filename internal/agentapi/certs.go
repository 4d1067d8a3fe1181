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
	// Revoked returns an error (api.ErrUnauthorized) if cert, presented
	// by host, is no longer to be accepted.
	Revoked(ctx context.Context, host string, cert *x509.Certificate) error
}

var errNoCerts = api.Errorf(api.ErrUnavailable, "this server does not renew host certificates")

// RenewRequest is the body of POST /v1/agent/renew.
type RenewRequest struct {
	CSR string `json:"csr"` // PEM, with the host's key
}

// RenewResponse carries a host's renewed certificate.
type RenewResponse struct {
	Cert string `json:"cert"` // PEM
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
	cert, err := h.Certs.Renew(host, []byte(req.CSR), remoteIP(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, RenewResponse{Cert: string(cert)})
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

// remoteIP returns the address a request came from, if over IP.
func remoteIP(r *http.Request) net.IP {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}

// Renew asks the control plane for a renewed certificate of this host,
// for the request csrPEM (made with the host's key), and returns it.
func (c *Remote) Renew(ctx context.Context, csrPEM []byte) ([]byte, error) {
	var out RenewResponse
	if err := c.do(ctx, "POST", "/v1/agent/renew", RenewRequest{CSR: string(csrPEM)}, &out); err != nil {
		return nil, err
	}
	return []byte(out.Cert), nil
}
