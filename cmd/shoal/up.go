package main

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/node"
	"github.com/shoalvm/shoal/internal/server"
)

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func upCmd() *cobra.Command {
	var o node.Options
	var etcd string
	var noDemo, verbose bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run an all-in-one Shoal node in the foreground (embedded etcd, server, agent, default network)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log := newLog(verbose)
			if etcd != "" {
				o.EtcdEndpoints = strings.Split(etcd, ",")
			}
			o.ConfigPath = client.ConfigPath()
			o.Demo = !noDemo
			ctx, cancel := signalContext()
			defer cancel()
			fmt.Println("Starting Shoal (etcd, server, agent, network)...")
			err := node.Run(ctx, log, o, func(i node.Info) { printWelcome(i, o) })
			fmt.Println("Shoal stopped. VMs keep running; the next 'shoal up' finds them again.")
			return err
		},
	}
	f := cmd.Flags()
	controlPlaneFlags(f, &o, &etcd, "127.0.0.1:7443")
	f.StringVar(&o.Host, "host", "", "this host's name (default: the hostname)")
	f.StringVar(&o.Accel, "accel", "auto", "accelerator: auto (probe KVM, else TCG), kvm or tcg")
	f.DurationVar(&o.StopTimeout, "stop-timeout", 30*time.Second, "how long 'vm stop' waits for an ACPI shutdown before forcing")
	f.BoolVar(&noDemo, "no-demo", false, "do not create the demo VM")
	f.BoolVarP(&verbose, "verbose", "v", false, "log more")
	return cmd
}

// controlPlaneFlags are the flags of every command that runs a control
// plane (up, server).
func controlPlaneFlags(f *pflag.FlagSet, o *node.Options, etcd *string, listen string) {
	f.StringVar(&o.DataDir, "data-dir", "/var/lib/shoal", "where Shoal keeps its state, images and disks")
	f.StringVar(&o.Listen, "listen", listen, "HTTPS address of the API (for users and agents)")
	f.StringVar(etcd, "etcd-endpoints", "", "use this external etcd cluster (comma-separated URLs) instead of the embedded one")
	f.StringVar(&o.EtcdClient, "etcd-client-url", "https://127.0.0.1:7379", "embedded etcd: client URL (mutual TLS with the cluster CA)")
	f.StringVar(&o.EtcdPeer, "etcd-peer-url", "https://127.0.0.1:7380", "embedded etcd: peer URL (mutual TLS with the cluster CA)")
	f.StringVar(&o.EtcdTLS.CACert, "etcd-cacert", "", "external etcd over TLS (https:// endpoints): CA certificate that signed its members' certificates (PEM)")
	f.StringVar(&o.EtcdTLS.Cert, "etcd-cert", "", "external etcd: client certificate (PEM), for an etcd run with --client-cert-auth")
	f.StringVar(&o.EtcdTLS.Key, "etcd-key", "", "external etcd: the client certificate's private key (PEM)")
	f.StringVar(&o.Subnet, "subnet", "10.57.0.0/24", "subnet of the default network")
	f.StringVar(&o.Bridge, "bridge", "shoal0", "bridge of the default network on each host")
	f.StringVar(&o.Policy.Strategy, "placement", "spread", "where new VMs go: spread (most free memory) or pack (fill hosts in turn)")
	f.Float64Var(&o.Policy.MemOvercommit, "mem-overcommit", 1.0, "memory a host may promise to VMs, as a multiple of its RAM")
	f.Float64Var(&o.Policy.CPUOvercommit, "cpu-overcommit", 4.0, "vCPUs a host may run per CPU")
	o.MaxImageUpload = server.DefaultMaxImageUpload
	f.Var(sizeFlag{&o.MaxImageUpload}, "max-image-upload", "largest image 'shoal image import' takes (e.g. 64G)")
}

// sizeFlag is a flag of a size with a unit, such as 64G.
type sizeFlag struct{ p *int64 }

func (f sizeFlag) String() string {
	if f.p == nil {
		return ""
	}
	return api.FormatSize(*f.p)
}

func (f sizeFlag) Set(s string) error {
	b, err := api.ParseSize(s)
	if err == nil {
		*f.p = b
	}
	return err
}

func (f sizeFlag) Type() string { return "size" }

func printWelcome(i node.Info, o node.Options) {
	accel := i.Accel
	if i.AccelReason != "" {
		accel += " (" + i.AccelReason + ")"
	}
	fmt.Printf("\nShoal is up on host %s.\n", i.Host)
	fmt.Printf("  API:        %s  (and unix://%s)\n", i.API, i.Socket)
	fmt.Printf("  CLI config: %s (token inside, mode 0600)\n", o.ConfigPath)
	fmt.Printf("  Accel:      %s\n", accel)
	if i.Demo != nil {
		fmt.Printf("  Demo VM:    %s is %s at %s (its guest answers HTTP a few seconds after boot)\n", i.Demo.Name, i.Demo.State, i.Demo.IP)
	}
	fmt.Println("\nTry, in another terminal:")
	if i.Demo != nil {
		fmt.Printf("  wget -qO- http://%s/\n", i.Demo.IP)
	}
	fmt.Println("  bin/shoal vm create web1 --image tiny --memory 256M --disk 1G --start")
	fmt.Println("  bin/shoal vm list")
	fmt.Println("  bin/shoal vm show web1 -o json")
	fmt.Println("  bin/shoal vm console web1      (Ctrl-] to detach)")
	fmt.Println("  bin/shoal host show " + i.Host)
	fmt.Println("\nPress Ctrl-C to stop Shoal; VMs keep running.")
}
