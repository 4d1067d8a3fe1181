// Package node runs an all-in-one Shoal node: embedded (or external)
// etcd, the API server and a local agent, as 'shoal up' does.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
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
	if info.Token, err = ensureToken(ctx, st, o); err != nil {
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

// ensureToken returns the admin token of the CLI settings file if the
// store knows it, or makes a new one and writes the settings.
func ensureToken(ctx context.Context, st *store.Store, o Options) (string, error) {
	var cfg client.Config
	if o.ConfigPath != "" {
		cfg, _ = client.LoadConfig(o.ConfigPath)
	}
	token := cfg.Token
	if _, err := st.CheckToken(ctx, token); err != nil {
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		token = "shoal_" + hex.EncodeToString(b)
		if err := st.PutToken(ctx, token, store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now().UTC()}); err != nil {
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
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	hs.TLSConfig, err = tlsConfig(cert, caPEM)
	if err != nil {
		tl.Close()
		ul.Close()
		return nil, err
	}
	go func() {
		if err := hs.ServeTLS(tl, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("https server", "err", err)
		}
	}()
	us := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := us.Serve(ul); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("unix socket server", "err", err)
		}
	}()
	log.Info("API serving", "https", o.Listen, "socket", sock)
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		_ = us.Shutdown(sctx)
		_ = os.Remove(sock)
	}, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
