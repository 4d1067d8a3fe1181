package server

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// announce records the events of one look at a drain: one per VM whose
// result became final, and the drain's end.
func (d *drainer) announce(ctx context.Context, before, after api.DrainReport) {
	final := map[string]bool{}
	for _, e := range before.VMs {
		if e.Final() {
			final[e.Name+"/"+e.ID] = true
		}
	}
	for _, e := range after.VMs {
		if e.Final() && !final[e.Name+"/"+e.ID] {
			d.ev.record(ctx, drainVMEvent(after.Host, e))
		}
	}
	if after.State == api.DrainDone {
		d.ev.record(ctx, drainDoneEvent(after))
	}
}

// drainVMEvent is the event of VM e's final result in a drain of host. Pure.
func drainVMEvent(host string, e api.DrainVM) api.Event {
	ev := api.Event{Kind: api.EventDrainVM, VM: e.Name, Host: host}
	switch {
	case e.Result == api.DrainMoved && e.How == api.DrainReassigned:
		ev.Severity, ev.To = api.SeverityInfo, e.To
		ev.Message = fmt.Sprintf("drain of %s: stopped vm %s reassigned to %s (its disk is on a shared pool)", host, e.Name, e.To)
	case e.Result == api.DrainMoved:
		ev.Severity, ev.To = api.SeverityInfo, e.To
		ev.Figures = map[string]int64{"downtime_ms": e.DowntimeMs}
		ev.Message = fmt.Sprintf("drain of %s: vm %s moved live to %s (downtime %d ms)", host, e.Name, e.To, e.DowntimeMs)
	case e.Result == api.DrainFailed:
		ev.Severity, ev.To = api.SeverityError, e.To
		ev.Message = fmt.Sprintf("drain of %s: vm %s failed to move: %s", host, e.Name, e.Reason)
	default:
		ev.Severity = api.SeverityWarning
		ev.Message = fmt.Sprintf("drain of %s: vm %s stays: %s", host, e.Name, e.Reason)
	}
	return ev
}

// drainDoneEvent is the event of a drain's end, with its summary. Pure.
func drainDoneEvent(rep api.DrainReport) api.Event {
	t := rep.Tally()
	ev := api.Event{Kind: api.EventDrainDone, Severity: api.SeverityInfo, Host: rep.Host,
		Figures: map[string]int64{"moved": int64(t.Moved()), "live": int64(t.Live), "reassigned": int64(t.Reassigned),
			"stayed": int64(t.Stayed), "failed": int64(t.Failed), "total_ms": rep.EndedAt.Sub(rep.StartedAt).Milliseconds()}}
	ev.Message = drainSummary(rep)
	if t.Stayed+t.Failed > 0 {
		ev.Severity = api.SeverityWarning
	}
	return ev
}

// drainSummary is a finished drain in one line that says what to do
// next. Pure.
func drainSummary(rep api.DrainReport) string {
	t := rep.Tally()
	took := rep.EndedAt.Sub(rep.StartedAt).Round(100 * time.Millisecond)
	switch {
	case rep.Resumed:
		s := fmt.Sprintf("drain of %s ended early after %s, as the host was put back in service: %s", rep.Host, took, t.MovedOff())
		if t.Stayed+t.Failed > 0 {
			s += "; " + t.NotMoved()
		}
		return s
	case t.Stayed+t.Failed > 0:
		return fmt.Sprintf("drain of %s done after %s, but the host is NOT empty: %s (see why with 'shoal host drain %s --follow'); %s. Do what the reasons say and drain again",
			rep.Host, took, t.NotMoved(), rep.Host, t.MovedOff())
	case len(rep.VMs) == 0:
		return fmt.Sprintf("drain of %s done: no VM was on it; it stays in maintenance until 'shoal host resume %s'", rep.Host, rep.Host)
	}
	return fmt.Sprintf("drain of %s done in %s: %s; it stays in maintenance until 'shoal host resume %s'", rep.Host, took, t.MovedOff(), rep.Host)
}

// reportBytes is a report's stored form, to tell whether it changed.
func reportBytes(r api.DrainReport) (string, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("encode drain report: %w", err)
	}
	return string(b), nil
}
