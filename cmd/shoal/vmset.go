package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func vmSetCmd(g *globals) *cobra.Command {
	var ha bool
	var priority, group string
	cmd := &cobra.Command{
		Use:   "set NAME [--ha=true|false] [--priority high|medium|low] [--anti-affinity GROUP]",
		Short: "Change a VM's HA, failover priority or anti-affinity group",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.UpdateVMRequest
			f := cmd.Flags()
			if f.Changed("ha") {
				req.HA = &ha
			}
			if f.Changed("priority") {
				req.Priority = &priority
			}
			if f.Changed("anti-affinity") {
				req.AntiAffinity = &group
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			vm, err := c.UpdateVM(ctx, args[0], req)
			if err != nil {
				return err
			}
			return g.print(vm, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "vm %s: %s\n", vm.Name, settingsLine(vm))
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&ha, "ha", false, "restart on another host if its host fails (--ha=false turns it off and clears the priority)")
	f.StringVar(&priority, "priority", "", "failover priority of an HA VM: high, medium or low")
	f.StringVar(&group, "anti-affinity", "", `anti-affinity group; "" takes the VM out of its group`)
	return cmd
}

// haSummary says whether a VM is highly available, and with which
// priority: "on (priority high)" or "off".
func haSummary(vm api.VM) string {
	if !vm.HA {
		return "off"
	}
	return fmt.Sprintf("on (priority %s)", api.EffectivePriority(vm.HA, vm.Priority))
}

// settingsLine shows what 'vm set' changes, e.g. `ha on, priority high,
// anti-affinity group "dbs"` or "ha off, no anti-affinity group".
func settingsLine(vm api.VM) string {
	line := "ha off"
	if vm.HA {
		line = "ha on, priority " + api.EffectivePriority(vm.HA, vm.Priority)
	}
	if vm.AntiAffinity == "" {
		return line + ", no anti-affinity group"
	}
	return fmt.Sprintf("%s, anti-affinity group %q", line, vm.AntiAffinity)
}
