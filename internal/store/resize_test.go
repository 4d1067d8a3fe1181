package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

// TestResizeUnderConcurrentCreates: VMs of a project grow while other
// VMs are created into it, through two stores as two servers would:
// the usage record always equals what the project's VMs take (each
// change is written with it, retried when another moved it), and the
// project's vCPU limit holds whichever writes win.
func TestResizeUnderConcurrentCreates(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	servers := []*store.Store{s, store.New(s.Client())}
	if err := s.CreateProject(ctx, api.Project{Name: "dev", Limits: api.Limits{CPUs: 24}}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := s.CreateVM(ctx, projectVM(i, "dev")); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var refused []error
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i < 8 { // each of the first VMs grows by 4 vCPUs, twice
				name := projectVM(i%4, "dev").Name
				_, err = servers[i%2].UpdateVMCounted(ctx, name, func(v *api.VMSpec) error {
					v.CPUs += 4
					v.MemoryMiB += 128
					return nil
				})
			} else {
				_, err = servers[i%2].CreateVM(ctx, projectVM(i, "dev"))
			}
			if err != nil {
				mu.Lock()
				refused = append(refused, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range refused {
		if !errors.Is(err, api.ErrConflict) {
			t.Errorf("refusal that is not the quota's: %v", err)
		}
	}
	have, want, _ := usageOf(t, s, "dev")
	if have != want || want.CPUs > 24 {
		t.Fatalf("usage %+v, the VMs take %+v (limit 24 vCPUs; %d refused)", have, want, len(refused))
	}
	if len(refused) == 0 {
		t.Errorf("nothing was refused: 4+8 VMs of 1 vCPU and 8 growths of 4 cannot fit 24 vCPUs")
	}
	// A change of a default-project VM (no usage record) and of no size
	// writes the spec alone.
	other := projectVM(40, "")
	if _, err := s.CreateVM(ctx, other); err != nil {
		t.Fatal(err)
	}
	if v, err := s.UpdateVMCounted(ctx, other.Name, func(v *api.VMSpec) error { v.CPUs = 8; return nil }); err != nil || v.CPUs != 8 || v.Rev == 0 {
		t.Fatalf("default-project VM: %+v %v", v, err)
	}
}

// usageOf returns the usage record of project, what the VMs recorded
// (of any project: the tests' store holds one) take, and how many
// they are.
func usageOf(t *testing.T, s *store.Store, project string) (have, want api.Usage, vms int) {
	t.Helper()
	ctx := context.Background()
	list, _, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range list {
		want = want.Add(api.UsageOf(v))
	}
	p, _, err := s.GetProject(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	return p.Usage, want, len(list)
}
