package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/server"
	"github.com/shoalvm/shoal/internal/store"
)

// A server replica ('shoal server --join https://FIRST:7443 --token T')
// asks a running replica for the cluster's CA, a server certificate and,
// with embedded etcd, a seat in the etcd cluster; then it runs like any
// server. What it got is kept in DATA_DIR/replica.json, so that it
// restarts without --join; every server with embedded etcd also keeps
// its etcd peer URL there, which the other members know it by.

// replicaFile is the name of the replica record in the data dir.
const replicaFile = "replica.json"

// replicaState is what a replica keeps of its join and its etcd member.
type replicaState struct {
	Server string `json:"server,omitempty"` // the replica it joined through; "" if it founded the cluster
	// InitialCluster is its etcd member's initial cluster ("" with an
	// external etcd, or for the founder).
	InitialCluster string `json:"initial_cluster,omitempty"`
	// PeerURL is the peer URL its embedded etcd member last started with.
	PeerURL string `json:"peer_url,omitempty"`
}

// loadReplica reads the replica record; ok is false if there is none.
func loadReplica(path string) (rs replicaState, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return rs, false, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &rs)
	}
	if err != nil {
		return rs, false, fmt.Errorf("%s is unreadable (%w): it records this server's etcd member; fix or remove it", path, err)
	}
	return rs, true, nil
}

func saveReplica(path string, rs replicaState) error {
	b, _ := json.Marshal(rs)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// recordPeerURL keeps the peer URL the embedded etcd member started with,
// for its next start without --etcd-peer-url.
func recordPeerURL(o Options) error {
	path := filepath.Join(o.DataDir, replicaFile)
	rs, _, err := loadReplica(path)
	if err != nil || rs.PeerURL == o.EtcdPeer {
		return err
	}
	rs.PeerURL = o.EtcdPeer
	return saveReplica(path, rs)
}

// etcdCluster says how the embedded etcd member starts.
type etcdCluster struct {
	initial, state string // "" and "": a cluster of its own
}

// ensureReplica joins the replicas the first time this server runs with
// --join, settles o.EtcdPeer (given, else as recorded, else for a joiner
// its advertised address, else loopback), and returns how its embedded
// etcd member starts.
func ensureReplica(ctx context.Context, log *slog.Logger, o *Options, pkiDir string) (etcdCluster, error) {
	path := filepath.Join(o.DataDir, replicaFile)
	rs, found, err := loadReplica(path)
	if err != nil {
		return etcdCluster{}, err
	}
	if o.EtcdPeer == "" {
		o.EtcdPeer = rs.PeerURL
	}
	if o.EtcdPeer == "" {
		o.EtcdPeer = defaultEtcdPeer
		if o.Join != "" && !found {
			o.EtcdPeer = defaultPeerURL(*o)
		}
	}
	external := len(o.EtcdEndpoints) > 0
	if found && (rs.Server != "" || o.Join == "") {
		if o.Join != "" && strings.TrimRight(o.Join, "/") != rs.Server {
			log.Warn("this server joined the replicas already; --join is ignored", "joined", rs.Server, "asked", o.Join)
		}
		if rs.InitialCluster == "" {
			return etcdCluster{}, nil
		}
		return etcdCluster{initial: rs.InitialCluster, state: store.ClusterExisting}, nil
	}
	if o.Join == "" {
		return etcdCluster{}, nil
	}
	if found || !external && fileExists(filepath.Join(o.DataDir, "etcd", "member")) {
		return etcdCluster{}, api.Errorf(api.ErrInvalid, "%s already holds a cluster of its own: a server joins with an empty --data-dir (move that one away), or drop --join to run that cluster", filepath.Join(o.DataDir, "etcd"))
	}
	if o.JoinToken == "" {
		return etcdCluster{}, api.Errorf(api.ErrInvalid, "joining needs a token: pass --token (make one with 'shoal cluster token --server' against a server of the cluster)")
	}
	_, caHash, ok := strings.Cut(o.JoinToken, ".")
	if !ok || caHash == "" {
		return etcdCluster{}, api.Errorf(api.ErrInvalid, "the join token is malformed: copy it whole from 'shoal cluster token --server'")
	}
	req := server.ServerJoinRequest{Token: o.JoinToken, Name: o.Host, Hosts: certHosts(*o)}
	if !external {
		req.PeerURL = o.EtcdPeer
	}
	srvURL := strings.TrimRight(o.Join, "/")
	resp, err := postJoinServer(ctx, srvURL, caHash, req)
	if err != nil {
		return etcdCluster{}, err
	}
	if err := pki.InstallBundle(pkiDir, resp.Bundle); err != nil {
		return etcdCluster{}, fmt.Errorf("join %s: %w", srvURL, err)
	}
	rs = replicaState{Server: srvURL, InitialCluster: resp.InitialCluster}
	if !external {
		rs.PeerURL = o.EtcdPeer
	}
	if err := saveReplica(path, rs); err != nil {
		return etcdCluster{}, err
	}
	log.Info("joined the server replicas", "via", srvURL, "name", o.Host, "initial_cluster", rs.InitialCluster)
	if external {
		return etcdCluster{}, nil
	}
	return etcdCluster{initial: rs.InitialCluster, state: store.ClusterExisting}, nil
}

// postJoinServer asks the replica at srvURL to take this server in. That
// replica is not trusted yet: its certificate must chain to the CA whose
// fingerprint the join token carries (it sends the CA key back).
func postJoinServer(ctx context.Context, srvURL, caHash string, jr server.ServerJoinRequest) (server.ServerJoinResponse, error) {
	var out server.ServerJoinResponse
	u, err := url.Parse(srvURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return out, api.Errorf(api.ErrInvalid, "--join %q must be https://SERVER:PORT of a running server", srvURL)
	}
	body, _ := json.Marshal(jr)
	var pinErr error
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			pinErr = pinnedCA(cs, caHash)
			return pinErr
		}}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "POST", srvURL+server.ServerJoinPath, bytes.NewReader(body))
	if err != nil {
		return out, fmt.Errorf("--join %q: %w", srvURL, err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		var oe *net.OpError
		switch {
		case pinErr != nil:
			return out, fmt.Errorf("refusing to join %s: %w", srvURL, pinErr)
		case errors.As(err, &oe):
			return out, fmt.Errorf("cannot reach %s to join (%w): is that server running, and is --join its https://ADDRESS:PORT?", srvURL, oe)
		}
		return out, fmt.Errorf("join %s: %w", srvURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&eb)
		return out, api.FromHTTP(resp.StatusCode, "join refused by "+srvURL+": "+eb.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("join answer of %s: %w", srvURL, err)
	}
	return out, nil
}

// defaultPeerURL is the etcd peer URL of a joining server that was given
// none: its advertised (else listening) address, port 7380. The other
// members must reach it there.
func defaultPeerURL(o Options) string {
	host := ""
	if u, err := url.Parse(o.Advertise); err == nil && o.Advertise != "" {
		host = u.Hostname()
	}
	if h, _, err := net.SplitHostPort(o.Listen); host == "" && err == nil {
		if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
			host = h
		}
	}
	if host == "" {
		return defaultEtcdPeer
	}
	return "https://" + net.JoinHostPort(host, "7380")
}
