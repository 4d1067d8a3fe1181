package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// ServerJoinPath is where a new server replica asks to join
// ('shoal server --join URL --token TOKEN').
const ServerJoinPath = "/v1/cluster/servers/join"

// ServerJoinRequest is the body of POST /v1/cluster/servers/join: a
// machine asking to become a server replica.
type ServerJoinRequest struct {
	Token string `json:"token"` // a server join token ('shoal cluster token --server')
	Name  string `json:"name"`  // the new replica's name
	// PeerURL is where the other members reach the new replica's embedded
	// etcd; "" if it uses the cluster's external etcd.
	PeerURL string `json:"peer_url,omitempty"`
	// Hosts are the names and addresses its server certificate must hold.
	Hosts []string `json:"hosts"`
}

// ServerJoinResponse is what a new replica needs to run: the cluster's CA
// and a server certificate (see pki.Bundle), and, if etcd is embedded,
// the initial cluster its member starts with.
type ServerJoinResponse struct {
	pki.Bundle
	InitialCluster string `json:"initial_cluster,omitempty"`
}

// joinServer makes the caller a server replica if its join token is a
// good server token: a learner member of the embedded etcd (which
// promotes itself once it has caught up), holding the cluster's CA. Like /v1/join, it needs no
// API token: the one-time join token is the authorization, and the caller
// pinned this server's CA by the hash in that token, so the CA key goes
// only where the token's holder asked for it. A host token does not do:
// it would buy the CA key for what may buy only a host's certificate. The
// token is checked before the checks that tell of the cluster's servers,
// and used up in the transaction that reserves the name.
func (s *Server) joinServer(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var req ServerJoinRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := api.ValidateName("server", req.Name); err != nil {
		return err
	}
	audit.SetObject(ctx, "server/"+req.Name)
	if len(req.Hosts) == 0 || len(req.Hosts) > 32 {
		return api.Errorf(api.ErrInvalid, "hosts must list 1 to 32 names or addresses for the new server's certificate")
	}
	switch {
	case !s.cfg.EmbeddedEtcd && req.PeerURL != "":
		return api.Errorf(api.ErrInvalid, "this cluster keeps its state in an external etcd: start the new server with --etcd-endpoints of that etcd")
	case s.cfg.EmbeddedEtcd && req.PeerURL == "":
		return api.Errorf(api.ErrInvalid, "this cluster's etcd is embedded in its servers: start the new server without --etcd-endpoints")
	}
	if s.cfg.EmbeddedEtcd {
		if err := checkPeerURL(req.PeerURL); err != nil {
			return err
		}
	}
	// The token first: the checks below tell of the cluster's servers.
	secret, _, _ := strings.Cut(req.Token, ".")
	if _, err := s.st.CheckJoinToken(ctx, secret, store.JoinServer); err != nil {
		return err
	}
	if err := s.serverNameFree(ctx, req); err != nil {
		return err
	}
	if err := s.st.JoinServer(ctx, secret, req.Name); err != nil {
		return err
	}
	resp, err := s.seatServer(ctx, req)
	if err != nil {
		_ = s.st.ReleaseServerName(context.WithoutCancel(ctx), req.Name)
		return fmt.Errorf("%w (this used up the join token: make a new one with 'shoal cluster token --server')", err)
	}
	s.log.Info("server replica joined", "name", req.Name, "peer", req.PeerURL, "from", r.RemoteAddr)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// serverNameFree refuses a joiner's name if a live server or an etcd
// member has it, or its peer URL if the members could not reach it.
func (s *Server) serverNameFree(ctx context.Context, req ServerJoinRequest) error {
	live, err := s.st.ListServers(ctx)
	if err != nil {
		return err
	}
	taken := slices.ContainsFunc(live, func(sv api.Server) bool { return sv.Name == req.Name })
	if s.cfg.EmbeddedEtcd {
		ms, err := s.st.Members(ctx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			taken = taken || m.Name == req.Name
			if err := sameReach(m, req.PeerURL); err != nil {
				return err
			}
		}
	}
	if taken {
		return api.Errorf(api.ErrConflict, "a server named %q is already a member: join this machine under another --name", req.Name)
	}
	return nil
}

// seatServer makes a joiner's certificate and, if etcd is embedded, its
// learner member.
func (s *Server) seatServer(ctx context.Context, req ServerJoinRequest) (ServerJoinResponse, error) {
	b, err := pki.ServerBundle(s.cfg.PKIDir, req.Hosts)
	if err != nil {
		return ServerJoinResponse{}, fmt.Errorf("certificate for server %s: %w", req.Name, err)
	}
	resp := ServerJoinResponse{Bundle: b}
	if s.cfg.EmbeddedEtcd {
		if resp.InitialCluster, err = s.st.AddMember(ctx, req.Name, req.PeerURL); err != nil {
			return ServerJoinResponse{}, err
		}
	}
	return resp, nil
}

// removeServer removes a server replica that is gone for good: its etcd
// member leaves the cluster, so that the quorum counts only the servers
// left, and its name may join again.
func (s *Server) removeServer(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	name := r.PathValue("name")
	if err := api.ValidateName("server", name); err != nil {
		return err
	}
	if !s.cfg.EmbeddedEtcd {
		return api.Errorf(api.ErrInvalid, "this cluster keeps its state in an external etcd, whose members are not Shoal's servers: a server leaves the list once it stops")
	}
	live, err := s.st.ListServers(ctx)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(live, func(sv api.Server) bool { return sv.Name == name }) {
		return api.Errorf(api.ErrConflict, "server %q is running: stop it first (its 'shoal server' process), then remove it", name)
	}
	if err := s.st.RemoveMember(ctx, name); err != nil {
		return err
	}
	s.log.Info("server replica removed", "name", name)
	s.events.record(ctx, api.Event{Kind: api.EventServerRemoved, Severity: api.SeverityInfo,
		Message: fmt.Sprintf("server %s removed from the cluster; its data dir can only join again afresh", name)})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// checkPeerURL checks the form of an etcd peer URL.
func checkPeerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Port() == "" || u.Hostname() == "" || u.Path != "" && u.Path != "/" {
		return api.Errorf(api.ErrInvalid, "etcd peer URL %q must be https://ADDRESS:PORT (set --etcd-peer-url)", raw)
	}
	return nil
}

// sameReach refuses a peer URL on loopback in a cluster whose members are
// not (and the other way round): one side could not reach the other.
func sameReach(m store.Member, peerURL string) error {
	newLoop := isLoopback(peerURL)
	for _, p := range m.PeerURLs {
		switch old := isLoopback(p); {
		case old && !newLoop:
			return api.Errorf(api.ErrConflict, "etcd member %q listens for peers on %s only, which the new server cannot reach: restart it with --etcd-peer-url https://ITS_ADDRESS:7380, then join again", m.Name, p)
		case !old && newLoop:
			return api.Errorf(api.ErrInvalid, "the new server's etcd peer URL %s is a loopback address, which the other servers cannot reach: set --etcd-peer-url https://ITS_ADDRESS:7380", peerURL)
		}
	}
	return nil
}

func isLoopback(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}
