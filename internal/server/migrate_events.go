package server

import (
	"fmt"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// migrationStartEvent is the event of a live migration just requested. Pure.
func migrationStartEvent(rec api.MigrationRecord, pool string) api.Event {
	how := fmt.Sprintf("its disk stays on shared pool %q", pool)
	if !rec.Shared {
		how = "its local disk is copied along"
	}
	if rec.Insecure {
		how += ", stream unencrypted"
	}
	return api.Event{Kind: api.EventMigrationStarted, Severity: api.SeverityInfo, VM: rec.VM, Host: rec.From, To: rec.To,
		Message: fmt.Sprintf("live migration of vm %s from %s to %s started (%s)", rec.VM, rec.From, rec.To, how)}
}

// migrationEndEvent is the event of a live migration's end, from its final
// record. Pure.
func migrationEndEvent(rec api.MigrationRecord) api.Event {
	e := api.Event{VM: rec.VM, Host: rec.From, To: rec.To,
		Figures: map[string]int64{"total_ms": rec.TotalMs, "bytes": rec.Bytes}}
	took := (time.Duration(rec.TotalMs) * time.Millisecond).Round(10 * time.Millisecond)
	switch rec.Result {
	case api.MigrationCompleted:
		e.Kind, e.Severity = api.EventMigrationCompleted, api.SeverityInfo
		e.Figures["downtime_ms"] = rec.DowntimeMs
		e.Message = fmt.Sprintf("vm %s moved live from %s to %s in %s: downtime %d ms, %s of memory moved",
			rec.VM, rec.From, rec.To, took, rec.DowntimeMs, humanBytes(rec.Bytes))
		if rec.DiskBytes > 0 {
			e.Figures["disk_bytes"] = rec.DiskBytes
			e.Message += fmt.Sprintf(", and %s of disk", humanBytes(rec.DiskBytes))
		}
		if rec.Postcopy {
			e.Message += " (it finished in post-copy)"
		}
	case api.MigrationCancelled:
		e.Kind, e.Severity = api.EventMigrationCancelled, api.SeverityWarning
		e.Message = fmt.Sprintf("live migration of vm %s from %s to %s cancelled after %s (%s); it still runs on %s",
			rec.VM, rec.From, rec.To, took, dashIf(rec.Error), rec.From)
	default:
		e.Kind, e.Severity = api.EventMigrationFailed, api.SeverityError
		e.Message = fmt.Sprintf("live migration of vm %s from %s to %s failed after %s: %s", rec.VM, rec.From, rec.To, took, dashIf(rec.Error))
		if rec.Error != reasonDeleted {
			e.Message += fmt.Sprintf("; it still runs on %s: see 'shoal vm show %s', fix the cause and retry with 'shoal vm migrate %s'",
				rec.From, rec.VM, rec.VM)
		}
	}
	return e
}

// humanBytes renders a byte count for people: 1.5 KiB, 90.7 MiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= 1024 && i < 4 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}
