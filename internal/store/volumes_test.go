package store_test

import (
	"context"
	"errors"
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
