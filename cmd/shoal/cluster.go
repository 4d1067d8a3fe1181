package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/node"
)

func newLog(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func serverCmd() *cobra.Command {
	var o node.Options
	var etcd, config string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (etcd, API, controllers) without a local agent; hosts join it with 'shoal agent'",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if etcd != "" {
				o.EtcdEndpoints = strings.Split(etcd, ",")
			}
			o.NoAgent, o.ConfigSocket = true, true
			o.ConfigPath = config
			if !cmd.Flags().Changed("etcd-peer-url") {
				o.EtcdPeer = "" // as the data dir records it; for a joiner, its advertised address
			}
			if o.ConfigPath == "" {
				o.ConfigPath = client.ConfigPath()
			}
			ctx, cancel := signalContext()
			defer cancel()
			return node.Run(ctx, newLog(verbose), o, func(i node.Info) {
				fmt.Printf("Shoal server is up: %s (and unix://%s). CLI settings in %s.\n", i.API, i.Socket, o.ConfigPath)
				fmt.Println("Add hosts: run 'shoal cluster token', then on each host 'shoal agent --join " + advertised(o) + " --token TOKEN'.")
			})
		},
	}
	f := cmd.Flags()
	controlPlaneFlags(f, &o, &etcd, "0.0.0.0:7443")
	f.StringVar(&o.Advertise, "advertise", "", "URL at which hosts reach this server, e.g. https://10.0.0.1:7443")
	f.StringVar(&o.Host, "name", "", "this server's name (default: the hostname)")
	f.StringVar(&o.Join, "join", "", "become a replica of the cluster of this server, https://SERVER:PORT (needed the first time only)")
	f.StringVar(&o.JoinToken, "token", "", "join token from 'shoal cluster token --server' (with --join)")
	f.StringVar(&config, "config", "", "where to write the CLI settings (default $SHOAL_CONFIG or ~/.config/shoal/config.json)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log more")
	return cmd
}

func advertised(o node.Options) string {
	if o.Advertise != "" {
		return o.Advertise
	}
	return "https://" + o.Listen
}

func agentCmd() *cobra.Command {
	var o node.AgentOptions
	var shared []string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "agent --join https://SERVER:PORT --token TOKEN",
		Short: "Run this machine as a host of a Shoal cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.SharedPools = map[string]string{}
			for _, s := range shared {
				name, dir, ok := strings.Cut(s, "=")
				if !ok || api.ValidateName("pool", name) != nil || !strings.HasPrefix(dir, "/") {
					return fmt.Errorf("--shared-pool %q: use NAME=/absolute/dir", s)
				}
				o.SharedPools[name] = dir
			}
			if o.Host == "" {
				o.Host = defaultHostName()
			}
			ctx, cancel := signalContext()
			defer cancel()
			return node.RunAgent(ctx, newLog(verbose), o, func(h api.Host) {
				fmt.Printf("Shoal agent of host %s is up (%s); VMs keep running when it stops.\n", h.Name, h.Accel)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data-dir", "/var/lib/shoal", "where the agent keeps its state, images and local disks")
	f.BoolVar(&o.Watchdog, "fence-watchdog", true, "keep a fence watchdog running that kills this host's HA VMs if the agent stops renewing the host's lease, even if the agent dies")
	f.StringVar(&o.Join, "join", "", "server to join, https://SERVER:PORT (needed the first time)")
	f.StringVar(&o.Token, "token", "", "join token from 'shoal cluster token' (needed the first time)")
	f.StringVar(&o.Host, "host", "", "this host's name (default: the hostname)")
	f.StringVar(&o.Listen, "listen", "", "address of this host's own API, reachable by the server (IP:PORT)")
	f.StringVar(&o.Bridge, "bridge", "shoal0", "the VM bridge of the default network")
	f.StringVar(&o.BridgeAddr, "network-addr", "", "this host's address on the VM bridge, CIDR (default: the network's gateway)")
	f.StringVar(&o.Uplink, "uplink", "", "NIC to put into the VM bridge (joins VMs to the physical network)")
	f.StringArrayVar(&shared, "shared-pool", nil, "a storage pool every host sees, NAME=DIR (repeatable)")
	f.StringVar(&o.Accel, "accel", "auto", "accelerator: auto, kvm or tcg")
	f.DurationVar(&o.Heartbeat, "heartbeat", time.Second, "how often to renew this host's liveness")
	f.DurationVar(&o.StopTimeout, "stop-timeout", 30*time.Second, "how long 'vm stop' waits for an ACPI shutdown")
	f.BoolVarP(&verbose, "verbose", "v", false, "log more")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

// defaultHostName is this machine's name for Shoal: its hostname's first
// label, in lower case.
func defaultHostName() string {
	h, _ := os.Hostname()
	return strings.ToLower(strings.SplitN(h, ".", 2)[0])
}

func clusterCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Manage the cluster"}
	var ttl string
	var srv bool
	tok := &cobra.Command{
		Use: "token", Short: "Print a one-time token for a host (or, with --server, a server replica) to join (expires, default 1h)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			kind := "host"
			if srv {
				kind = "server"
			}
			t, err := c.CreateJoinToken(cmd.Context(), kind, ttl)
			if err != nil {
				return err
			}
			return g.print(t, func(w *tabwriter.Writer) { fmt.Fprintln(w, t.Token) })
		},
	}
	tok.Flags().StringVar(&ttl, "ttl", "1h", "how long the token stays valid")
	tok.Flags().BoolVar(&srv, "server", false, "a token for a server replica to join ('shoal server --join'): it buys the cluster's CA key")
	cmd.AddCommand(tok, clusterServersCmd(g), clusterRemoveServerCmd(g), clusterStatusCmd(g))
	return cmd
}
