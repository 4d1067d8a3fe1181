package server

import (
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestJudge walks the migration controller's decisions through scripts of
// looks: what the VM's spec and the migration's record say at each look,
// and what judge must decide.
func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := api.MigrationRecord{ID: "m1", VM: "web1", From: "host1", To: "host2", Result: api.MigrationRunning, StartedAt: t0}
	migrating := &api.VMSpec{Name: "web1", Host: "host1", Migration: &api.Migration{ID: "m1", Source: "host1", Target: "host2"}}
	ready := &api.VMSpec{Name: "web1", Host: "host1", Migration: &api.Migration{ID: "m1", Source: "host1", Target: "host2",
		Endpoint: &api.MigrationEndpoint{URI: "tunnel:x"}}}
	stayed := &api.VMSpec{Name: "web1", Host: "host1"}
	moved := &api.VMSpec{Name: "web1", Host: "host2"}
	both := map[string]bool{"host1": true, "host2": true}
	with := func(f func(*api.MigrationRecord)) api.MigrationRecord { r := rec; f(&r); return r }

	type look struct {
		at     time.Duration // after t0
		rec    api.MigrationRecord
		sp     *api.VMSpec
		alive  map[string]bool
		action int
		result string
		reason string // a part of it
	}
	for _, tc := range []struct {
		name  string
		looks []look
	}{
		{"taken out of the spec without a reason", []look{
			{at: time.Second, rec: rec, sp: migrating, alive: both, action: actWait},
			{at: 2 * time.Second, rec: rec, sp: stayed, alive: both, action: actEnd, result: api.MigrationFailed, reason: "called off"},
		}},
		{"cancelled: the record says why", []look{
			{at: time.Second, rec: rec, sp: ready, alive: both, action: actWait},
			{at: 2 * time.Second, rec: with(func(r *api.MigrationRecord) { r.Result, r.Error = api.MigrationCancelled, "cancelled by the user" }),
				sp: stayed, alive: both, action: actEnd, result: api.MigrationCancelled, reason: "cancelled by the user"},
		}},
		{"committed with the figures", []look{
			{at: time.Second, rec: rec, sp: ready, alive: both, action: actWait},
			{at: 2 * time.Second, rec: with(func(r *api.MigrationRecord) {
				r.SwitchMs, r.Progress = 30, &api.MigrationProgress{ID: "m1", Phase: api.MigrationCompleted}
			}), sp: moved, alive: both, action: actEnd, result: api.MigrationCompleted},
		}},
		{"committed, the figures never come", []look{
			{at: time.Second, rec: rec, sp: moved, alive: both, action: actWait},
			{at: time.Second + finalReportGrace, rec: rec, sp: moved, alive: both, action: actEnd, result: api.MigrationCompleted},
		}},
		{"failed over meanwhile", []look{
			{at: time.Second, rec: with(func(r *api.MigrationRecord) {
				r.Superseded, r.Result, r.Error = true, api.MigrationFailed, "host1 died; restarted on host3"
			}), sp: &api.VMSpec{Name: "web1", Host: "host3"}, alive: both, action: actEnd, result: api.MigrationFailed, reason: "restarted on host3"},
		}},
		{"the VM deleted", []look{
			{at: time.Second, rec: rec, sp: nil, alive: both, action: actEnd, result: api.MigrationFailed, reason: reasonDeleted},
		}},
		{"the target fails to prepare", []look{
			{at: time.Second, rec: rec, sp: &api.VMSpec{Name: "web1", Host: "host1", Migration: &api.Migration{ID: "m1", Target: "host2",
				Endpoint: &api.MigrationEndpoint{Error: "disk full"}}}, alive: both, action: actAbort, result: api.MigrationFailed, reason: "disk full"},
		}},
		{"the target host goes down", []look{
			{at: time.Second, rec: rec, sp: ready, alive: map[string]bool{"host1": true}, action: actWait},
			{at: time.Second + targetDownGrace, rec: rec, sp: ready, alive: map[string]bool{"host1": true},
				action: actAbort, result: api.MigrationFailed, reason: "target host host2 is down"},
		}},
		{"a target down for a moment is fine", []look{
			{at: time.Second, rec: rec, sp: ready, alive: map[string]bool{"host1": true}, action: actWait},
			{at: 2 * time.Second, rec: rec, sp: ready, alive: both, action: actWait},
			{at: time.Second + targetDownGrace, rec: rec, sp: ready, alive: map[string]bool{"host1": true}, action: actWait},
		}},
		{"no progress", []look{
			{at: time.Second, rec: rec, sp: ready, alive: both, action: actWait},
			{at: time.Second + stallTimeout, rec: rec, sp: ready, alive: both, action: actAbort, result: api.MigrationFailed, reason: "no progress"},
		}},
		{"source reports failure", []look{
			{at: time.Second, rec: with(func(r *api.MigrationRecord) {
				r.Progress = &api.MigrationProgress{ID: "m1", Phase: api.MigrationFailed, Error: "connection reset"}
			}), sp: ready, alive: both, action: actAbort, result: api.MigrationFailed, reason: "connection reset"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var wt watch
			for i, l := range tc.looks {
				v := judge(l.rec, l.sp, l.alive, &wt, t0.Add(l.at))
				if v.action != l.action || v.result != l.result || !strings.Contains(v.reason, l.reason) {
					t.Fatalf("look %d: %+v, want action %d result %q reason with %q", i, v, l.action, l.result, l.reason)
				}
			}
		})
	}
}

// TestFinishDowntime: the recorded downtime is the guest's pause from the
// source's stop to the target's resume, never less than QEMU's downtime
// plus the target's switch (which clocks out of step could suggest).
func TestFinishDowntime(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	stop := t0.Add(900 * time.Millisecond)
	for _, c := range []struct {
		name     string
		stopped  time.Time
		resumed  time.Time
		downtime int64
	}{
		{"no times", time.Time{}, time.Time{}, 30},
		{"target lagged", stop, stop.Add(85 * time.Millisecond), 85},
		{"clocks apart, pause too short", stop, stop.Add(10 * time.Millisecond), 30},
		{"clocks apart, resumed before stopped", stop, stop.Add(-time.Second), 30},
		{"clocks apart, pause longer than the migration", stop, stop.Add(time.Minute), 30},
		{"only the source's time", stop, time.Time{}, 30},
	} {
		r := api.MigrationRecord{Result: api.MigrationCompleted, StartedAt: t0, EndedAt: t0.Add(2 * time.Second),
			SwitchMs: 12, ResumedAt: c.resumed,
			Progress: &api.MigrationProgress{Phase: api.MigrationCompleted, DowntimeMs: 18, StoppedAt: c.stopped, Moved: 5}}
		finish(&r)
		if r.DowntimeMs != c.downtime || r.TotalMs != 2000 || r.Bytes != 5 || r.Progress != nil {
			t.Errorf("%s: downtime %d ms, total %d ms, bytes %d, progress %v; want downtime %d ms", c.name, r.DowntimeMs, r.TotalMs, r.Bytes, r.Progress, c.downtime)
		}
	}
}
