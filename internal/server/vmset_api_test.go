package server

import (
	"context"
	"net/http"
	"reflect"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestAPICreateWithPriority(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	for _, tc := range []struct {
		req       api.CreateVMRequest
		spec, api string // priority in the store and as the API shows it
	}{
		{api.CreateVMRequest{Name: "hi", Image: "tiny", HA: true, Priority: api.PriorityHigh}, "high", "high"},
		{api.CreateVMRequest{Name: "lo", Image: "tiny", HA: true, Priority: api.PriorityLow}, "low", "low"},
		{api.CreateVMRequest{Name: "def", Image: "tiny", HA: true}, "", "medium"},
		{api.CreateVMRequest{Name: "plain", Image: "tiny"}, "", ""},
	} {
		vm := h.createVM(tc.req)
		if vm.Priority != tc.api || vm.HA != tc.req.HA {
			t.Errorf("%s: answered ha %v priority %q, want %v %q", tc.req.Name, vm.HA, vm.Priority, tc.req.HA, tc.api)
		}
		if sp := h.spec(tc.req.Name); sp.Priority != tc.spec || sp.HA != tc.req.HA {
			t.Errorf("%s: stored ha %v priority %q, want %v %q", tc.req.Name, sp.HA, sp.Priority, tc.req.HA, tc.spec)
		}
		var got api.VM
		h.call("GET", "/v1/vms/"+tc.req.Name, nil).decodeOK(t, http.StatusOK, &got)
		if got.Priority != tc.api {
			t.Errorf("%s: GET shows priority %q, want %q", tc.req.Name, got.Priority, tc.api)
		}
	}

	n := h.vmCount()
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "x1", Image: "tiny", Priority: "high"}).
		wantError(t, http.StatusBadRequest, "invalid", "--priority needs --ha")
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "x2", Image: "tiny", HA: true, Priority: "urgent"}).
		wantError(t, http.StatusBadRequest, "invalid", `priority "urgent" is invalid: use high, medium or low`)
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "x3", Image: "tiny", HA: true, Priority: "High"}).
		wantError(t, http.StatusBadRequest, "invalid", "use high, medium or low")
	if h.vmCount() != n {
		t.Errorf("refused creates left VMs: %d, want %d", h.vmCount(), n)
	}
}

func patchBody(ha *bool, prio, group *string) api.UpdateVMRequest {
	return api.UpdateVMRequest{HA: ha, Priority: prio, AntiAffinity: group}
}

func ptr[T any](v T) *T { return &v }

// PATCH /v1/vms/{name}: each change, each refusal, and that a refusal
// writes nothing.
func TestAPIUpdateVMSettings(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	h.createVM(api.CreateVMRequest{Name: "db1", Image: "tiny"})

	steps := []struct {
		name  string
		body  any
		code  int
		kind  string // for errors
		msg   string // for errors
		ha    bool   // in the store afterwards
		prio  string
		group string
		shown string // priority the answer shows
	}{
		{name: "empty body", body: `{}`, code: 400, kind: "invalid", msg: "nothing to change: give --cpus, --memory, --ha, --priority or --anti-affinity"},
		{name: "no body", body: nil, code: 400, kind: "invalid", msg: "request body is empty"},
		{name: "unknown field", body: `{"ha": true, "colour": "red"}`, code: 400, kind: "invalid", msg: "unknown field"},
		{name: "bad priority", body: patchBody(ptr(true), ptr("urgent"), nil), code: 400, kind: "invalid", msg: `priority "urgent" is invalid: use high, medium or low`},
		{name: "priority without HA", body: patchBody(nil, ptr("high"), nil), code: 400, kind: "invalid", msg: `vm "db1" is not highly available: --priority needs --ha=true`},
		{name: "priority with HA off", body: patchBody(ptr(false), ptr("low"), nil), code: 400, kind: "invalid", msg: "--priority needs --ha"},
		{name: "bad group", body: patchBody(nil, nil, ptr("DBs")), code: 400, kind: "invalid", msg: `anti-affinity group name "DBs" must start with a lower-case letter`},
		{name: "bad group with a good change", body: patchBody(ptr(true), nil, ptr("a_b")), code: 400, kind: "invalid", msg: "may hold only"},
		{name: "ha on", body: patchBody(ptr(true), nil, nil), code: 200, ha: true, shown: "medium"},
		{name: "priority", body: patchBody(nil, ptr("high"), nil), code: 200, ha: true, prio: "high", shown: "high"},
		{name: "same again writes nothing", body: patchBody(ptr(true), ptr("high"), nil), code: 200, ha: true, prio: "high", shown: "high"},
		{name: "group", body: patchBody(nil, nil, ptr("dbs")), code: 200, ha: true, prio: "high", group: "dbs", shown: "high"},
		{name: "priority back to the default", body: patchBody(nil, ptr(""), nil), code: 200, ha: true, group: "dbs", shown: "medium"},
		{name: "low", body: patchBody(nil, ptr("low"), nil), code: 200, ha: true, prio: "low", group: "dbs", shown: "low"},
		{name: "ha off clears the priority", body: patchBody(ptr(false), nil, nil), code: 200, group: "dbs"},
		{name: "ha on with a priority", body: patchBody(ptr(true), ptr("medium"), ptr("")), code: 200, ha: true, prio: "medium", shown: "medium"},
		{name: "ha off with an empty priority", body: patchBody(ptr(false), ptr(""), nil), code: 200},
	}
	for _, s := range steps {
		before := h.spec("db1")
		r := h.call("PATCH", "/v1/vms/db1", s.body)
		after := h.spec("db1")
		if s.code >= 300 {
			r.wantError(t, s.code, s.kind, s.msg)
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("%s: refused change wrote the spec:\n%+v\n%+v", s.name, before, after)
			}
			continue
		}
		var vm api.VM
		r.decodeOK(t, s.code, &vm)
		if vm.Name != "db1" || vm.HA != s.ha || vm.Priority != s.shown || vm.AntiAffinity != s.group {
			t.Errorf("%s: answered ha %v priority %q group %q, want %v %q %q", s.name, vm.HA, vm.Priority, vm.AntiAffinity, s.ha, s.shown, s.group)
		}
		if after.HA != s.ha || after.Priority != s.prio || after.AntiAffinity != s.group {
			t.Fatalf("%s: stored ha %v priority %q group %q, want %v %q %q", s.name, after.HA, after.Priority, after.AntiAffinity, s.ha, s.prio, s.group)
		}
		if s.name == "same again writes nothing" && after.Rev != before.Rev {
			t.Errorf("%s: the spec was written (revision %d -> %d)", s.name, before.Rev, after.Rev)
		}
		if after.Power != before.Power || after.Host != before.Host || after.ID != before.ID {
			t.Errorf("%s: other settings changed: %+v -> %+v", s.name, before, after)
		}
	}

	h.call("PATCH", "/v1/vms/ghost", patchBody(ptr(true), nil, nil)).wantError(t, 404, "not_found", `vm "ghost" not found`, "shoal vm list")
}

// A VM being deleted or migrating refuses changes it cannot take, and
// nothing is written.
func TestAPIUpdateVMConflicts(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4))
	ctx := context.Background()
	h.createVM(api.CreateVMRequest{Name: "gone", Image: "tiny"})
	h.freeze("gone")
	h.call("DELETE", "/v1/vms/gone?wait=false", nil).decodeOK(t, http.StatusAccepted, nil)
	before := h.spec("gone")
	h.call("PATCH", "/v1/vms/gone", patchBody(ptr(true), nil, nil)).wantError(t, 409, "conflict", `vm "gone" is being deleted`)
	if after := h.spec("gone"); !reflect.DeepEqual(before, after) {
		t.Errorf("refused change wrote the spec of a VM being deleted")
	}

	h.createVM(api.CreateVMRequest{Name: "mover", Image: "tiny", Start: true})
	h.freeze("mover")
	_, err := h.st.UpdateVM(ctx, "mover", func(sp *api.VMSpec) error {
		sp.Migration = &api.Migration{ID: "m1", Source: sp.Host, Target: "host2"}
		return nil
	})
	must(t, err)
	before = h.spec("mover")
	h.call("PATCH", "/v1/vms/mover", patchBody(nil, nil, ptr("dbs"))).
		wantError(t, 409, "conflict", `vm "mover" is migrating to host2: change its anti-affinity group once the migration is over`)
	if after := h.spec("mover"); !reflect.DeepEqual(before, after) {
		t.Errorf("refused change wrote the spec of a migrating VM")
	}
	// HA and priority need no host's help: they change during a migration.
	var vm api.VM
	h.call("PATCH", "/v1/vms/mover", patchBody(ptr(true), ptr("high"), nil)).decodeOK(t, http.StatusOK, &vm)
	if sp := h.spec("mover"); !sp.HA || sp.Priority != "high" || sp.Migration == nil {
		t.Errorf("migrating VM after a priority change: %+v", sp)
	}
}

// A running VM joins a group only where no other VM of it runs; a
// stopped one may join, and is then checked when it starts.
func TestAPIUpdateVMAntiAffinity(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t) // one host: every VM runs on host1
	h.createVM(api.CreateVMRequest{Name: "a", Image: "tiny", AntiAffinity: "dbs", Start: true})
	h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny", Start: true})

	before := h.spec("b")
	h.call("PATCH", "/v1/vms/b", patchBody(ptr(true), nil, ptr("dbs"))).wantError(t, 409, "conflict",
		`vm "b" cannot join anti-affinity group "dbs" on host host1, which already runs vm "a" of it`, "migrate b to another host or stop it first")
	if after := h.spec("b"); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused group change wrote the spec")
	}

	// A group of its own is fine, and counts at once: a new VM of it
	// finds no host.
	var vm api.VM
	h.call("PATCH", "/v1/vms/b", patchBody(nil, nil, ptr("web"))).decodeOK(t, http.StatusOK, &vm)
	if vm.AntiAffinity != "web" || h.spec("b").AntiAffinity != "web" {
		t.Fatalf("group change: answered %q, stored %q", vm.AntiAffinity, h.spec("b").AntiAffinity)
	}
	h.call("POST", "/v1/vms", api.CreateVMRequest{Name: "c", Image: "tiny", AntiAffinity: "web", Start: true}).
		wantError(t, http.StatusInsufficientStorage, "capacity", `already runs a VM of group "web"`)

	// Stopped, b may join dbs; it cannot start beside a then.
	h.call("POST", "/v1/vms/b/stop", nil).decodeOK(t, http.StatusOK, nil)
	h.call("PATCH", "/v1/vms/b", patchBody(nil, nil, ptr("dbs"))).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/b/start", nil).wantError(t, http.StatusInsufficientStorage, "capacity", `group "dbs"`)
	if sp := h.spec("b"); sp.Power != api.PowerStopped {
		t.Fatalf("refused start wrote power %q", sp.Power)
	}

	// Out of the group, it starts; and a running VM may always leave.
	h.call("PATCH", "/v1/vms/b", patchBody(nil, nil, ptr(""))).decodeOK(t, http.StatusOK, &vm)
	h.call("POST", "/v1/vms/b/start", nil).decodeOK(t, http.StatusOK, nil)
	var a api.VM
	h.call("PATCH", "/v1/vms/a", patchBody(nil, nil, ptr(""))).decodeOK(t, http.StatusOK, &a)
	if a.AntiAffinity != "" || h.spec("a").AntiAffinity != "" {
		t.Fatalf("a still in group %q", a.AntiAffinity)
	}
	h.call("PATCH", "/v1/vms/b", patchBody(nil, nil, ptr("dbs"))).decodeOK(t, http.StatusOK, &vm)
}
