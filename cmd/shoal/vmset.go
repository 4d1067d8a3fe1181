package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func vmSetCmd(g *globals) *cobra.Command {
	var ha bool
	var priority, group, memory string
	var cpus int
	cmd := &cobra.Command{
		Use:   "set NAME [--cpus N] [--memory SIZE] [--ha=true|false] [--priority high|medium|low] [--anti-affinity GROUP]",
		Short: "Change a VM's size (from its next start), HA, failover priority or anti-affinity group",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req api.UpdateVMRequest
			f := cmd.Flags()
			if f.Changed("cpus") {
				req.CPUs = &cpus
			}
			if f.Changed("memory") {
				req.Memory = &memory
			}
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
			var said []string
			if req.CPUs != nil || req.Memory != nil {
				said = append(said, sizeLine(vm))
			}
			if req.HA != nil || req.Priority != nil || req.AntiAffinity != nil {
				said = append(said, settingsLine(vm))
			}
			return g.print(vm, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "vm %s: %s\n", vm.Name, strings.Join(said, "; "))
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&cpus, "cpus", 1, "virtual CPUs, from the VM's next start")
	f.StringVar(&memory, "memory", "", "memory, e.g. 512M or 1G, from the VM's next start")
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

// sizeWords says a size the way 'vm set' does: "2 vCPUs, 512 MiB".
func sizeWords(cpus int, memMiB int64) string {
	unit := "vCPUs"
	if cpus == 1 {
		unit = "vCPU"
	}
	return fmt.Sprintf("%d %s, %d MiB", cpus, unit, memMiB)
}

// sizeLine shows the size 'vm set' gave a VM, and when it applies: at
// once for a VM that does not run, else from its next start, e.g. "2
// vCPUs, 512 MiB from its next start (it is running now with 1 vCPU,
// 256 MiB)".
func sizeLine(vm api.VM) string {
	set := sizeWords(vm.CPUs, vm.MemoryMiB)
	switch {
	case vm.RunningCPUs == 0 && vm.State != api.StateRunning && vm.State != api.StatePaused:
		return set
	case vm.RunningCPUs == 0:
		return set + " from its next start"
	case vm.RunningCPUs == vm.CPUs && vm.RunningMemoryMiB == vm.MemoryMiB:
		return set + ", as it runs now"
	}
	runs := sizeWords(vm.RunningCPUs, vm.RunningMemoryMiB)
	if vm.State == api.StateRunning || vm.State == api.StatePaused {
		return fmt.Sprintf("%s from its next start (it is %s now with %s)", set, vm.State, runs)
	}
	return fmt.Sprintf("%s from its next start (its QEMU was started with %s)", set, runs)
}

// pendingSize is what 'vm show' says of a VM that runs at another size
// than the one set ("1 vCPU, 256 MiB until its next start"), or "".
func pendingSize(vm api.VM) string {
	if vm.RunningCPUs == 0 || vm.RunningCPUs == vm.CPUs && vm.RunningMemoryMiB == vm.MemoryMiB {
		return ""
	}
	return sizeWords(vm.RunningCPUs, vm.RunningMemoryMiB) + " until its next start"
}
