package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

// followEvery is how often 'shoal events --follow' asks for new events.
const followEvery = time.Second

func eventsCmd(g *globals) *cobra.Command {
	var q client.EventQuery
	var follow bool
	cmd := &cobra.Command{
		Use:   "events [--vm NAME] [--host NAME] [--since 10m] [--limit N] [--follow]",
		Short: "Show the cluster's event log: migrations, drains, hosts going in and out of service",
		Long: `Show the cluster's event log, oldest first: live migrations (started, completed
with their downtime, failed or cancelled with the reason), host drains and
what became of each VM, hosts put back in service. Events are kept for a
week (the last thousand or so). --host matches both ends of a migration.
--follow keeps printing new events until Ctrl-C; with -o json it prints
one JSON object per line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if q.Since != "" {
				if err := checkSince(q.Since); err != nil {
					return err
				}
			}
			if q.Limit < 1 || q.Limit > 1000 {
				return fmt.Errorf("--limit %d is out of range: use 1 to 1000", q.Limit)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if !follow {
				evs, err := c.Events(cmd.Context(), q)
				if err != nil {
					return err
				}
				return g.print(evs, func(w *tabwriter.Writer) {
					fmt.Fprintln(w, "TIME\tKIND\tHOST\tVM\tMESSAGE")
					for _, e := range evs {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", eventTime(e.Time), e.Kind, eventHost(e), dash(e.VM), e.Message)
					}
				})
			}
			ctx, stop := signalContext()
			defer stop()
			return followEvents(ctx, c, q, g.output == "json")
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.VM, "vm", "", "only events about this VM")
	f.StringVar(&q.Host, "host", "", "only events about this host")
	f.StringVar(&q.Since, "since", "", "only events since then: a duration back from now (10m, 2h) or a time (2025-01-02T15:04:05Z)")
	f.IntVar(&q.Limit, "limit", 50, "show at most the newest N events")
	f.BoolVar(&follow, "follow", false, "keep printing new events until Ctrl-C")
	return cmd
}

func checkSince(s string) error {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return nil
	}
	if _, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return nil
	}
	return fmt.Errorf("--since %q: use a duration back from now such as 10m, or a time such as 2025-01-02T15:04:05Z", s)
}

// followEvents prints the events of q, then the new ones every second,
// until ctx ends (Ctrl-C). It rides out a server that is briefly away.
func followEvents(ctx context.Context, c *client.Client, q client.EventQuery, asJSON bool) error {
	enc := json.NewEncoder(os.Stdout)
	if !asJSON {
		fmt.Printf("%-19s  %-19s  %-13s  %-12s  %s\n", "TIME", "KIND", "HOST", "VM", "MESSAGE")
	}
	var failingSince time.Time
	for {
		evs, err := c.Events(ctx, q)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			failingSince = time.Time{}
		case errors.Is(err, api.ErrUnavailable) || !isAPIError(err):
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) > time.Minute {
				return err
			}
		default:
			return err
		}
		for _, e := range evs {
			if asJSON {
				if err := enc.Encode(e); err != nil {
					return err
				}
			} else {
				fmt.Printf("%-19s  %-19s  %-13s  %-12s  %s\n", eventTime(e.Time), e.Kind, eventHost(e), dash(e.VM), e.Message)
			}
			q.After = e.ID
		}
		if q.After != "" {
			q.Since, q.Limit = "", 1000 // page forward from the last one printed
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followEvery):
		}
	}
}

func eventTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

// eventHost is the host of an event, and the target of a move.
func eventHost(e api.Event) string {
	if e.To != "" {
		return dash(e.Host) + "->" + e.To
	}
	return dash(e.Host)
}
