package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/agent"
	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/hostcheck"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/qemu"
	"github.com/shoalvm/shoal/internal/server"
	"github.com/shoalvm/shoal/internal/storage"
)

// AgentOptions configures 'shoal agent': a host that joins a server.
type AgentOptions struct {
	DataDir     string
	Join        string // https://SERVER:PORT
	Token       string // join token; needed only the first time
	Host        string
	Listen      string // address of this agent's own API (console, logs)
	Bridge      string // the VM bridge (the default network's), made before joining
	BridgeAddr  string // this host's address on the VM bridge (CIDR)
	Uplink      string // NIC to put into the VM bridge
	SharedPools map[string]string
	Accel       string // auto, kvm or tcg
	Heartbeat   time.Duration
	StopTimeout time.Duration
	// Watchdog runs the fence watchdog beside the agent ('shoal
	// fence-watchdog' of this binary), so that its HA VMs die with it.
	Watchdog bool
}

// RunAgent joins the cluster (the first time), then runs the host's agent
// until ctx ends. VMs keep running after it returns.
func RunAgent(ctx context.Context, log *slog.Logger, o AgentOptions, ready func(api.Host)) error {
	if err := api.ValidateName("host", o.Host); err != nil {
		return fmt.Errorf("%w (set --host)", err)
	}
	if 3*o.Heartbeat > agentapi.MaxLeaseTTL {
		return api.Errorf(api.ErrInvalid, "--heartbeat %s is too long: the lease of 3 heartbeats may be at most %s", o.Heartbeat, agentapi.MaxLeaseTTL)
	}
	// The host's address may live on the VM bridge (its uplink inside):
	// make it first, or the server cannot be reached to join.
	if o.BridgeAddr != "" {
		if err := netdev.EnsureBridge(ctx, o.Bridge, o.BridgeAddr); err != nil {
			return err
		}
		if o.Uplink != "" {
			if err := netdev.AttachLink(ctx, o.Uplink, o.Bridge); err != nil {
				return err
			}
		}
	}
	pkiDir := filepath.Join(o.DataDir, "pki")
	cp, tlsCfg, certs, stopLink, err := connect(ctx, log, o, pkiDir)
	if err != nil {
		return err
	}
	defer stopLink()
	pools := []storage.Pool{{Name: "local", Dir: filepath.Join(o.DataDir, "pools", "local")}}
	for name, dir := range o.SharedPools {
		pools = append(pools, storage.Pool{Name: name, Dir: dir, Shared: true})
	}
	imageDir := filepath.Join(o.DataDir, "images")
	qemuTLS := filepath.Join(o.DataDir, "agent", "migration-tls")
	if pki.MigrationDue(pkiDir, time.Now()) {
		mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := renewMigrationCert(mctx, pkiDir, o.Host, cp); err != nil {
			log.Warn("could not get this host's migration certificate", "err", err)
		}
		cancel()
	}
	if err := writeQEMUTLS(pkiDir, qemuTLS); err != nil {
		// The host still runs VMs; it only cannot take encrypted migrations.
		log.Warn("this host cannot receive encrypted migrations (only --insecure ones)", "err", err)
		qemuTLS = ""
	}
	rctx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		keepCertFresh(rctx, log, pkiDir, o.Host, true, certs, cp, func() {
			if qemuTLS != "" {
				if err := writeQEMUTLS(pkiDir, qemuTLS); err != nil {
					log.Warn("could not give QEMU the renewed certificate", "err", err)
				}
			}
		})
	}()
	defer func() { stopRenew(); <-renewed }()
	migIP, _, _ := net.SplitHostPort(o.Listen)
	var watchdog []string
	if o.Watchdog {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this binary for the fence watchdog: %w", err)
		}
		watchdog = []string{exe, "fence-watchdog", "--dir", filepath.Join(o.DataDir, "agent")}
	}
	ag := agent.New(agent.Config{Watchdog: watchdog,
		Host: o.Host, Dir: filepath.Join(o.DataDir, "agent"), ImageDir: imageDir, Pools: pools,
		Address: "https://" + o.Listen, BridgeAddr: o.BridgeAddr, Uplink: o.Uplink,
		Heartbeat: o.Heartbeat, StopTimeout: o.StopTimeout, MigrationIP: migIP, PeerTLS: tlsCfg, QEMUTLSDir: qemuTLS,
	}, cp, log)
	n, err := waitNetwork(ctx, log, cp)
	if err != nil {
		return err
	}
	if err := ag.EnsureNetwork(ctx, n); err != nil {
		return err
	}
	tinyDir := filepath.Join(imageDir, "tiny")
	accel, reason := chooseAccel(ctx, log, o.Accel, o.DataDir, tinyDir, func(ctx context.Context) error {
		return cp.FetchImage(ctx, "tiny", tinyDir)
	})
	ag.SetAccel(accel, reason)
	report := hostcheck.Run(ctx, hostcheck.Options{DataDir: o.DataDir, Accel: accel, AccelReason: reason, MinFreeMemMiB: 256, MinFreeDiskMiB: 512})
	if !report.OK() {
		return fmt.Errorf("this machine is not ready to be a Shoal host:\n%s", report)
	}
	stop, err := serveHostAPI(log, o.Listen, tlsCfg, agentapi.HostHandler(ag))
	if err != nil {
		return err
	}
	defer stop()
	if ready != nil {
		ready(ag.HostInfo(ctx))
	}
	return ag.Run(ctx)
}

// serversRefresh is how often an agent asks for the control plane's
// replicas.
const serversRefresh = 30 * time.Second

// connect joins the cluster (the first time) as o.Host, with its
// certificate in pkiDir, and returns its link to the control plane and
// its TLS settings. Until stop, the link learns the other replicas of the
// control plane, to turn to them when this one goes away, and remembers
// them across restarts.
func connect(ctx context.Context, log *slog.Logger, o AgentOptions, pkiDir string) (cp *agentapi.Remote, tlsCfg *tls.Config, certs *pki.AgentCertHolder, stop func(), err error) {
	servers, err := ensureJoined(ctx, log, o, pkiDir)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if tlsCfg, certs, err = pki.AgentTLS(pkiDir); err != nil {
		return nil, nil, nil, nil, err
	}
	if cp, err = agentapi.NewRemote(servers, tlsCfg); err != nil {
		return nil, nil, nil, nil, err
	}
	kctx, stopKeep := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		statePath := filepath.Join(o.DataDir, "joined.json")
		cp.KeepServers(kctx, log, serversRefresh, func(s []string) error { return writeJoined(statePath, s) })
	}()
	return cp, tlsCfg, certs, func() { stopKeep(); <-kept }, nil
}

// ensureJoined returns the servers (the control plane's replicas) to talk
// to, joining first if this machine has no agent certificate yet.
func ensureJoined(ctx context.Context, log *slog.Logger, o AgentOptions, pkiDir string) ([]string, error) {
	statePath := filepath.Join(o.DataDir, "joined.json")
	if j, ok := readJoined(statePath); ok && fileExists(filepath.Join(pkiDir, pki.AgentCert)) {
		urls := j.urls()
		if o.Join != "" && !slices.Contains(urls, strings.TrimRight(o.Join, "/")) {
			log.Warn("already joined to another server; keeping it", "joined", urls, "asked", o.Join)
		}
		return urls, nil
	}
	if o.Join == "" || o.Token == "" {
		return nil, api.Errorf(api.ErrInvalid, "this host has not joined a cluster yet: pass --join https://SERVER:PORT and --token (from 'shoal cluster token')")
	}
	_, caHash, ok := strings.Cut(o.Token, ".")
	if !ok || caHash == "" {
		return nil, api.Errorf(api.ErrInvalid, "the join token is malformed: copy it whole from 'shoal cluster token'")
	}
	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	csr, err := pki.NewCSR(pkiDir, o.Host, []string{host})
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(server.JoinRequest{Token: o.Token, Host: o.Host, CSR: string(csr)})
	// The server is not trusted yet: accept its certificate only if its
	// chain ends in the CA whose fingerprint the token carries.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error { return pinnedCA(cs, caHash) }}}
	srvURL := strings.TrimRight(o.Join, "/")
	req, err := http.NewRequestWithContext(ctx, "POST", srvURL+"/v1/join", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("--join %q: %w", o.Join, err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", srvURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&eb)
		return nil, api.FromHTTP(resp.StatusCode, "join refused: "+eb.Error)
	}
	var jr server.JoinResponse
	if err := json.NewDecoder(resp.Body).Decode(&jr); err != nil {
		return nil, fmt.Errorf("join answer: %w", err)
	}
	if err := os.WriteFile(filepath.Join(pkiDir, pki.CACert), []byte(jr.CA), 0o644); err != nil {
		return nil, fmt.Errorf("write CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(pkiDir, pki.AgentCert), []byte(jr.Cert), 0o644); err != nil {
		return nil, fmt.Errorf("write certificate: %w", err)
	}
	if err := writeJoined(statePath, []string{srvURL}); err != nil {
		return nil, err
	}
	log.Info("joined the cluster", "server", srvURL, "host", o.Host)
	return []string{srvURL}, nil
}

// renewCheck is how often an agent looks whether its certificate is due
// for renewal (pki.RenewDue).
const renewCheck = 10 * time.Minute

// keepCertFresh renews this host's certificates over mutual TLS, its
// own and (if migration) its migration one, whenever they are due,
// looking every renewCheck, and calls renewed after each renewal. A
// failure is retried at the next look; the certificate in use stays
// valid meanwhile, until it expires.
func keepCertFresh(ctx context.Context, log *slog.Logger, pkiDir, host string, migration bool, certs *pki.AgentCertHolder, cp *agentapi.Remote, renewed func()) {
	t := time.NewTicker(renewCheck)
	defer t.Stop()
	for {
		if pki.RenewDue(certs.Leaf(), time.Now()) {
			if err := renewCert(ctx, certs, cp); err != nil {
				log.Warn("could not renew this host's certificate; trying again later", "expires", certs.Leaf().NotAfter, "err", err)
			} else {
				log.Info("renewed this host's certificate", "expires", certs.Leaf().NotAfter)
				renewed()
			}
		}
		if migration && pki.MigrationDue(pkiDir, time.Now()) {
			if err := renewMigrationCert(ctx, pkiDir, host, cp); err != nil {
				log.Warn("could not renew this host's migration certificate; trying again later", "err", err)
			} else {
				renewed()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func renewCert(ctx context.Context, certs *pki.AgentCertHolder, cp *agentapi.Remote) error {
	csr, err := certs.RenewCSR()
	if err != nil {
		return err
	}
	cert, err := cp.Renew(ctx, csr)
	if err != nil {
		return err
	}
	return certs.Install(cert)
}

// renewMigrationCert gets this host's migration certificate (the one its
// QEMU processes load: see pki.OUMigration) and writes it in pkiDir.
func renewMigrationCert(ctx context.Context, pkiDir, host string, cp *agentapi.Remote) error {
	csr, err := pki.MigrationCSR(pkiDir, host)
	if err != nil {
		return err
	}
	cert, err := cp.RenewMigration(ctx, csr)
	if err != nil {
		return err
	}
	return pki.InstallMigration(pkiDir, cert)
}

// pinnedCA accepts a server whose certificate chains to the CA with the
// given fingerprint.
func pinnedCA(cs tls.ConnectionState, hash string) error {
	if len(cs.PeerCertificates) < 1 {
		return errors.New("server sent no certificate")
	}
	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	var found bool
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	for _, c := range cs.PeerCertificates {
		h, err := pki.CAHash(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		if err == nil && h == hash && c.IsCA {
			roots.AddCert(c)
			found = true
		}
	}
	if !found {
		return errors.New("the server's CA does not match the join token: wrong server, or a token of another cluster")
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		return err
	}
	return pki.RequireRole(pki.OUServer, "")(cs) // not a member agent posing as the server
}

func waitNetwork(ctx context.Context, log *slog.Logger, cp agentapi.ControlPlane) (api.Network, error) {
	for {
		n, err := cp.Network(ctx, "default")
		if err == nil || !errors.Is(err, api.ErrUnavailable) {
			return n, err
		}
		log.Warn("server not reachable yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// serveHostAPI serves the agent's own API (for servers only) on listen.
func serveHostAPI(log *slog.Logger, listen string, tlsCfg *tls.Config, h http.Handler) (func(), error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}
	return startHTTP(log, "host API", l, tlsCfg, h, hostAPILimits), nil
}

// writeQEMUTLS lays out the host's migration certificate in pkiDir (not
// its agent certificate: a QEMU that loaded this key must not be able to
// pose as the host) for QEMU's tls-creds-x509 in dir, with which a
// migration target's QEMU receives the stream.
func writeQEMUTLS(pkiDir, dir string) error {
	var files [3][]byte
	for i, name := range []string{pki.CACert, pki.MigrationCert, pki.MigrationKey} {
		b, err := os.ReadFile(filepath.Join(pkiDir, name))
		if err != nil {
			return fmt.Errorf("certificates for QEMU: %w", err)
		}
		files[i] = b
	}
	return qemu.WriteTLSDir(dir, files[0], files[1], files[2])
}
