package server

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// TokenRequest is the body of POST /v1/cluster/tokens.
type TokenRequest struct {
	TTL  string `json:"ttl,omitempty"`  // default 1h
	Kind string `json:"kind,omitempty"` // what it joins: "host" (default) or "server"
}

// TokenResponse is a fresh join token.
type TokenResponse struct {
	Token   string    `json:"token"`
	Kind    string    `json:"kind"`
	Expires time.Time `json:"expires"`
}

// JoinRequest is the body of POST /v1/join: a machine asking to become a
// host, with its certificate request.
type JoinRequest struct {
	Token string `json:"token"`
	Host  string `json:"host"`
	CSR   string `json:"csr"`
}

// JoinResponse carries the new host's certificate and the cluster CA.
type JoinResponse struct {
	Cert string `json:"cert"`
	CA   string `json:"ca"`
}

// createJoinToken makes a one-time join token. The token's second part is
// the CA's fingerprint, which the joining agent checks the server against.
func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) error {
	var req TokenRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	ttl := time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > 7*24*time.Hour {
			return api.Errorf(api.ErrInvalid, "ttl %q must be a duration up to 168h, e.g. 1h", req.TTL)
		}
		ttl = d
	}
	kind := req.Kind
	switch kind {
	case "":
		kind = store.JoinHost
	case store.JoinHost, store.JoinServer:
	default:
		return api.Errorf(api.ErrInvalid, "kind %q must be %q (a host joins with it) or %q (a server replica joins with it)", req.Kind, store.JoinHost, store.JoinServer)
	}
	caPEM, err := os.ReadFile(filepath.Join(s.cfg.PKIDir, pki.CACert))
	if err != nil {
		return api.Errorf(api.ErrUnavailable, "this server has no cluster CA: %v", err)
	}
	hash, err := pki.CAHash(caPEM)
	if err != nil {
		return err
	}
	raw := make([]byte, 20)
	_, _ = rand.Read(raw)
	secret := hex.EncodeToString(raw)
	now := time.Now().UTC()
	if err := s.st.PutJoinToken(r.Context(), secret, store.JoinToken{Kind: kind, Expires: now.Add(ttl), CreatedAt: now}); err != nil {
		return err
	}
	s.log.Info("join token made", "kind", kind, "expires", now.Add(ttl))
	writeJSON(w, http.StatusCreated, TokenResponse{Token: secret + "." + hash, Kind: kind, Expires: now.Add(ttl)})
	return nil
}

// join signs a joining machine's certificate if its token is a good host
// token. It needs no API token: the one-time join token is the
// authorization. The token is checked before anything that would tell
// its holder about the cluster (whether the name is taken), and used up
// in the transaction that reserves the name.
func (s *Server) join(w http.ResponseWriter, r *http.Request) error {
	var req JoinRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := api.ValidateName("host", req.Host); err != nil {
		return err
	}
	audit.SetObject(r.Context(), "host/"+req.Host)
	if err := pki.CheckCSR([]byte(req.CSR)); err != nil {
		return api.Errorf(api.ErrInvalid, "cannot sign the certificate request: %v", err)
	}
	// A name is joined once: a token must not buy another machine the
	// identity (and the VMs) of an existing host.
	secret, _, _ := strings.Cut(req.Token, ".")
	if err := s.st.JoinHost(r.Context(), secret, req.Host); err != nil {
		return err
	}
	// The certificate holds the address the host joined from, not the
	// ones it asks for: it must not be valid for another machine's.
	cert, err := s.HostCerts().Renew(req.Host, []byte(req.CSR), agentapi.RemoteIP(r))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(s.cfg.PKIDir, pki.CACert))
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	s.log.Info("host joined", "host", req.Host, "from", r.RemoteAddr)
	writeJSON(w, http.StatusOK, JoinResponse{Cert: string(cert), CA: string(caPEM)})
	return nil
}
