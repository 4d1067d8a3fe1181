package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/node"
)

func storageServerCmd() *cobra.Command {
	var o node.StorageOptions
	var verbose bool
	cmd := &cobra.Command{
		Use:   "storage-server --join https://SERVER:PORT --token TOKEN --dir DIR --listen IP:3260",
		Short: "Run this machine as the cluster's iSCSI storage server (Debian's tgt): 'shoal pool create NAME --type iscsi --server THIS_NAME' then uses it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Name == "" {
				o.Name = defaultHostName()
			}
			ctx, cancel := signalContext()
			defer cancel()
			return node.RunStorage(ctx, newLog(verbose), o, func(h api.Host) {
				fmt.Printf("Shoal storage server %s is up: iSCSI portal %s, volumes in %s.\n", h.Name, h.Portal, o.Dir)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data-dir", "/var/lib/shoal-storage", "where the storage server keeps its state (certificates, tgtd's socket)")
	f.StringVar(&o.Join, "join", "", "server to join, https://SERVER:PORT (needed the first time)")
	f.StringVar(&o.Token, "token", "", "host join token from 'shoal cluster token' (needed the first time)")
	f.StringVar(&o.Name, "name", "", "this storage server's name, for 'pool create --server' (default: the hostname)")
	f.StringVar(&o.Listen, "listen", "", "the iSCSI portal, IP:PORT, reachable by the hosts (e.g. 192.0.2.10:3260)")
	f.StringVar(&o.Dir, "dir", "", "the directory of the volumes' files (its filesystem is the pool)")
	f.DurationVar(&o.Heartbeat, "heartbeat", time.Second, "how often to renew this server's liveness")
	f.BoolVarP(&verbose, "verbose", "v", false, "log more")
	_ = cmd.MarkFlagRequired("listen")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}
