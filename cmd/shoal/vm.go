package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func vmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run and manage virtual machines"}
	cmd.AddCommand(vmCreateCmd(g), vmListCmd(g), vmShowCmd(g), vmDeleteCmd(g),
		vmConsoleCmd(g), vmLogsCmd(g), vmStopCmd(g), vmMigrateCmd(g), vmRecoverCmd(g), vmSetCmd(g),
		vmAttachCmd(g, "attach", "Attach a volume to a VM (hot, while it runs: the guest sees a new disk)"),
		vmAttachCmd(g, "detach", "Detach a volume from a VM (hot, while it runs: the guest sees the disk go)"))
	for _, a := range []struct{ verb, short string }{
		{"start", "Start a stopped VM"},
		{"restart", "Restart a running VM (ACPI shutdown, then start)"},
		{"pause", "Pause a running VM (its CPUs stop; memory is kept)"},
		{"resume", "Resume a paused VM"},
	} {
		cmd.AddCommand(vmActionCmd(g, a.verb, a.short))
	}
	return cmd
}

func vmCreateCmd(g *globals) *cobra.Command {
	var req api.CreateVMRequest
	var userData string
	cmd := &cobra.Command{
		Use:   "create NAME --image IMAGE",
		Short: "Create a VM (a linked clone of an image)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if userData != "" {
				b, err := os.ReadFile(userData)
				if err != nil {
					return fmt.Errorf("--user-data: %w", err)
				}
				req.UserData = string(b)
			}
			if req.CPU == "host" {
				fmt.Fprintln(os.Stderr, "warning: --cpu host ties the VM to hosts with this same CPU: live migration or failover to another CPU may fail")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			vm, err := c.CreateVM(ctx, req, true)
			if err != nil {
				return err
			}
			return g.print(vm, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "vm %s created on host %s: %s, ip %s\n", vm.Name, vm.Host, vm.State, vm.IP)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image to clone (see 'shoal image list')")
	f.IntVar(&req.CPUs, "cpus", 1, "virtual CPUs")
	f.StringVar(&req.CPU, "cpu", "", "CPU model (default: the best one every host runs, so the VM can move anywhere); 'host' passes this host's CPU through")
	f.StringVar(&req.Memory, "memory", "256M", "memory, e.g. 256M or 2G")
	f.StringVar(&req.Disk, "disk", "", "disk size, e.g. 2G (default: the image's size)")
	f.StringVar(&req.Network, "network", "", "network (default: default)")
	f.StringVar(&req.Pool, "pool", "", "storage pool (default: local)")
	f.StringVar(&req.Host, "host", "", "pin to this host")
	f.StringVar(&req.Project, "project", "", "project to create it in (default: yours, or default); see 'shoal project list'")
	f.BoolVar(&req.HA, "ha", false, "restart on another host if its host fails")
	f.StringVar(&req.Priority, "priority", "", "failover priority with --ha: high, medium (default) or low")
	f.StringVar(&req.AntiAffinity, "anti-affinity", "", "never place two VMs of this group on one host")
	f.BoolVar(&req.Start, "start", false, "start it once created")
	f.StringVar(&userData, "user-data", "", "cloud-init user-data file")
	return cmd
}

func vmListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(vms, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tSTATE\tHOST\tIP\tCPUS\tMEMORY\tDISK\tIMAGE\tPROJECT")
				for _, v := range vms {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.Host, dash(v.IP), v.CPUs,
						api.FormatSize(v.MemoryMiB<<20), api.FormatSize(v.DiskBytes), v.Image, api.ProjectOf(v.Project))
				}
			})
		},
	}
}

func vmShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "show NAME", Short: "Show one VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(v, func(w *tabwriter.Writer) {
				row := func(k, v string) { fmt.Fprintf(w, "%s:\t%s\n", k, v) }
				row("Name", v.Name)
				row("Project", api.ProjectOf(v.Project))
				row("State", v.State)
				row("Host", v.Host)
				row("IP", dash(v.IP))
				row("MAC", v.MAC)
				row("Image", v.Image)
				row("CPUs", fmt.Sprintf("%d x %s", v.CPUs, dash(v.CPUModel)))
				row("Memory", api.FormatSize(v.MemoryMiB<<20))
				if runs := pendingSize(v); runs != "" {
					row("Runs with", runs)
				}
				for i, d := range v.Disks {
					k := ""
					if i == 0 {
						k = "Disks"
					}
					fmt.Fprintf(w, "%s\t%s\n", colon(k), diskLine(d))
				}
				row("Network", v.Network)
				row("HA", haSummary(v))
				if v.AntiAffinity != "" {
					row("Anti-affinity", v.AntiAffinity)
				}
				row("Accel", dash(v.Accel))
				if !v.StartedAt.IsZero() && (v.State == api.StateRunning || v.State == api.StatePaused) {
					row("Up since", v.StartedAt.Local().Format(time.RFC3339))
				}
				if v.Error != "" {
					row("Error", v.Error)
				}
				if m := v.Migration; m != nil {
					row("Migrating", fmt.Sprintf("%s -> %s: %s", m.From, m.To, progressLine(m.Progress)))
				}
				for i, m := range v.Migrations {
					line := m.StartedAt.Local().Format("2006-01-02 15:04:05") + "  " + migrationSummary(m)
					if i == 0 {
						row("Migrations", line)
					} else {
						fmt.Fprintf(w, "\t%s\n", line)
					}
				}
			})
		},
	}
}

// colon is k with a colon, or nothing for a continued row.
func colon(k string) string {
	if k == "" {
		return ""
	}
	return k + ":"
}

// diskLine is one disk of v in 'vm show'.
func diskLine(d api.Disk) string {
	line := fmt.Sprintf("%s  %s on pool %s", d.Name, api.FormatSize(d.SizeBytes), d.Pool)
	if d.Volume {
		line += " (volume)"
	}
	return line
}

func vmActionCmd(g *globals, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use: verb + " NAME", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAction(g, args[0], verb, false)
		},
	}
}

func vmStopCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use: "stop NAME", Short: "Stop a VM: ACPI shutdown, forced after a timeout", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAction(g, args[0], "stop", force)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "power off at once, without ACPI shutdown")
	return cmd
}

func runAction(g *globals, name, verb string, force bool) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	vm, err := c.VMAction(ctx, name, verb, force)
	if err != nil {
		return err
	}
	return g.print(vm, func(w *tabwriter.Writer) { fmt.Fprintf(w, "vm %s is %s\n", vm.Name, vm.State) })
}

func vmDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use: "delete NAME", Short: "Delete a VM with its disks and everything of it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			if err := c.DeleteVM(ctx, args[0], force); err != nil {
				return err
			}
			if g.output == "json" {
				return g.print(map[string]string{"deleted": args[0]}, nil)
			}
			fmt.Printf("vm %s deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even if running (powers it off)")
	return cmd
}

func vmLogsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "logs NAME", Short: "Print the VM's serial console output", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.Logs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(os.Stdout, r)
			return err
		},
	}
}
