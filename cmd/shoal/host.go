package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/hostcheck"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/node"
	"github.com/shoalvm/shoal/internal/qemu"
)

func hostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Show, check and drain virtualization hosts"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List hosts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hosts, err := c.ListHosts(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(hosts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tSTATE\tACCEL\tCPUS\tCPU MODEL\tMEMORY\tALLOCATED\tVMS\tLAST HEARTBEAT")
				for _, h := range hosts {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\n", h.Name, h.State, h.Accel, h.CPUs, short(h.CPUModel, 28),
						api.FormatSize(h.MemoryMiB<<20), api.FormatSize(h.AllocatedMiB<<20), h.VMs, ago(h.LastHeartbeat))
				}
			})
		},
	}, &cobra.Command{
		Use: "show NAME", Short: "Show one host", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.GetHost(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(h, func(w *tabwriter.Writer) {
				row := func(k, v string) { fmt.Fprintf(w, "%s:\t%s\n", k, v) }
				row("Name", h.Name)
				row("State", h.State)
				if h.Role == api.HostRoleStorage {
					row("Role", "storage server (runs no VM), iSCSI portal "+h.Portal)
				}
				accel := h.Accel
				if h.AccelReason != "" {
					accel += " (" + h.AccelReason + ")"
				}
				row("Accel", accel)
				row("CPU", fmt.Sprintf("%d x %s", h.CPUs, h.CPUModel))
				row("Memory", fmt.Sprintf("%s, %s allocated", api.FormatSize(h.MemoryMiB<<20), api.FormatSize(h.AllocatedMiB<<20)))
				row("VMs", fmt.Sprint(h.VMs))
				row("QEMU", h.QEMUVersion)
				row("Last heartbeat", ago(h.LastHeartbeat))
			})
		},
	}, &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a host without VMs from the cluster for good; its certificate is revoked at once",
		Long: "Remove a host from the cluster for good. The host must have no VMs, and be down or drained\n" +
			"('shoal host drain'). Its certificate is revoked on every server at once: its agent's next call\n" +
			"is refused. To bring the machine back, join it again with a new token.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RemoveHost(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("Host %s removed; its certificate is revoked.\n", args[0])
			return nil
		},
	}, hostCheckCmd(), hostDrainCmd(g), hostResumeCmd(g))
	return cmd
}

func hostCheckCmd() *cobra.Command {
	var dataDir string
	var probe bool
	cmd := &cobra.Command{
		Use: "check", Short: "Tell whether this machine is ready to be a Shoal host, and what to fix", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := context.Background()
			opts := hostcheck.Options{DataDir: dataDir, MinFreeMemMiB: 256, MinFreeDiskMiB: 512}
			if a, r, ok := node.CachedAccel(dataDir); ok && !probe {
				opts.Accel, opts.AccelReason = a, r
			} else {
				if kernel, _, err := image.FindCloudKernel(); err == nil {
					dir, _ := os.MkdirTemp("", "shoal-probe-")
					defer os.RemoveAll(dir)
					art, err := image.BuildTiny(ctx, discardLog(), dir, image.TinyOptions{KernelPath: kernel})
					if err == nil {
						opts.Accel, opts.AccelReason = qemu.ProbeAccel(ctx, discardLog(), hostcheck.DefaultQEMU, art.Kernel, art.Initrd, art.Cmdline, 8*time.Second)
					}
				}
			}
			r := hostcheck.Run(ctx, opts)
			fmt.Print(r.String())
			if !r.OK() {
				return fmt.Errorf("this machine is not ready to be a Shoal host: fix the FAIL lines above")
			}
			fmt.Println("This machine is ready to be a Shoal host.")
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/shoal", "where Shoal keeps its data")
	cmd.Flags().BoolVar(&probe, "probe", false, "boot a tiny guest to test whether KVM really works, even if an earlier shoal up already did")
	return cmd
}

func short(s string, n int) string {
	if len(s) <= n {
		return dash(s)
	}
	return s[:n-1] + "…"
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}
