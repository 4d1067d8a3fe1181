package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

func vmMigrateCmd(g *globals) *cobra.Command {
	var req api.MigrateRequest
	var downtime, postcopy time.Duration
	var bandwidth string
	var cancelIt, follow, noWait bool
	cmd := &cobra.Command{
		Use:   "migrate NAME [--to HOST]",
		Short: "Move a running VM to another host without stopping it (live migration)",
		Long: `Move a running VM to another host while it keeps running and serving.
Disks on a shared pool stay where they are; disks on a host's local pool are
copied to the target while the VM runs. The stream between hosts is encrypted
with the cluster's certificates unless --insecure. Without --to, the
scheduler picks the target. The command shows progress and waits; Ctrl-C
stops watching (the migration goes on); --cancel from any terminal calls it
off, and the VM keeps running where it was.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			if cancelIt {
				rec, err := c.CancelMigration(ctx, name)
				if err != nil {
					return err
				}
				return g.print(rec, func(w *tabwriter.Writer) {
					fmt.Fprintf(w, "migration of vm %s to %s cancelled; it runs on %s\n", name, rec.To, rec.From)
				})
			}
			var rec api.MigrationRecord
			if follow {
				if rec, err = c.Migration(ctx, name); err != nil {
					return err
				}
			} else {
				if downtime < time.Millisecond {
					return fmt.Errorf("--downtime %s is too short: use 1ms or more", downtime)
				}
				req.DowntimeMs = downtime.Milliseconds()
				req.PostcopyAfterMs = postcopy.Milliseconds()
				if bandwidth != "" {
					b, err := api.ParseSize(bandwidth)
					if err != nil {
						return fmt.Errorf("--bandwidth: %w", err)
					}
					req.BandwidthBytes = b
				}
				if rec, err = c.MigrateVM(ctx, name, req); err != nil {
					return err
				}
				if noWait {
					return g.print(rec, func(w *tabwriter.Writer) {
						fmt.Fprintf(w, "migration of vm %s from %s to %s started (id %s)\n", name, rec.From, rec.To, rec.ID)
					})
				}
			}
			if g.output == "table" {
				fmt.Fprintf(os.Stderr, "migrating vm %s from %s to %s\n", name, rec.From, rec.To)
			}
			rec, err = watchMigration(ctx, c, name, rec, g.output == "table")
			if err != nil {
				return err
			}
			if perr := g.print(rec, func(w *tabwriter.Writer) { fmt.Fprintln(w, migrationSummary(rec)) }); perr != nil {
				return perr
			}
			if rec.Result != api.MigrationCompleted {
				return fmt.Errorf("migration of vm %s to %s %s: %s; it still runs on %s", name, rec.To, rec.Result, dash(rec.Error), rec.From)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.To, "to", "", "target host (default: the scheduler picks)")
	f.BoolVar(&req.Insecure, "insecure", false, "send the migration stream unencrypted (trusted networks only)")
	f.DurationVar(&downtime, "downtime", 50*time.Millisecond, "longest pause of the VM QEMU may plan for at the switch")
	f.StringVar(&bandwidth, "bandwidth", "", "cap the stream, bytes per second (e.g. 500M); default unlimited")
	f.BoolVar(&req.AutoConverge, "auto-converge", true, "slow down the VM's CPUs if it dirties memory faster than it moves")
	f.DurationVar(&postcopy, "postcopy-after", 0, "switch to post-copy if pre-copy has not converged after this long (0 = never)")
	f.BoolVar(&cancelIt, "cancel", false, "cancel the VM's migration in flight")
	f.BoolVar(&follow, "follow", false, "watch the VM's migration in flight instead of starting one")
	f.BoolVar(&noWait, "no-wait", false, "start the migration and return")
	return cmd
}

// watchMigration follows migration rec until it ends, drawing progress
// on stderr, and returns its final record. It rides out a server restart.
func watchMigration(ctx context.Context, c *client.Client, name string, rec api.MigrationRecord, show bool) (api.MigrationRecord, error) {
	tty := show && term.IsTerminal(int(os.Stderr.Fd()))
	var lastLine string
	var lastPrint time.Time
	var failingSince time.Time
	began := time.Now()
	etag := ""
	for {
		// The server answers when the record changes (or after the
		// wait); one that does not tag records answers at once.
		cur, next, changed, err := c.MigrationChange(ctx, name, etag, migrationWait)
		switch {
		case err == nil:
			failingSince = time.Time{}
			etag = next
			if changed && cur.ID == rec.ID {
				rec = cur
			}
		case ctx.Err() != nil:
			return rec, fmt.Errorf("stopped watching; the migration goes on (see 'shoal vm migrate %s --follow', or --cancel)", name)
		case errors.Is(err, api.ErrUnavailable) || !isAPIError(err):
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) > time.Minute {
				return rec, err
			}
		default:
			return rec, err
		}
		if rec.Result != api.MigrationRunning {
			if tty && lastLine != "" {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			return rec, nil
		}
		if show {
			line := progressLine(rec.Progress)
			switch {
			case tty && line != lastLine:
				fmt.Fprint(os.Stderr, "\r\033[K"+line)
			case !tty && line != lastLine && time.Since(lastPrint) >= time.Second:
				fmt.Fprintln(os.Stderr, line)
				lastPrint = time.Now()
			}
			lastLine = line
		}
		if err == nil && etag != "" {
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(pollEvery(time.Since(began))):
		}
	}
}

// migrationWait is how long one request of watchMigration waits for a
// change of the migration.
const migrationWait = 10 * time.Second

// pollEvery is how often the CLI asks about a migration that has run for
// so long, when the server cannot say when it changes (or is away):
// often at first, when most migrations end, to report the end at once;
// then gently.
func pollEvery(running time.Duration) time.Duration {
	if running < 10*time.Second {
		return 20 * time.Millisecond
	}
	return 250 * time.Millisecond
}

// isAPIError reports whether err is an answer of the server (as opposed
// to the server being unreachable).
func isAPIError(err error) bool {
	for _, k := range []error{api.ErrInvalid, api.ErrNotFound, api.ErrConflict, api.ErrUnauthorized, api.ErrForbidden, api.ErrCapacity} {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

// progressLine renders a migration's progress in one line.
func progressLine(p *api.MigrationProgress) string {
	if p == nil {
		return "preparing the target..."
	}
	var b strings.Builder
	switch {
	case p.Phase == "disks":
		fmt.Fprintf(&b, "disks   %3d%%  %s of %s", pct(p.DiskDone, p.DiskLen), bytesIEC(p.DiskDone), bytesIEC(p.DiskLen))
	default:
		fmt.Fprintf(&b, "%-7s %3d%%  transferred %s  remaining %s  dirty %s/s  %.0f Mbit/s", p.Phase,
			pct(p.Total-p.Left, p.Total), bytesIEC(p.Moved), bytesIEC(p.Left), bytesIEC(p.DirtyBps), p.Mbps)
		if p.ETAMs > 0 {
			fmt.Fprintf(&b, "  ETA %s", (time.Duration(p.ETAMs) * time.Millisecond).Round(100*time.Millisecond))
		}
		if p.Throttle > 0 {
			fmt.Fprintf(&b, "  CPU throttle %d%%", p.Throttle)
		}
	}
	return b.String()
}

func pct(a, b int64) int {
	if b <= 0 {
		return 0
	}
	return int(min(max(a*100/b, 0), 100))
}

// migrationSummary is the one-line result of a migration.
func migrationSummary(r api.MigrationRecord) string {
	if r.Result != api.MigrationCompleted {
		return fmt.Sprintf("migration of vm %s from %s to %s %s after %s: %s", r.VM, r.From, r.To, r.Result, msText(r.TotalMs), dash(r.Error))
	}
	s := fmt.Sprintf("vm %s migrated from %s to %s in %s: downtime %d ms, %s moved", r.VM, r.From, r.To, msText(r.TotalMs), r.DowntimeMs, bytesIEC(r.Bytes))
	if r.DiskBytes > 0 {
		s += fmt.Sprintf(" (+ disk %s)", bytesIEC(r.DiskBytes))
	}
	if r.Postcopy {
		s += ", post-copy"
	}
	if r.Insecure {
		s += ", unencrypted"
	}
	return s
}

func msText(v int64) string {
	return (time.Duration(v) * time.Millisecond).Round(10 * time.Millisecond).String()
}

// bytesIEC renders a byte count for people: 1.5 KiB, 90.7 MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}
