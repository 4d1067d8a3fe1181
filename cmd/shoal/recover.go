package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func vmRecoverCmd(g *globals) *cobra.Command {
	var req api.RecoverRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "recover NAME [--to HOST]",
		Short: "Restart a VM whose host is dead on another host",
		Long: `Restart a VM whose host has failed on another host: for VMs that failover
does not move (not HA, or whose failover gave up). The failed host must be
fenced (its lease gone for a few seconds, so its agent has killed its VMs)
and the VM's disk on a shared pool. A running VM starts on the new host and
the command waits until it runs (--wait=false returns at once); a stopped
VM is only reassigned. Without --to, the scheduler picks the host.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			before, err := c.GetVM(ctx, name)
			if err != nil {
				return err
			}
			vm, err := c.RecoverVM(ctx, name, req, wait)
			if err != nil {
				return err
			}
			return g.print(vm, func(w *tabwriter.Writer) {
				how := "it starts on " + vm.Host
				switch {
				case before.Power == api.PowerStopped:
					how = "reassigned to " + vm.Host + " (stopped)"
				case vm.State == api.StateRunning:
					how = "it runs on " + vm.Host
				}
				fmt.Fprintf(w, "vm %s recovered from failed host %s: %s\n", vm.Name, before.Host, how)
			})
		},
	}
	cmd.Flags().StringVar(&req.To, "to", "", "host to restart it on (default: the scheduler picks)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the VM runs on its new host")
	cmd.Flags().BoolVar(&req.Force, "force", false, "for a VM that is not HA: you have made sure its host is powered off")
	return cmd
}
