package api_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func testSpec() api.VMSpec {
	return api.VMSpec{
		Name: "web1", ID: "abc123", Image: "tiny", CPUs: 2, MemoryMiB: 512,
		DiskBytes: 1 << 30, Network: "default", Pool: "local", Host: "host1", HA: true,
		MAC: "52:54:00:01:02:03", IP: "10.57.0.10", Power: api.PowerRunning,
		CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestMergeVMCopiesSpec(t *testing.T) {
	s := testSpec()
	vm := api.MergeVM(s, nil)
	want := api.VM{
		Name: "web1", ID: "abc123", Project: api.DefaultProject, // a spec of no project: made before projects
		State: api.StateCreating, Host: "host1", IP: "10.57.0.10",
		MAC: "52:54:00:01:02:03", Image: "tiny", CPUs: 2, MemoryMiB: 512, DiskBytes: 1 << 30,
		Network: "default", Pool: "local", HA: true, Priority: api.PriorityMedium, // an HA VM's default
		Power: api.PowerRunning, CreatedAt: s.CreatedAt,
		Disks: []api.Disk{{Name: "disk0", Pool: "local", SizeBytes: 1 << 30}},
	}
	if !reflect.DeepEqual(vm, want) {
		t.Fatalf("MergeVM(spec, nil) =\n%+v\nwant\n%+v", vm, want)
	}
}

func TestMergeVMStatus(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 5, 0, 0, time.UTC)
	updated := started.Add(time.Minute)
	current := &api.VMStatus{ID: "abc123", Host: "host1", State: api.StateRunning, PID: 4242,
		Accel: "kvm", Error: "", RestartGen: 3, ObservedRev: 17, StartedAt: started, UpdatedAt: updated}
	stale := &api.VMStatus{ID: "old999", Host: "host2", State: api.StateFailed, PID: 1,
		Accel: "tcg", Error: "qemu died", RestartGen: 7, ObservedRev: 99, StartedAt: started, UpdatedAt: updated}

	tests := []struct {
		name     string
		deleting bool
		st       *api.VMStatus
		want     api.VM // only the status-derived fields are compared
	}{
		{"no status yet", false, nil, api.VM{State: api.StateCreating}},
		{"status of this VM", false, current, api.VM{State: api.StateRunning, PID: 4242, Accel: "kvm",
			RestartGen: 3, ObservedRev: 17, StartedAt: started, UpdatedAt: updated}},
		{"stale status of an earlier VM with the same name", false, stale, api.VM{State: api.StateCreating}},
		{"status with empty id", false, &api.VMStatus{State: api.StateRunning}, api.VM{State: api.StateCreating}},
		{"deleting, no status", true, nil, api.VM{State: api.StateDeleting}},
		{"deleting overrides running", true, current, api.VM{State: api.StateDeleting, PID: 4242, Accel: "kvm",
			RestartGen: 3, ObservedRev: 17, StartedAt: started, UpdatedAt: updated}},
		{"deleting with stale status", true, stale, api.VM{State: api.StateDeleting}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec()
			s.Deleting = tc.deleting
			vm := api.MergeVM(s, tc.st)
			got := api.VM{State: vm.State, PID: vm.PID, Accel: vm.Accel, Error: vm.Error,
				RestartGen: vm.RestartGen, ObservedRev: vm.ObservedRev, StartedAt: vm.StartedAt, UpdatedAt: vm.UpdatedAt}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			// The owner always comes from the spec, never from a report.
			if vm.Host != "host1" || vm.ID != "abc123" {
				t.Errorf("host/id = %q/%q, want the spec's host1/abc123", vm.Host, vm.ID)
			}
		})
	}
}

func TestMergeVMFailedCarriesError(t *testing.T) {
	s := testSpec()
	vm := api.MergeVM(s, &api.VMStatus{ID: s.ID, State: api.StateFailed, Error: "qemu exited: no kvm"})
	if vm.State != api.StateFailed || vm.Error != "qemu exited: no kvm" {
		t.Fatalf("got state %q error %q", vm.State, vm.Error)
	}
}
