package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"

	"github.com/shoalvm/shoal/internal/pki"
)

// Embedded is an etcd member running inside this process.
type Embedded struct {
	etcd    *embed.Etcd
	client  *clientv3.Client
	members *clientv3.Client // dials the members' client URLs (see Store.SetMemberClient)
}

// EmbedOptions configures an embedded etcd member.
type EmbedOptions struct {
	Dir       string // data directory
	ClientURL string // e.g. http://127.0.0.1:7379
	PeerURL   string // e.g. http://127.0.0.1:7380
	Name      string // member name
	// PKIDir, if set, holds the cluster CA and a certificate valid for
	// the member's addresses (see package pki): the client and peer
	// listeners then require certificates signed by that CA.
	PKIDir string
	// InitialCluster lists every member as NAME=PEER_URL, comma-separated
	// (see InitialCluster); "" means a new cluster of this member alone.
	InitialCluster string
	// ClusterState is "new" (the default: the member founds the cluster)
	// or "existing" (it joins a cluster that already added it, see
	// Store.AddMember).
	ClusterState string
	// QuotaBytes is the backend quota: etcd refuses writes (the NOSPACE
	// alarm) once its database file reaches it. 0: DefaultQuotaBytes.
	QuotaBytes int64
}

// Cluster states of EmbedOptions.
const (
	ClusterNew      = "new"
	ClusterExisting = "existing"
)

// StartEmbedded starts an etcd member and returns once it serves: a new
// single-member cluster by default, or a member of the cluster that
// o.InitialCluster names. A member whose dir holds data reopens it (etcd
// then ignores InitialCluster and ClusterState). A member that joined as
// a learner is promoted to a voting member before this returns.
func StartEmbedded(ctx context.Context, log *slog.Logger, o EmbedOptions) (*Embedded, error) {
	cfg := embed.NewConfig()
	cfg.Dir = o.Dir
	cfg.Name = o.Name
	if cfg.Name == "" {
		cfg.Name = "shoal"
	}
	cu, err := url.Parse(o.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd client url: %w", err)
	}
	pu, err := url.Parse(o.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcd peer url: %w", err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	if o.InitialCluster != "" {
		cfg.InitialCluster = o.InitialCluster
	}
	switch o.ClusterState {
	case "", ClusterNew:
		cfg.ClusterState = embed.ClusterStateFlagNew
	case ClusterExisting:
		cfg.ClusterState = embed.ClusterStateFlagExisting
	default:
		return nil, fmt.Errorf("etcd cluster state %q: use %q or %q", o.ClusterState, ClusterNew, ClusterExisting)
	}
	var memberTLS *tls.Config
	if o.PKIDir != "" {
		ti := transport.TLSInfo{
			CertFile:       filepath.Join(o.PKIDir, "server.crt"),
			KeyFile:        filepath.Join(o.PKIDir, "server.key"),
			TrustedCAFile:  filepath.Join(o.PKIDir, "ca.crt"),
			ClientCertAuth: true,
			// The CA also signs the hosts' certificates: only servers
			// may read or write the cluster's state, or be its peers.
			AllowedCNs: []string{pki.ServerCN},
		}
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = ti, ti
		if memberTLS, err = ti.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd client TLS from %s: %w", o.PKIDir, err)
		}
	}
	cfg.QuotaBackendBytes = o.QuotaBytes
	if cfg.QuotaBackendBytes <= 0 {
		cfg.QuotaBackendBytes = DefaultQuotaBytes
	}
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", o.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after 60s", o.Dir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	// The in-process client reaches only this member, and cannot
	// defragment it: maintenance dials the members.
	mc, err := clientv3.New(clientv3.Config{Endpoints: []string{o.ClientURL}, DialTimeout: 5 * time.Second, TLS: memberTLS, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("etcd maintenance client: %w", err)
	}
	m := &Embedded{etcd: e, client: v3client.New(e.Server), members: mc}
	if err := m.settle(ctx, log, pu.String()); err != nil {
		m.Close()
		return nil, err
	}
	log.Info("embedded etcd ready", "dir", o.Dir, "client", o.ClientURL, "peer", o.PeerURL)
	return m, nil
}

// Client returns an in-process client of the member.
func (e *Embedded) Client() *clientv3.Client { return e.client }

// Store returns the store over the in-process client, able to reach every
// member for their upkeep.
func (e *Embedded) Store() *Store {
	s := New(e.client)
	s.SetMemberClient(e.members)
	return s
}

// IsLeader tells whether this member is the etcd cluster's raft leader.
func (e *Embedded) IsLeader() bool { return e.etcd.Server.Leader() == e.etcd.Server.MemberID() }

// Close stops the member.
func (e *Embedded) Close() {
	e.members.Close()
	e.client.Close()
	e.etcd.Close()
}
