package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// running, stopped... build drain candidates for the planner's tests.
func cand(name, state, power, pool string) drainCand {
	return drainCand{Name: name, ID: "id-" + name, State: state, Power: power, Pool: pool, Settled: true}
}

func running(name string) drainCand {
	return cand(name, api.StateRunning, api.PowerRunning, "local")
}

func pending(name string) api.DrainVM {
	return api.DrainVM{Name: name, ID: "id-" + name, Result: api.DrainPending}
}

func migrating(name, mig string) api.DrainVM {
	return api.DrainVM{Name: name, ID: "id-" + name, Result: api.DrainMigrating, How: api.DrainLive, To: "host2", Migration: mig}
}

func TestPlanDrain(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		parallel int
		vms      []api.DrainVM // the report so far
		cands    []drainCand
		outcomes map[string]migOutcome
		resumed  bool
		now      time.Time
		migrate  []string
		reassign []string
		// want is each VM of the report: "name result" and, after a
		// colon, a part of its reason.
		want []string
	}{
		{
			name: "first look: at most parallel migrations, the rest wait their turn", parallel: 2,
			cands:   []drainCand{running("c"), running("a"), running("b")},
			migrate: []string{"a", "b"},
			want:    []string{"a pending", "b pending", "c pending: waits for its turn (2 live"},
		},
		{
			name:    "parallel 0 means one at a time",
			cands:   []drainCand{running("a"), running("b")},
			migrate: []string{"a"},
			want:    []string{"a pending", "b pending: waits for its turn (1 live"},
		},
		{
			name: "migrations in flight count against parallel", parallel: 2,
			vms:      []api.DrainVM{migrating("a", "m1"), pending("b"), pending("c")},
			cands:    []drainCand{func() drainCand { c := running("a"); c.Migrating = true; return c }(), running("b"), running("c")},
			outcomes: map[string]migOutcome{"m1": {Running: true}},
			migrate:  []string{"b"},
			want:     []string{"a migrating", "b pending", "c pending: waits for its turn"},
		},
		{
			name: "a migration not looked up counts as in flight", parallel: 1,
			vms:   []api.DrainVM{migrating("a", "m1"), pending("b")},
			cands: []drainCand{running("b")},
			want:  []string{"a migrating", "b pending: waits for its turn"},
		},
		{
			name: "ended migrations: completed moves, failed stays with the reason", parallel: 2,
			vms:   []api.DrainVM{migrating("a", "m1"), migrating("b", "m2")},
			cands: []drainCand{running("b")},
			outcomes: map[string]migOutcome{
				"m1": {Rec: api.MigrationRecord{ID: "m1", Result: api.MigrationCompleted, From: "host1", To: "host3", DowntimeMs: 41}},
				"m2": {Rec: api.MigrationRecord{ID: "m2", Result: api.MigrationFailed, From: "host1", To: "host2", Error: "no progress for 30s"}},
			},
			want: []string{"a moved", "b failed: live migration to host2 failed: no progress for 30s; it still runs on host1"},
		},
		{
			name: "VM deleted mid-drain: pending and migrating entries go", parallel: 2,
			vms:      []api.DrainVM{migrating("a", "m1"), pending("b"), pending("c")},
			cands:    []drainCand{func() drainCand { c := running("c"); c.Deleting = true; return c }()},
			outcomes: map[string]migOutcome{"m1": {Gone: true}},
			want:     []string{},
		},
		{
			name: "a VM replaced by another of the same name is a new entry", parallel: 2,
			vms:     []api.DrainVM{pending("a")},
			cands:   []drainCand{func() drainCand { c := running("a"); c.ID = "id-new"; return c }()},
			migrate: []string{"a"},
			want:    []string{"a pending"},
		},
		{
			name: "not settled: waits, and the wait starts now", parallel: 2,
			cands: []drainCand{func() drainCand { c := running("a"); c.Settled, c.State = false, api.StateStarting; return c }()},
			want:  []string{"a pending: it is starting"},
		},
		{
			name: "not settled for too long: stays", parallel: 2,
			vms:   []api.DrainVM{func() api.DrainVM { e := pending("a"); e.Since = t0.Add(-drainPatience); return e }()},
			cands: []drainCand{func() drainCand { c := running("a"); c.Settled, c.State = false, api.StateStopping; return c }()},
			want:  []string{"a stayed: it was stopping for 2m0s"},
		},
		{
			name: "a move refused for a while is retried", parallel: 2,
			vms: []api.DrainVM{func() api.DrainVM {
				e := pending("a")
				e.RetrySince, e.Reason = t0.Add(-time.Minute), "changed meanwhile"
				return e
			}()},
			cands:   []drainCand{running("a")},
			migrate: []string{"a"},
			want:    []string{"a pending: changed meanwhile"},
		},
		{
			name: "a move refused for too long: stays, saying why", parallel: 2,
			vms: []api.DrainVM{func() api.DrainVM {
				e := pending("a")
				e.RetrySince, e.Reason = t0.Add(-drainPatience), "changed meanwhile"
				return e
			}()},
			cands: []drainCand{running("a")},
			want:  []string{"a stayed: its move was refused for 2m0s, last because: changed meanwhile"},
		},
		{
			name: "stopped VMs: reassigned on a shared pool, stay on a local one", parallel: 1,
			cands: []drainCand{
				cand("s1", api.StateStopped, api.PowerStopped, "shared"),
				cand("s2", api.StateStopped, api.PowerStopped, "shared"),
				cand("l1", api.StateStopped, api.PowerStopped, "local"),
			},
			reassign: []string{"s1", "s2"},
			want:     []string{"l1 stayed: with its disk on the local pool of host1", "s1 pending", "s2 pending"},
		},
		{
			name: "paused and failed VMs stay", parallel: 2,
			cands: []drainCand{
				cand("p", api.StatePaused, api.PowerPaused, "local"),
				func() drainCand {
					c := cand("f", api.StateFailed, api.PowerRunning, "local")
					c.Error = "qemu exited"
					return c
				}(),
			},
			want: []string{"f stayed: it has failed on host1 (qemu exited)", "p stayed: it is paused"},
		},
		{
			name: "migrating VMs wait: someone else's, and one coming in", parallel: 2,
			cands: []drainCand{
				func() drainCand { c := running("m"); c.Migrating = true; return c }(),
				func() drainCand { c := running("in"); c.Migrating, c.Inbound = true, true; return c }(),
			},
			want: []string{"in pending: migrating onto this host", "m pending: a migration of it is under way"},
		},
		{
			name: "resumed mid-drain: no new moves, in-flight ones go on, newcomers are ignored", parallel: 2, resumed: true,
			vms: []api.DrainVM{migrating("a", "m1"), pending("b")},
			cands: []drainCand{
				func() drainCand { c := running("a"); c.Migrating = true; return c }(), running("b"), running("new"),
				func() drainCand { c := running("in"); c.Migrating, c.Inbound = true, true; return c }(),
			},
			outcomes: map[string]migOutcome{"m1": {Running: true}},
			want:     []string{"a migrating", "b stayed: was put back in service"},
		},
		{
			name: "finished entries stay as they are", parallel: 2,
			vms:   []api.DrainVM{{Name: "a", ID: "id-a", Result: api.DrainMoved, How: api.DrainLive, To: "host2"}, {Name: "b", ID: "id-b", Result: api.DrainStayed, Reason: "x"}},
			cands: []drainCand{cand("b", api.StatePaused, api.PowerPaused, "local")},
			want:  []string{"a moved", "b stayed: x"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			in := drainInput{Report: api.DrainReport{Host: "host1", State: api.DrainRunning, Parallel: tc.parallel, VMs: tc.vms},
				VMs: tc.cands, Outcomes: tc.outcomes, Resumed: tc.resumed, Now: now}
			before := fmt.Sprint(tc.vms)
			plan := planDrain(in)
			if fmt.Sprint(tc.vms) != before {
				t.Errorf("planDrain changed its input")
			}
			if !slices.Equal(plan.Migrate, tc.migrate) || !slices.Equal(plan.Reassign, tc.reassign) {
				t.Errorf("migrate %v reassign %v, want %v %v", plan.Migrate, plan.Reassign, tc.migrate, tc.reassign)
			}
			if plan.Report.Resumed != tc.resumed {
				t.Errorf("report resumed %v", plan.Report.Resumed)
			}
			if len(plan.Report.VMs) != len(tc.want) {
				t.Fatalf("report %+v, want %v", plan.Report.VMs, tc.want)
			}
			for i, e := range plan.Report.VMs {
				head, reason, _ := strings.Cut(tc.want[i], ": ")
				if got := e.Name + " " + e.Result; got != head || !strings.Contains(e.Reason, reason) {
					t.Errorf("vm %d: %s (reason %q), want %s: %s", i, got, e.Reason, head, reason)
				}
				if e.Result == api.DrainPending && strings.HasPrefix(e.Reason, "it is ") && !strings.Contains(e.Reason, "onto") && !e.Since.Equal(now) {
					t.Errorf("vm %s waits since %v, want now", e.Name, e.Since)
				}
			}
		})
	}
}

func TestDrainMoveOutcomes(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	rep := api.DrainReport{Host: "host1", State: api.DrainRunning, Parallel: 2}
	in := func(vms []api.DrainVM, now time.Time) drainPlan {
		return planDrain(drainInput{Report: api.DrainReport{Host: rep.Host, State: rep.State, Parallel: rep.Parallel, VMs: vms},
			VMs: []drainCand{running("a")}, Now: now})
	}
	// A refusal for a passing reason: retried on the next looks, given
	// up after drainPatience.
	p := in(nil, t0)
	e := p.Report.VMs[0]
	afterStart(&e, api.MigrationRecord{}, api.Errorf(api.ErrConflict, `vm "a" changed meanwhile, try again`), t0)
	if e.Result != api.DrainPending || !e.RetrySince.Equal(t0) {
		t.Fatalf("after a conflict: %+v", e)
	}
	afterStart(&e, api.MigrationRecord{}, api.Errorf(api.ErrUnavailable, "etcd is away"), t0.Add(time.Minute))
	if !e.RetrySince.Equal(t0) || e.Reason != "etcd is away" {
		t.Fatalf("a second refusal moved the retry start: %+v", e)
	}
	if p := in([]api.DrainVM{e}, t0.Add(drainPatience-time.Second)); len(p.Migrate) != 1 {
		t.Fatalf("not retried within patience: %+v", p)
	}
	p = in([]api.DrainVM{e}, t0.Add(drainPatience))
	if got := p.Report.VMs[0]; len(p.Migrate) != 0 || got.Result != api.DrainStayed || !strings.Contains(got.Reason, "etcd is away") {
		t.Fatalf("not given up after patience: %+v", p)
	}

	// Any other refusal is final.
	e = pending("a")
	afterStart(&e, api.MigrationRecord{}, api.Errorf(api.ErrCapacity, `no host fits vm "a": host2: in maintenance`), t0)
	if e.Result != api.DrainStayed || !strings.Contains(e.Reason, "no host fits") {
		t.Fatalf("after no capacity: %+v", e)
	}

	// A start: migrating, retry marks cleared.
	e = pending("a")
	e.RetrySince, e.Reason = t0, "x"
	afterStart(&e, api.MigrationRecord{ID: "m1", To: "host2"}, nil, t0)
	if e.Result != api.DrainMigrating || e.Migration != "m1" || e.To != "host2" || !e.RetrySince.IsZero() || e.Reason != "" {
		t.Fatalf("after a start: %+v", e)
	}
	e = pending("s")
	afterReassign(&e, "host3", nil, t0)
	if e.Result != api.DrainMoved || e.How != api.DrainReassigned || e.To != "host3" {
		t.Fatalf("after a reassignment: %+v", e)
	}

	if !drainOver(api.DrainReport{}) || drainOver(api.DrainReport{VMs: []api.DrainVM{migrating("a", "m")}}) ||
		!drainOver(api.DrainReport{VMs: []api.DrainVM{{Result: api.DrainMoved}, {Result: api.DrainFailed}, {Result: api.DrainStayed}}}) {
		t.Errorf("drainOver is wrong")
	}
}

func TestJudgeDrainVM(t *testing.T) {
	tests := []struct {
		c       drainCand
		resumed bool
		act     int
		reason  string
	}{
		{running("a"), false, vmMigrate, ""},
		{running("a"), true, vmStay, "put back in service"},
		{func() drainCand { c := running("a"); c.Deleting = true; return c }(), false, vmSkip, ""},
		{func() drainCand { c := running("a"); c.Inbound, c.Migrating = true, true; return c }(), true, vmSkip, ""},
		{func() drainCand { c := running("a"); c.Inbound, c.Migrating = true, true; return c }(), false, vmWaitMig, "onto this host"},
		{cand("p", api.StatePaused, api.PowerPaused, "shared"), false, vmStay, "shoal vm resume p"},
		{func() drainCand { c := running("a"); c.Settled = false; return c }(), false, vmWait, "it is running"},
		{cand("s", api.StateStopped, api.PowerStopped, "shared"), false, vmReassign, ""},
		{cand("s", api.StateStopped, api.PowerStopped, "local"), false, vmStay, "shoal host resume host1"},
		{cand("s", api.StateStopping, api.PowerStopped, "shared"), false, vmWait, "it is stopping"},
		{cand("f", api.StateFailed, api.PowerRunning, "local"), false, vmStay, "shoal vm start f"},
	}
	for i, tc := range tests {
		act, reason := judgeDrainVM(tc.c, "host1", tc.resumed)
		if act != tc.act || !strings.Contains(reason, tc.reason) || (tc.reason == "") != (reason == "") {
			t.Errorf("%d (%+v resumed %v): %d %q, want %d %q", i, tc.c, tc.resumed, act, reason, tc.act, tc.reason)
		}
	}
}

func TestDrainCandOf(t *testing.T) {
	sp := api.VMSpec{Name: "a", ID: "1", Host: "host1", Power: api.PowerRunning, Pool: "local", Rev: 10}
	st := &api.VMStatus{ID: "1", Host: "host1", State: api.StateRunning, ObservedRev: 10}
	if c := drainCandOf(sp, st, "host1"); !c.Settled || c.Inbound || c.Migrating || c.State != api.StateRunning {
		t.Errorf("settled running VM: %+v", c)
	}
	old := *st
	old.ObservedRev = 9
	if c := drainCandOf(sp, &old, "host1"); c.Settled {
		t.Errorf("a report on an older spec settles: %+v", c)
	}
	if c := drainCandOf(sp, nil, "host1"); c.Settled || c.State != api.StateCreating {
		t.Errorf("no report: %+v", c)
	}
	in := sp
	in.Host, in.Migration = "host2", &api.Migration{ID: "m", Source: "host2", Target: "host1"}
	if c := drainCandOf(in, st, "host1"); !c.Inbound || !c.Migrating || c.Settled || c.State != api.StateMigrating {
		t.Errorf("inbound VM: %+v", c)
	}
}
