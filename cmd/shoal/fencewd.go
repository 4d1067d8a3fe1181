package main

import (
	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/fencewd"
)

// fenceWatchdogCmd is started by 'shoal agent' and outlives it: it kills
// the host's HA VMs when the agent stops renewing the host's lease.
func fenceWatchdogCmd() *cobra.Command {
	var dir string
	var verbose bool
	cmd := &cobra.Command{
		Use:    "fence-watchdog --dir AGENT_STATE_DIR",
		Short:  "Kill this host's HA VMs when its agent stops renewing the lease (started by 'shoal agent')",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return fencewd.Run(ctx, newLog(verbose), dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the agent's state dir")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}
