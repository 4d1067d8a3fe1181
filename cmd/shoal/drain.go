package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

// drainPoll is how often 'shoal host drain' looks at the drain.
const drainPoll = 500 * time.Millisecond

func hostDrainCmd(g *globals) *cobra.Command {
	var req api.DrainRequest
	var downtime, postcopy time.Duration
	var bandwidth string
	var follow, noWait bool
	cmd := &cobra.Command{
		Use:   "drain NAME [--parallel N] [--no-wait] [--follow]",
		Short: "Put a host in maintenance and move its VMs off it",
		Long: `Put a host in maintenance (it takes no new VMs and no incoming migrations)
and move its VMs to other hosts: running VMs by live migration, a few at a
time (--parallel), stopped VMs whose disk is on a shared pool by handing
them to another host. A VM that cannot move (paused, failed, stopped with
its disk on the host's local pool, no other host fits) stays, and the
command says why and what to do. It prints one line per VM as its result
becomes final and ends with a summary; the exit status is non-zero if any
VM stayed or failed to move, so a script knows the host is not empty.
Ctrl-C stops watching (the drain goes on); 'shoal host resume NAME' puts
the host back in service, and a drain under way then starts no more moves.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			var rep api.DrainReport
			if follow {
				if rep, err = c.Drain(ctx, name); err != nil {
					return err
				}
			} else {
				req.DowntimeMs = downtime.Milliseconds()
				req.PostcopyAfterMs = postcopy.Milliseconds()
				if bandwidth != "" {
					b, err := api.ParseSize(bandwidth)
					if err != nil {
						return fmt.Errorf("--bandwidth: %w", err)
					}
					req.BandwidthBytes = b
				}
				if rep, err = c.DrainHost(ctx, name, req); err != nil {
					return err
				}
				if noWait {
					return g.print(rep, func(w *tabwriter.Writer) {
						fmt.Fprintf(w, "drain of host %s started: it is in maintenance; follow it with 'shoal host drain %s --follow'\n", name, name)
					})
				}
			}
			show := g.output == "table"
			if show && rep.State == api.DrainRunning {
				fmt.Fprintf(os.Stderr, "draining host %s: %d VM(s), %d live migration(s) at a time (Ctrl-C stops watching; the drain goes on)\n",
					name, len(rep.VMs), rep.Parallel)
			}
			rep, err = watchDrain(ctx, c, name, rep, show)
			if err != nil {
				return err
			}
			if perr := g.print(rep, func(w *tabwriter.Writer) { fmt.Fprintln(w, drainSummaryLine(rep)) }); perr != nil {
				return perr
			}
			if t := rep.Tally(); t.Stayed+t.Failed > 0 {
				return fmt.Errorf("host %s is not empty: %s; do what their reasons say, then run 'shoal host drain %s' again", name, t.NotMoved(), name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&req.Parallel, "parallel", 2, "live migrations at once")
	f.BoolVar(&req.Insecure, "insecure", false, "send the migration streams unencrypted (trusted networks only)")
	f.DurationVar(&downtime, "downtime", 50*time.Millisecond, "longest pause of each VM QEMU may plan for at the switch")
	f.StringVar(&bandwidth, "bandwidth", "", "cap each migration stream, bytes per second (e.g. 500M); default unlimited")
	f.BoolVar(&req.AutoConverge, "auto-converge", true, "slow down a VM's CPUs if it dirties memory faster than it moves")
	f.DurationVar(&postcopy, "postcopy-after", 0, "switch to post-copy if pre-copy has not converged after this long (0 = never)")
	f.BoolVar(&follow, "follow", false, "watch the host's drain under way (or show its last one) instead of starting one")
	f.BoolVar(&noWait, "no-wait", false, "start the drain and return")
	return cmd
}

func hostResumeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume NAME",
		Short: "Put a host in maintenance back in service",
		Long: `Put a host in maintenance back in service: it takes new VMs and incoming
migrations again. A drain of it still under way starts no more moves; the
live migrations already going finish. VMs moved off do not come back.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.ResumeHost(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(h, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "host %s is back in service (state %s)\n", h.Name, h.State)
			})
		},
	}
}

// watchDrain follows the host's drain until it is done, printing one
// line per VM as its result becomes final (when show), and returns the
// last report. It rides out a server that is briefly away.
func watchDrain(ctx context.Context, c *client.Client, host string, rep api.DrainReport, show bool) (api.DrainReport, error) {
	printed := map[string]bool{}
	var failingSince time.Time
	for {
		if show {
			width := 0
			for _, e := range rep.VMs {
				width = max(width, len(e.Name))
			}
			for _, e := range rep.VMs {
				if k := rep.ID + "/" + e.Name + "/" + e.ID; e.Final() && !printed[k] {
					printed[k] = true
					fmt.Printf("%-*s  %s\n", width, e.Name, drainVMLine(e))
				}
			}
		}
		if rep.State != api.DrainRunning {
			return rep, nil
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("stopped watching; the drain goes on (see 'shoal host drain %s --follow', or stop it with 'shoal host resume %s')", host, host)
		case <-time.After(drainPoll):
		}
		cur, err := c.Drain(ctx, host)
		switch {
		case err == nil:
			failingSince, rep = time.Time{}, cur
		case ctx.Err() != nil:
		case errors.Is(err, api.ErrUnavailable) || !isAPIError(err):
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) > time.Minute {
				return rep, err
			}
		default:
			return rep, err
		}
	}
}

// drainVMLine says what became of one VM of a drain.
func drainVMLine(e api.DrainVM) string {
	switch {
	case e.Result == api.DrainMoved && e.How == api.DrainReassigned:
		return fmt.Sprintf("reassigned to %s (stopped; its disk is on a shared pool)", e.To)
	case e.Result == api.DrainMoved:
		return fmt.Sprintf("moved live to %s (downtime %d ms)", e.To, e.DowntimeMs)
	case e.Result == api.DrainFailed:
		return "failed: " + dash(e.Reason)
	case e.Result == api.DrainStayed:
		return "stayed: " + dash(e.Reason)
	case e.Result == api.DrainMigrating:
		return "moving live to " + e.To
	}
	return "pending: " + dash(e.Reason)
}

// drainSummaryLine is the result of a drain in one line.
func drainSummaryLine(rep api.DrainReport) string {
	t := rep.Tally()
	var took string
	if !rep.EndedAt.IsZero() {
		took = " in " + rep.EndedAt.Sub(rep.StartedAt).Round(100*time.Millisecond).String()
	}
	switch {
	case rep.State == api.DrainRunning:
		return fmt.Sprintf("drain of host %s under way: %s, %d to go", rep.Host, t.MovedOff(), t.Pending)
	case rep.Resumed:
		s := fmt.Sprintf("drain of host %s ended early%s, as the host was put back in service: %s", rep.Host, took, t.MovedOff())
		if t.Stayed+t.Failed > 0 {
			s += "; " + t.NotMoved()
		}
		return s
	case t.Stayed+t.Failed > 0:
		return fmt.Sprintf("drain of host %s done%s, but the host is NOT empty: %s (reasons above); %s", rep.Host, took, t.NotMoved(), t.MovedOff())
	case len(rep.VMs) == 0:
		return fmt.Sprintf("host %s drained: no VM was on it; it stays in maintenance until 'shoal host resume %s'", rep.Host, rep.Host)
	}
	return fmt.Sprintf("host %s drained%s: %s; it stays in maintenance until 'shoal host resume %s'", rep.Host, took, t.MovedOff(), rep.Host)
}
