package server

import (
	"errors"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func TestApplyAction(t *testing.T) {
	const (
		run   = api.PowerRunning
		stop  = api.PowerStopped
		pause = api.PowerPaused
	)
	type want struct {
		err    error  // kind; nil for success
		msg    string // exact message for errors
		power  string
		forced bool
		gen    int
		// the VM views the returned condition must accept and reject
		accept []api.VM
		reject []api.VM
	}
	vm := func(state string, gen int) api.VM { return api.VM{State: state, RestartGen: gen} }
	tests := []struct {
		name   string
		power  string
		forced bool // StopForce before
		gen    int  // RestartGen before
		state  string
		action string
		force  bool
		want   want
	}{
		{"start stopped", stop, false, 0, api.StateStopped, "start", false,
			want{power: run, accept: []api.VM{vm("running", 0)}, reject: []api.VM{vm("stopped", 0), vm("starting", 0), vm("failed", 0)}}},
		{"start clears a pending forced stop", stop, true, 0, api.StateStopping, "start", false,
			want{power: run, accept: []api.VM{vm("running", 0)}}},
		{"start ignores force", stop, false, 0, api.StateStopped, "start", true,
			want{power: run, forced: false, accept: []api.VM{vm("running", 0)}}},
		{"start running", run, false, 0, api.StateRunning, "start", false,
			want{err: api.ErrConflict, msg: `vm "web1" is already running`, power: run}},
		{"start while starting", run, false, 0, api.StateStarting, "start", false,
			want{err: api.ErrConflict, msg: `vm "web1" is already running`, power: run}},
		{"start after a failure retries", run, false, 0, api.StateFailed, "start", false,
			want{power: run, accept: []api.VM{vm("running", 0)}, reject: []api.VM{vm("failed", 0)}}},
		{"start paused", pause, false, 0, api.StatePaused, "start", false,
			want{err: api.ErrConflict, msg: `vm "web1" is paused: use 'shoal vm resume web1'`, power: pause}},

		{"stop running", run, false, 0, api.StateRunning, "stop", false,
			want{power: stop, accept: []api.VM{vm("stopped", 0)}, reject: []api.VM{vm("running", 0), vm("stopping", 0)}}},
		{"forced stop running", run, false, 0, api.StateRunning, "stop", true,
			want{power: stop, forced: true, accept: []api.VM{vm("stopped", 0)}}},
		{"stop paused", pause, false, 0, api.StatePaused, "stop", false,
			want{power: stop, accept: []api.VM{vm("stopped", 0)}}},
		{"stop stopped", stop, false, 0, api.StateStopped, "stop", false,
			want{err: api.ErrConflict, msg: `vm "web1" is already stopped`, power: stop}},
		{"stop while an ACPI stop is pending", stop, false, 0, api.StateStopping, "stop", false,
			want{err: api.ErrConflict, msg: `vm "web1" is already stopped`, power: stop}},
		{"forced stop escalates a pending stop", stop, false, 0, api.StateStopping, "stop", true,
			want{power: stop, forced: true, accept: []api.VM{vm("stopped", 0)}}},

		{"restart running", run, false, 3, api.StateRunning, "restart", false,
			want{power: run, gen: 4, accept: []api.VM{vm("running", 4), vm("running", 5)},
				reject: []api.VM{vm("running", 3), vm("starting", 4), vm("stopped", 4)}}},
		{"forced restart", run, false, 0, api.StateRunning, "restart", true,
			want{power: run, forced: true, gen: 1, accept: []api.VM{vm("running", 1)}, reject: []api.VM{vm("running", 0)}}},
		{"restart paused", pause, false, 0, api.StatePaused, "restart", false,
			want{power: run, gen: 1, accept: []api.VM{vm("running", 1)}}},
		{"restart stopped", stop, false, 2, api.StateStopped, "restart", false,
			want{err: api.ErrConflict, msg: `vm "web1" is stopped: use 'shoal vm start web1'`, power: stop, gen: 2}},

		{"pause running", run, false, 0, api.StateRunning, "pause", false,
			want{power: pause, accept: []api.VM{vm("paused", 0)}, reject: []api.VM{vm("running", 0)}}},
		{"pause while starting", run, false, 0, api.StateStarting, "pause", false,
			want{err: api.ErrConflict, msg: `vm "web1" is starting: only a running VM can be paused`, power: run}},
		{"pause with no report yet", run, false, 0, api.StateCreating, "pause", false,
			want{err: api.ErrConflict, msg: `vm "web1" is creating: only a running VM can be paused`, power: run}},
		{"pause while a stop is pending", stop, false, 0, api.StateRunning, "pause", false,
			want{err: api.ErrConflict, msg: `vm "web1" is running: only a running VM can be paused`, power: stop}},
		{"pause paused", pause, false, 0, api.StatePaused, "pause", false,
			want{err: api.ErrConflict, msg: `vm "web1" is paused: only a running VM can be paused`, power: pause}},

		{"resume paused", pause, false, 0, api.StatePaused, "resume", false,
			want{power: run, accept: []api.VM{vm("running", 0)}, reject: []api.VM{vm("paused", 0)}}},
		{"resume running", run, false, 0, api.StateRunning, "resume", false,
			want{err: api.ErrConflict, msg: `vm "web1" is not paused`, power: run}},
		{"resume stopped", stop, false, 0, api.StateStopped, "resume", false,
			want{err: api.ErrConflict, msg: `vm "web1" is not paused`, power: stop}},

		{"unknown action", run, false, 0, api.StateRunning, "reboot", false,
			want{err: api.ErrInvalid, msg: `unknown action "reboot": use start, stop, restart, pause or resume`, power: run}},
		{"empty action", stop, false, 0, api.StateStopped, "", false,
			want{err: api.ErrInvalid, msg: `unknown action "": use start, stop, restart, pause or resume`, power: stop}},
		{"actions are case-sensitive", stop, false, 0, api.StateStopped, "Start", false,
			want{err: api.ErrInvalid, msg: `unknown action "Start": use start, stop, restart, pause or resume`, power: stop}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := api.VMSpec{Name: "web1", ID: "id1", Power: tc.power, StopForce: tc.forced, RestartGen: tc.gen}
			before := sp
			target, err := applyAction(&sp, tc.state, tc.action, tc.force)
			if tc.want.err != nil {
				if err == nil {
					t.Fatalf("got no error, want %q", tc.want.msg)
				}
				if !errors.Is(err, tc.want.err) || err.Error() != tc.want.msg {
					t.Fatalf("got %v (%v), want %q of kind %v", err, errors.Unwrap(err), tc.want.msg, tc.want.err)
				}
				if target != nil {
					t.Errorf("a refused action returned a condition")
				}
				if !reflect.DeepEqual(sp, before) {
					t.Errorf("a refused action changed the spec:\n%+v\nwas\n%+v", sp, before)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if sp.Power != tc.want.power || sp.StopForce != tc.want.forced || sp.RestartGen != tc.want.gen {
				t.Errorf("spec power %q stop_force %v restart_gen %d, want %q %v %d",
					sp.Power, sp.StopForce, sp.RestartGen, tc.want.power, tc.want.forced, tc.want.gen)
			}
			if sp.Name != before.Name || sp.ID != before.ID || sp.Deleting {
				t.Errorf("action touched identity fields: %+v", sp)
			}
			for _, v := range tc.want.accept {
				if !target(v) {
					t.Errorf("condition rejects %+v", v)
				}
			}
			for _, v := range tc.want.reject {
				if target(v) {
					t.Errorf("condition accepts %+v", v)
				}
			}
		})
	}
}

func TestHostState(t *testing.T) {
	tests := []struct {
		name   string
		stored string
		alive  bool
		want   string
	}{
		{"lease holds", api.HostUp, true, api.HostUp},
		{"lease expired", api.HostUp, false, api.HostDown},
		{"recorded down but alive", api.HostDown, true, api.HostUp},
		{"empty stored state, alive", "", true, api.HostUp},
		{"empty stored state, silent", "", false, api.HostDown},
		{"maintenance, alive", api.HostMaintenance, true, api.HostMaintenance},
		{"maintenance, silent", api.HostMaintenance, false, api.HostMaintenance},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := api.Host{Name: "host1", State: tc.stored}
			if got := hostState(h, tc.alive); got != tc.want {
				t.Errorf("hostState = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWantWait(t *testing.T) {
	s := &Server{cfg: Config{WaitTimeout: 3 * time.Minute}}
	tests := []struct {
		query   string
		wait    bool
		d       time.Duration
		wantErr string
	}{
		{"", true, 3 * time.Minute, ""},
		{"?wait=true", true, 3 * time.Minute, ""},
		{"?wait=1", true, 3 * time.Minute, ""},
		{"?timeout=30s", true, 30 * time.Second, ""},
		{"?wait=true&timeout=1m30s", true, 90 * time.Second, ""},
		{"?wait=false", false, 0, ""},
		{"?wait=0", false, 0, ""},
		{"?timeout=bogus", false, 0, `timeout "bogus" is not a duration such as 30s`},
		{"?wait=false&timeout=bogus", false, 0, `timeout "bogus" is not a duration`},
		{"?timeout=30", false, 0, `timeout "30" is not a duration`},
		{"?timeout=-5s", false, 0, `timeout "-5s" is not a duration`},
		{"?timeout=0s", false, 0, `timeout "0s" is not a duration`},
	}
	for _, tc := range tests {
		r := httptest.NewRequest("POST", "/v1/vms"+tc.query, nil)
		ws, err := s.wantWait(r)
		if tc.wantErr != "" {
			if err == nil || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: got %v, want an invalid error containing %q", tc.query, err, tc.wantErr)
			}
			continue
		}
		if err != nil || ws.wait != tc.wait || (tc.wait && ws.timeout != tc.d) {
			t.Errorf("%q: got %+v %v, want wait %v timeout %v", tc.query, ws, err, tc.wait, tc.d)
		}
		// Even a call that does not wait needs time to read the VM back.
		if !ws.wait && ws.timeout <= 0 {
			t.Errorf("%q: timeout %v leaves no time to answer", tc.query, ws.timeout)
		}
	}
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		body    string
		wantErr string // "" means accepted
	}{
		{`{"name": "web1", "image": "tiny"}`, ""},
		{"  {\"name\": \"web1\"}\n", ""},
		{``, "request body is empty: send a JSON object"},
		{`   `, "request body is empty"},
		{`{"name": "web1"`, "malformed JSON body"},
		{`{"name": 5}`, "malformed JSON body"},
		{`{"nmae": "web1"}`, `malformed JSON body: json: unknown field "nmae"`},
		{`{"name": "web1"} {"name": "web2"}`, "malformed JSON body: trailing data after the object"},
		{`{"name": "web1"} x`, "malformed JSON body"},
		{`null`, ""}, // decodes to the zero request; validation rejects it later
	}
	for _, tc := range tests {
		var req api.CreateVMRequest
		r := httptest.NewRequest("POST", "/v1/vms", strings.NewReader(tc.body))
		err := decode(r, &req)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("decode(%q) = %v, want nil", tc.body, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("decode(%q) = %v, want an invalid error containing %q", tc.body, err, tc.wantErr)
		}
	}
}
