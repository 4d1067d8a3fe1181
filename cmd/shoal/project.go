package main

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func projectCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "project", Short: "Manage projects: groups of VMs with quotas"}
	var req api.CreateProjectRequest
	create := &cobra.Command{
		Use:   "create NAME [--max-vms N] [--max-cpus N] [--max-memory SIZE] [--max-disk SIZE]",
		Short: "Make a project (admins)",
		Long: `Make a project. Each limit is optional; absent or 0 is unlimited. A create
that would pass a limit is refused, however many run at once. Users made
with 'shoal user create --project NAME' see and act on its VMs only, and
create into it. VMs created without --project are in project default.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.CreateProject(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(p, func(w *tabwriter.Writer) { fmt.Fprintf(w, "project %s created\n", p.Name) })
		},
	}
	create.Flags().IntVar(&req.MaxVMs, "max-vms", 0, "at most this many VMs (0: unlimited)")
	create.Flags().IntVar(&req.MaxCPUs, "max-cpus", 0, "at most this many vCPUs in all (0: unlimited)")
	create.Flags().StringVar(&req.MaxMemory, "max-memory", "", "at most this much memory in all, e.g. 16G (absent: unlimited)")
	create.Flags().StringVar(&req.MaxDisk, "max-disk", "", "at most this much disk in all, e.g. 200G (absent: unlimited)")
	cmd.AddCommand(create, &cobra.Command{
		Use: "list", Short: "List the projects you may see, with their limits and usage", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.ListProjects(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ps, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tVMS\tCPUS\tMEMORY\tDISK")
				for _, p := range ps {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", usageCells(p)...)
				}
			})
		},
	}, &cobra.Command{
		Use: "show NAME", Short: "Show a project's limits and usage", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.GetProject(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(p, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Name:\t%s\nVMs:\t%s\nvCPUs:\t%s\nMemory:\t%s\nDisk:\t%s\n", usageCells(p)...)
			})
		},
	}, &cobra.Command{
		Use: "delete NAME", Short: "Delete a project (refused while it has VMs)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteProject(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "project %s deleted\n", args[0])
			return nil
		},
	})
	return cmd
}

// usageCells are a project's name, then its VMs, vCPUs, memory and disk
// used, each against its limit.
func usageCells(p api.Project) []any {
	size := func(b int64, _ int) string { return api.FormatSize(b) }
	return []any{p.Name, usedOf(int64(p.Usage.VMs), int64(p.Limits.VMs), strconv.FormatInt),
		usedOf(int64(p.Usage.CPUs), int64(p.Limits.CPUs), strconv.FormatInt),
		usedOf(p.Usage.MemoryMiB<<20, p.Limits.MemoryMiB<<20, size), usedOf(p.Usage.DiskBytes, p.Limits.DiskBytes, size)}
}

// usedOf shows a usage against its limit: "3/10", or "3" when unlimited.
func usedOf(used, limit int64, format func(int64, int) string) string {
	if limit == 0 {
		return format(used, 10)
	}
	return format(used, 10) + "/" + format(limit, 10)
}
