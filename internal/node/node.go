// Package node runs an all-in-one Shoal node: embedded (or external)
// etcd, the API server and a local agent, as 'shoal up' does.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/agent"
	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/hostcheck"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/server"
	"github.com/shoalvm/shoal/internal/storage"
	"github.com/shoalvm/shoal/internal/store"
)

// Options configures a node.
type Options struct {
	DataDir       string
	Listen        string   // HTTPS address of the API, e.g. 127.0.0.1:7443
	Host          string   // this host's name; default: the machine's hostname
	EtcdEndpoints []string // external etcd; empty: embedded
	EtcdClient    string   // embedded etcd client URL
	EtcdPeer      string   // embedded etcd peer URL; "" = as recorded in the data dir, else see ensureReplica
	Subnet        string   // default network, e.g. 10.57.0.0/24
	Bridge        string   // default network's bridge, e.g. shoal0
	Accel         string   // auto, kvm or tcg
	StopTimeout   time.Duration
	ConfigPath    string           // CLI settings file to write; "" = don't
	ConfigSocket  bool             // point the CLI settings at the unix socket, not HTTPS
	Demo          bool             // create and start the demo VM
	NoAgent       bool             // control plane only ('shoal server')
	Policy        scheduler.Policy // placement strategy and overcommit
	Advertise     string           // URL where agents reach this server (its address goes in the certificate)
	// Join, the first time, makes this server a replica of the cluster of
	// the server at this URL (https://SERVER:PORT), with JoinToken (see
	// replica.go). EtcdPeer must then be reachable by the other servers
	// (default for a joiner: its advertised address, port 7380).
	Join, JoinToken string
	MaxImageUpload  int64 // largest image import taken, bytes (0: the server's default)

	// EtcdTLS are the files with which to reach the external etcd at
	// https:// EtcdEndpoints (see store.ExternalTLS).
	EtcdTLS store.TLSFiles
}

// Embedded etcd's peer URL, unless given or recorded (see ensureReplica).
const defaultEtcdPeer = "https://127.0.0.1:7380"

// Info is what a started node tells its user.
type Info struct {
	API, Socket, Token, Host, Accel, AccelReason string
	Check                                        hostcheck.Report
	Demo                                         *api.VM
}

func (o *Options) defaults() {
	if o.Host == "" {
		o.Host, _ = os.Hostname()
		o.Host = strings.ToLower(strings.SplitN(o.Host, ".", 2)[0])
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:7443"
	}
	if o.EtcdClient == "" {
		o.EtcdClient = "https://127.0.0.1:7379"
	}
	if o.Subnet == "" {
		o.Subnet = "10.57.0.0/24"
	}
	if o.Bridge == "" {
		o.Bridge = "shoal0"
	}
	if o.Accel == "" {
		o.Accel = "auto"
	}
}

// Run starts the node, calls ready once it serves, and runs until ctx
// ends. VMs keep running after it returns.
func Run(ctx context.Context, log *slog.Logger, o Options, ready func(Info)) error {
	o.defaults()
	if err := api.ValidateName("host", o.Host); err != nil {
		return fmt.Errorf("%w (set --host)", err)
	}
	if _, err := scheduler.Place(nil, scheduler.Request{}, o.Policy); errors.Is(err, api.ErrInvalid) {
		return fmt.Errorf("placement policy: %w", err)
	}
	etcdTLS, err := store.ExternalTLS(o.EtcdEndpoints, o.EtcdTLS)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	pkiDir := filepath.Join(o.DataDir, "pki")
	cluster, err := ensureReplica(ctx, log, &o, pkiDir)
	if err != nil {
		return err
	}
	if _, _, err := pki.Ensure(pkiDir, certHosts(o)); err != nil {
		return err
	}
	st, closeEtcd, err := openStore(ctx, log, o, cluster, etcdTLS)
	if err != nil {
		return err
	}
	defer closeEtcd()
	local := agentapi.NewLocal(st, log)
	if err := ensureNetwork(ctx, st, o); err != nil {
		return err
	}
	imageDir := filepath.Join(o.DataDir, "images")
	server.CleanImageDir(imageDir)
	hostTLS, err := pki.ClientConfig(pkiDir)
	if err != nil {
		return err
	}
	url := o.Advertise
	if url == "" {
		url = "https://" + o.Listen
	}
	agentAPI := agentapi.NewHandler(local, imageDir, log)
	scfg := server.Config{Name: o.Host, URL: url, ImageDir: imageDir, Heartbeats: local, HostTLS: hostTLS, PKIDir: pkiDir, Policy: o.Policy,
		AgentAPI: agentAPI, EmbeddedEtcd: len(o.EtcdEndpoints) == 0}
	scfg.MaxImageUpload = o.MaxImageUpload
	var ag *agent.Agent
	if !o.NoAgent {
		ag = agent.New(agent.Config{
			Host: o.Host, Dir: filepath.Join(o.DataDir, "agent"), ImageDir: imageDir,
			Pools: []storage.Pool{{Name: "local", Dir: filepath.Join(o.DataDir, "pools", "local")}}, StopTimeout: o.StopTimeout,
		}, local, log)
		scfg.Hosts = map[string]agentapi.Host{o.Host: agentapi.Direct{LocalHost: ag}}
	}
	srv := server.New(scfg, st, log)
	agentAPI.Images = srv.ImageFiles()
	agentAPI.Certs = srv.HostCerts()
	if err := srv.Start(ctx); err != nil {
		return err
	}
	if _, err := st.GetImage(ctx, "tiny"); err != nil || !fileExists(filepath.Join(imageDir, "tiny", "disk.qcow2")) {
		log.Info("building the tiny image")
		if _, err := server.BuildTinyImage(ctx, srv); err != nil {
			return fmt.Errorf("build tiny image: %w", err)
		}
	}
	info := Info{API: "https://" + o.Listen, Socket: socketPath(o), Host: o.Host}
	if ag != nil {
		info.Accel, info.AccelReason = chooseAccel(ctx, log, o.Accel, o.DataDir, filepath.Join(imageDir, "tiny"), nil)
		ag.SetAccel(info.Accel, info.AccelReason)
		info.Check = hostcheck.Run(ctx, hostcheck.Options{DataDir: o.DataDir, Accel: info.Accel, AccelReason: info.AccelReason, MinFreeMemMiB: 256, MinFreeDiskMiB: 512})
		if !info.Check.OK() {
			return fmt.Errorf("this machine is not ready to be a Shoal host:\n%s", info.Check)
		}
		if err := ag.Register(ctx); err != nil {
			return err
		}
	}
	if info.Token, err = ensureToken(ctx, log, st, o); err != nil {
		return err
	}
	stop, err := serve(ctx, log, o, srv)
	if err != nil {
		return err
	}
	defer stop()
	agentDone := make(chan error, 1)
	if ag != nil {
		go func() { agentDone <- ag.Run(ctx) }()
	}
	if o.Demo && ag != nil {
		vm, err := ensureDemo(ctx, "unix://"+socketPath(o), info.Token)
		if err != nil {
			log.Warn("demo VM did not start", "err", err)
		} else {
			info.Demo = &vm
		}
	}
	if ready != nil {
		ready(info)
	}
	select {
	case <-ctx.Done():
		if ag != nil {
			return <-agentDone
		}
		return nil
	case err := <-agentDone:
		return fmt.Errorf("the agent stopped: %w", err)
	}
}

func openStore(ctx context.Context, log *slog.Logger, o Options, cluster etcdCluster, etcdTLS *tls.Config) (*store.Store, func(), error) {
	if len(o.EtcdEndpoints) > 0 {
		c, err := store.ConnectTLS(ctx, o.EtcdEndpoints, etcdTLS)
		if err != nil {
			return nil, nil, err
		}
		return store.New(c), func() { c.Close() }, nil
	}
	e, err := store.StartEmbedded(ctx, log, store.EmbedOptions{
		Dir: filepath.Join(o.DataDir, "etcd"), ClientURL: o.EtcdClient, PeerURL: o.EtcdPeer, Name: o.Host,
		PKIDir: filepath.Join(o.DataDir, "pki"), InitialCluster: cluster.initial, ClusterState: cluster.state,
	})
	if err != nil {
		return nil, nil, err
	}
	if err := recordPeerURL(o); err != nil {
		e.Close()
		return nil, nil, err
	}
	return e.Store(), e.Close, nil
}

func ensureNetwork(ctx context.Context, st *store.Store, o Options) error {
	if _, err := st.GetNetwork(ctx, "default"); err == nil {
		return nil
	}
	p, err := netdev.ParsePool(o.Subnet)
	if err != nil {
		return fmt.Errorf("--subnet: %w", err)
	}
	return st.PutNetwork(ctx, api.Network{Name: "default", Bridge: o.Bridge, Subnet: p.Subnet.String(), Gateway: p.Gateway.String()})
}

// ensureToken returns the token of the CLI settings file if it is still
// a valid admin token; else it makes one for user admin (made first, on
// the first start or after an upgrade from before users) and writes the
// settings.
func ensureToken(ctx context.Context, log *slog.Logger, st *store.Store, o Options) (string, error) {
	var cfg client.Config
	if o.ConfigPath != "" {
		cfg, _ = client.LoadConfig(o.ConfigPath)
	}
	// After an upgrade from before users, the old tokens are admin's:
	// make the user before anyone makes another, which ends their
	// standing on their own (see server.Authenticate).
	if has, err := st.HasUsers(ctx); err != nil {
		return "", err
	} else if !has {
		if _, err := ensureAdminUser(ctx, log, st); err != nil {
			return "", err
		}
	}
	token := cfg.Token
	if id, err := server.Authenticate(ctx, st, "Bearer "+token, time.Now()); err != nil || id.Role != authz.Admin {
		if token, err = newAdminToken(ctx, log, st); err != nil {
			return "", err
		}
	}
	if o.ConfigPath == "" {
		return token, nil
	}
	caPEM, err := os.ReadFile(filepath.Join(o.DataDir, "pki", pki.CACert))
	if err != nil {
		if _, _, err := pki.Ensure(filepath.Join(o.DataDir, "pki"), certHosts(o)); err != nil {
			return "", err
		}
		caPEM, _ = os.ReadFile(filepath.Join(o.DataDir, "pki", pki.CACert))
	}
	cfg = client.Config{Server: "https://" + o.Listen, Token: token, CA: string(caPEM)}
	if o.ConfigSocket {
		cfg.Server = "unix://" + socketPath(o)
	}
	return token, client.SaveConfig(o.ConfigPath, cfg)
}

// ensureAdminUser returns user admin, making it if it is missing.
func ensureAdminUser(ctx context.Context, log *slog.Logger, st *store.Store) (store.User, error) {
	u, err := st.GetUser(ctx, store.LegacyTokenUser)
	if api.IsNotFound(err) {
		log.Info("making user admin")
		err = st.CreateUser(ctx, store.User{User: api.User{Name: store.LegacyTokenUser, Role: api.RoleAdmin, CreatedAt: time.Now().UTC()}})
		if err == nil || errors.Is(err, api.ErrConflict) {
			u, err = st.GetUser(ctx, store.LegacyTokenUser)
		}
	}
	return u, err
}

// newAdminToken makes a token of user admin, making the user if it is
// missing.
func newAdminToken(ctx context.Context, log *slog.Logger, st *store.Store) (string, error) {
	u, err := ensureAdminUser(ctx, log, st)
	if err != nil {
		return "", err
	}
	if u.Role != api.RoleAdmin {
		return "", fmt.Errorf("user admin has the %s role: this node needs an admin token in its CLI settings", u.Role)
	}
	token := authz.NewToken()
	info := store.TokenInfo{Name: "shoal-up", User: u.Name, UserGen: u.Gen, Role: api.RoleAdmin, CreatedAt: time.Now().UTC()}
	if err := st.CreateToken(ctx, token, info); err != nil {
		return "", err
	}
	log.Info("made an admin token for the CLI settings", "token", store.TokenID(token))
	return token, nil
}

func socketPath(o Options) string { return filepath.Join(o.DataDir, "shoal.sock") }

// certHosts lists the names and addresses the server's certificate must
// be valid for.
func certHosts(o Options) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(o.Listen); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(o.Advertise); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	// The embedded etcd's peers check that its certificate holds the
	// address they reach it at.
	if u, err := url.Parse(o.EtcdPeer); err == nil && u.Hostname() != "" && len(o.EtcdEndpoints) == 0 && !slices.Contains(hosts, u.Hostname()) {
		hosts = append(hosts, u.Hostname())
	}
	if hn, err := os.Hostname(); err == nil {
		hosts = append(hosts, hn)
	}
	return hosts
}

// serve starts the HTTPS listener and the unix socket; both need a token.
func serve(ctx context.Context, log *slog.Logger, o Options, h http.Handler) (func(), error) {
	cert, caPEM, err := pki.Ensure(filepath.Join(o.DataDir, "pki"), certHosts(o))
	if err != nil {
		return nil, err
	}
	tl, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (is another Shoal running? use --listen)", o.Listen, err)
	}
	sock := socketPath(o)
	_ = os.Remove(sock)
	ul, err := net.Listen("unix", sock)
	if err != nil {
		tl.Close()
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	_ = os.Chmod(sock, 0o600)
	tlsCfg, err := tlsConfig(cert, caPEM)
	if err != nil {
		tl.Close()
		ul.Close()
		return nil, err
	}
	stopTLS := startHTTP(log, "https server", tl, tlsCfg, h, apiLimits)
	stopUnix := startHTTP(log, "unix socket server", ul, nil, h, apiLimits)
	log.Info("API serving", "https", o.Listen, "socket", sock)
	return func() {
		stopTLS()
		stopUnix()
		_ = os.Remove(sock)
	}, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
