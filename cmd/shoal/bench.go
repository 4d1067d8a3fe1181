package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/bench"
)

func benchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure Shoal's control plane (with simulated hosts)"}
	var o bench.PlacementOptions
	var verbose bool
	pl := &cobra.Command{
		Use:   "placement [--hosts N] [--vms M]",
		Short: "Create VMs through a real server and etcd on SIMULATED hosts (no QEMU) and report placements per second",
		Long: `Starts a Shoal server with embedded etcd in a fresh directory (removed
afterwards), registers --hosts simulated hosts named sim-00001... (records
and liveness leases only: no agent, no QEMU) that heartbeat every
--heartbeat, then creates --vms running VMs through the REST API with
--concurrency clients, and reports placements per second (201 answers,
written to etcd), latency, the spread over hosts and the heartbeat load.
Everything listens on loopback and a unix socket only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			if g.output == "table" {
				o.Progress = os.Stderr
			}
			r, err := bench.RunPlacement(ctx, newLog(verbose), o)
			if err != nil {
				return err
			}
			return g.print(r, func(w *tabwriter.Writer) { placementTable(w, r) })
		},
	}
	f := pl.Flags()
	f.IntVar(&o.Hosts, "hosts", 10000, "simulated hosts (named sim-00001...; no QEMU)")
	f.IntVar(&o.VMs, "vms", 100000, "VMs to create")
	f.IntVar(&o.Concurrency, "concurrency", 64, "API clients creating at once")
	f.DurationVar(&o.Heartbeat, "heartbeat", 10*time.Second, "each simulated host renews its liveness lease this often")
	f.StringVar(&o.DataDir, "data-dir", "", "where to make the run's directory (default: the temp dir); its disk sets etcd's fsync cost")
	f.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the create phase to this file")
	f.BoolVarP(&verbose, "verbose", "v", false, "log more")
	cmd.AddCommand(pl)
	return cmd
}

func placementTable(w *tabwriter.Writer, r bench.PlacementResult) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	hb := r.Heartbeats
	fmt.Fprintf(w, "SIMULATED HOSTS\t%d (sim-00001..%s, no QEMU), registered in %s\n", r.Hosts, bench.SimHostName(r.Hosts), r.RegisterTime.Round(time.Millisecond))
	fmt.Fprintf(w, "VMS CREATED\t%d of %d (HTTP 201), %d refused, %d in etcd; %d concurrent clients\n", r.Created, r.VMs, r.Refused, r.InEtcd, r.Concurrency)
	fmt.Fprintf(w, "PROJECT\t%s, quotas on (never reached): its usage counts %d VMs\n", bench.SimProject, r.ProjectVMs)
	if r.FirstError != "" {
		fmt.Fprintf(w, "FIRST REFUSAL\t%s\n", r.FirstError)
	}
	fmt.Fprintf(w, "PLACEMENTS/S\t%.0f (in %s)\n", r.PerSecond, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "CREATE LATENCY\tp50 %s, p99 %s, max %s\n", ms(r.P50), ms(r.P99), ms(r.Max))
	fmt.Fprintf(w, "SPREAD\t%d to %d VMs per host\n", r.SpreadMin, r.SpreadMax)
	fmt.Fprintf(w, "HEARTBEATS\tevery %s: %.0f/s, p50 %s, p99 %s, %d errors, %d late\n", hb.Interval, hb.PerSecond, ms(hb.P50), ms(hb.P99), hb.Errors, hb.Late)
	fmt.Fprintf(w, "HOSTS UP AT END\t%d of %d\n", r.HostsUp, r.Hosts)
	fmt.Fprintf(w, "HOST LIST\t%s for GET /v1/hosts\n", ms(r.HostListTime))
	if hb.LastError != "" {
		fmt.Fprintf(w, "HEARTBEAT ERROR\t%s\n", hb.LastError)
	}
}
