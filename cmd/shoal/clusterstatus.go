package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

// clusterStatusCmd shows the cluster's etcd: each member's database
// against the quota, and its alarms with what to do about them.
func clusterStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's etcd: each member's database size against the quota, and any alarm",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			st, err := c.ClusterStatus(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(st, func(w *tabwriter.Writer) { clusterStatusTable(w, st) })
		},
	}
}

func clusterStatusTable(w *tabwriter.Writer, st api.ClusterStatus) {
	fmt.Fprintln(w, "MEMBER\tENDPOINT\tLEADER\tDB SIZE\tIN USE\tOF QUOTA")
	for _, m := range st.Members {
		leader := ""
		if m.Leader {
			leader = "yes"
		}
		if m.Error != "" {
			fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t- (%s)\n", dash(m.Name), dash(m.Endpoint), leader, oneLine(m.Error))
			continue
		}
		share := "-"
		if st.QuotaBytes > 0 {
			share = fmt.Sprintf("%d%%", m.DBSizeBytes*100/st.QuotaBytes)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(m.Name), m.Endpoint, leader, bytesIEC(m.DBSizeBytes), bytesIEC(m.DBSizeInUseBytes), share)
	}
	fmt.Fprintf(w, "\nquota: %s per member\n", bytesIEC(st.QuotaBytes))
	if len(st.Alarms) == 0 {
		fmt.Fprintln(w, "alarms: none")
		return
	}
	for _, a := range st.Alarms {
		fmt.Fprintf(w, "ALARM %s on member %s\n", a.Kind, a.Member)
	}
	fmt.Fprintln(w, st.Advice)
}
