package store_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestVolumeRecordsCountInTheirProject: a volume's size counts in its
// project's disk usage from its creation, through a growth, to its
// removal; a volume past max-disk and a second one of a name are refused
// and change nothing; the default project needs no record.
func TestVolumeRecordsCountInTheirProject(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	if err := s.CreateProject(ctx, api.Project{Name: "dev", Limits: api.Limits{DiskBytes: 10 << 30}}); err != nil {
		t.Fatal(err)
	}
	usage := func() int64 {
		t.Helper()
		p, _, err := s.GetProject(ctx, "dev")
		if err != nil {
			t.Fatal(err)
		}
		return p.Usage.DiskBytes
	}
	v := api.Volume{Name: "data", ID: "ab12", Project: "dev", Pool: "shared", SizeBytes: 4 << 30, State: api.VolumeCreating}
	if _, err := s.CreateVolume(ctx, v); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, v); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), `volume "data" already exists`) {
		t.Errorf("second volume data: %v", err)
	}
	big := api.Volume{Name: "big", ID: "cd34", Project: "dev", Pool: "shared", SizeBytes: 7 << 30}
	if _, err := s.CreateVolume(ctx, big); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), `project "dev" is at its quota: max-disk 10G (4G used, 7G asked)`) {
		t.Errorf("volume past the quota: %v", err)
	}
	if _, err := s.GetVolume(ctx, "big"); !api.IsNotFound(err) {
		t.Errorf("refused volume recorded: %v", err)
	}
	if got := usage(); got != 4<<30 {
		t.Fatalf("usage %d after one 4G volume", got)
	}
	cur, err := s.GetVolume(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	grown := cur
	grown.SizeBytes = 6 << 30
	if _, err := s.UpdateVolume(ctx, cur, grown); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateVolume(ctx, cur, grown); !errors.Is(err, api.ErrConflict) {
		t.Errorf("update from a stale read: %v", err)
	}
	if got := usage(); got != 6<<30 {
		t.Fatalf("usage %d after growing to 6G", got)
	}
	cur, _ = s.GetVolume(ctx, "data")
	if err := s.RemoveVolume(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if got := usage(); got != 0 {
		t.Fatalf("usage %d after the removal", got)
	}
	if _, err := s.CreateVolume(ctx, api.Volume{Name: "free", ID: "ef56", Pool: "local", SizeBytes: 1 << 40}); err != nil {
		t.Errorf("a volume of the default project: %v", err)
	}
	vs, _, err := s.ListVolumes(ctx)
	if err != nil || len(vs) != 1 || vs[0].Name != "free" || vs[0].Rev == 0 {
		t.Errorf("list: %+v, %v", vs, err)
	}
}

// TestAttachOneVolumeTwice: two VMs attaching one volume at once: exactly
// one gets it, in its spec with a volume slot, and the volume names it;
// a detach takes it out of the spec but keeps it the VM's until freed.
func TestAttachOneVolumeTwice(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	for i, name := range []string{"a", "b"} {
		v := projectVM(i, "")
		v.Name, v.Host = name, "host-"+name
		if _, err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateVolume(ctx, api.Volume{Name: "data", ID: "d1", Pool: "shared", SizeBytes: 1 << 30, State: api.VolumeReady}); err != nil {
		t.Fatal(err)
	}
	free := func(sp api.VMSpec, v api.Volume) error {
		if v.VM != "" {
			return api.Errorf(api.ErrConflict, "taken by %s", v.VM)
		}
		return nil
	}
	errs := make(chan error, 2)
	for _, name := range []string{"a", "b"} {
		go func() { _, err := s.AttachVolume(ctx, name, "data", free); errs <- err }()
	}
	won := 0
	for range 2 {
		if err := <-errs; err == nil {
			won++
		} else if !errors.Is(err, api.ErrConflict) {
			t.Errorf("the loser: %v", err)
		}
	}
	v, _ := s.GetVolume(ctx, "data")
	sp, _ := s.GetVM(ctx, v.VM)
	if won != 1 || len(sp.Volumes) != 1 || sp.Volumes[0].Slot != api.VolumeSlotFirst || sp.Volumes[0].ID != "d1" {
		t.Fatalf("%d won; volume %+v; spec volumes %+v", won, v, sp.Volumes)
	}
	if !slices.Equal(v.Access, []string{sp.Host}) {
		t.Errorf("the attached volume's access list is %q, not its VM's host %q", v.Access, sp.Host)
	}
	if _, _, err := s.DetachVolume(ctx, sp.Name, "data"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetVolume(ctx, "data"); v.VM != sp.Name {
		t.Errorf("detached but not freed: the volume names %q", v.VM)
	}
	if _, err := s.FreeVolume(ctx, sp.Name, "data", func(api.VMSpec) bool { return true }); !errors.Is(err, api.ErrConflict) {
		t.Errorf("freed while in use: %v", err)
	}
	if v, err := s.FreeVolume(ctx, sp.Name, "data", func(api.VMSpec) bool { return false }); err != nil || v.VM != "" || v.Access != nil {
		t.Errorf("free: %+v, %v", v, err)
	}
}
