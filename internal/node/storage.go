package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalvm/shoal/internal/agent"
	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/san"
)

// StorageOptions configures 'shoal storage-server': a machine that serves
// the cluster's iSCSI SAN (one pool, the one whose config names it).
type StorageOptions struct {
	DataDir   string
	Join      string // https://SERVER:PORT
	Token     string // host join token; needed only the first time
	Name      string // its host name
	Listen    string // the iSCSI portal, IP:port
	Dir       string // the SAN's volumes (its filesystem is the pool)
	Heartbeat time.Duration
}

// RunStorage joins the cluster as a host of role storage (the first
// time), runs tgtd on o.Listen (started again whenever it dies), and
// runs the volume jobs of the pool whose config names it until ctx ends.
// It runs no VM. tgtd dies with it.
func RunStorage(ctx context.Context, log *slog.Logger, o StorageOptions, ready func(api.Host)) error {
	if err := api.ValidateName("host", o.Name); err != nil {
		return fmt.Errorf("%w (set --name)", err)
	}
	if 3*o.Heartbeat > agentapi.MaxLeaseTTL {
		return api.Errorf(api.ErrInvalid, "--heartbeat %s is too long: the lease of 3 heartbeats may be at most %s", o.Heartbeat, agentapi.MaxLeaseTTL)
	}
	if host, _, err := net.SplitHostPort(o.Listen); err != nil || net.ParseIP(host) == nil {
		return api.Errorf(api.ErrInvalid, "--listen %q: want the iSCSI portal as IP:PORT, e.g. 192.0.2.10:3260", o.Listen)
	}
	if !filepath.IsAbs(o.Dir) {
		return api.Errorf(api.ErrInvalid, "--dir %q: want an absolute directory for the volumes", o.Dir)
	}
	pkiDir := filepath.Join(o.DataDir, "pki")
	cp, _, certs, stopLink, err := connect(ctx, log, AgentOptions{DataDir: o.DataDir, Join: o.Join, Token: o.Token, Host: o.Name, Listen: o.Listen}, pkiDir)
	if err != nil {
		return err
	}
	defer stopLink()
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	rctx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		keepCertFresh(rctx, log, pkiDir, o.Name, false, certs, cp, func() {})
	}()
	defer func() { stopRenew(); <-renewed }()

	srv := newSANServer(o.Name, o.Dir, cp, log.With("host", o.Name), san.DaemonConfig{Listen: o.Listen, RunDir: filepath.Join(o.DataDir, "tgtd"), Log: log})
	if err := srv.startDaemon(ctx); err != nil {
		return err
	}
	sctx, stopSAN := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { defer close(served); srv.run(sctx) }()
	defer func() { stopSAN(); <-served }()

	ag := agent.New(agent.Config{Host: o.Name, Dir: filepath.Join(o.DataDir, "agent"), ImageDir: filepath.Join(o.DataDir, "images"),
		Heartbeat: o.Heartbeat, Role: api.HostRoleStorage, Portal: o.Listen, Served: srv}, cp, log)
	for {
		err := ag.Register(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, agent.ErrHostClaimed) || errors.Is(err, api.ErrConflict) || ctx.Err() != nil {
			return err
		}
		log.Warn("cannot register the storage server yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if ready != nil {
		ready(ag.HostInfo(ctx))
	}
	return ag.Run(ctx)
}
