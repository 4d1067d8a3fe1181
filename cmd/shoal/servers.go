package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/replica"
)

// madeClient is a client built from the settings file, with the settings
// it was built from: the list of replicas it learns may go back there.
type madeClient struct {
	c   *client.Client
	cfg client.Config
}

// clusterServersCmd lists the control plane's replicas and remembers them
// in the settings file, so that the CLI turns to another one when its
// server is down.
func clusterServersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "servers",
		Short: "List the control plane's replicas (and remember them in the CLI settings, to fail over to)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			list, err := c.ListServers(cmd.Context())
			if err != nil {
				return err
			}
			if g.made != nil {
				if saved, err := client.SaveServers(client.ConfigPath(), g.made.cfg, replica.URLs(list)); err != nil {
					fmt.Fprintln(os.Stderr, "warning: cannot remember the servers:", err)
				} else if saved {
					fmt.Fprintln(os.Stderr, "remembered in", client.ConfigPath())
				}
			}
			return g.print(list, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tURL\tLEADER")
				for _, s := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\n", s.Name, dash(s.URL), leaderMark(s))
				}
			})
		},
	}
}

// clusterRemoveServerCmd removes a server replica that is gone for good.
func clusterRemoveServerCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-server NAME",
		Short: "Remove a stopped server replica from the cluster for good (its etcd member leaves the quorum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RemoveServer(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("server %s removed from the cluster\n", args[0])
			return nil
		},
	}
}

func leaderMark(s api.Server) string {
	if s.Leader {
		return "yes"
	}
	return ""
}

// rememberServers refreshes the replicas in the settings file after a
// command whose client had to turn to another server than its first one
// (best effort: a failure changes nothing).
func (g *globals) rememberServers(ctx context.Context) {
	if g.made == nil || !g.made.c.FailedOver() {
		return
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	list, err := g.made.c.ListServers(ctx)
	if err != nil {
		return
	}
	_, _ = client.SaveServers(client.ConfigPath(), g.made.cfg, replica.URLs(list))
}
