package store_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

func projectVM(i int, project string) api.VMSpec {
	return api.VMSpec{Name: fmt.Sprintf("vm%02d", i), ID: fmt.Sprintf("id%02d", i), Project: project, Network: "default",
		IP: fmt.Sprintf("10.0.0.%d", 10+i), MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), CPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 30}
}

// TestQuotaUnderConcurrentCreates: 20 creates at once into a project
// of at most 5 VMs, through two stores as two servers would (each with
// its own batches and its own idea of the usage): exactly 5 are
// written, the others are refused with one line naming the limit, and
// the usage says 5; a removal frees one place; a project with VMs is not
// deleted.
func TestQuotaUnderConcurrentCreates(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	servers := []*store.Store{s, store.New(s.Client())}
	if _, err := s.CreateVM(ctx, projectVM(0, "dev")); !api.IsNotFound(err) || !strings.Contains(err.Error(), `project "dev" not found`) {
		t.Fatalf("create in a missing project: %v", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateProject(ctx, api.Project{Name: "dev", Limits: api.Limits{VMs: 5}}))
	if err := s.CreateProject(ctx, api.Project{Name: "dev"}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("second project dev: %v", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = servers[i%2].CreateVM(ctx, projectVM(i, "dev"))
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, api.ErrConflict) || err.Error() != `project "dev" is at its quota: max-vms 5 (5 used)`:
			t.Errorf("refusal: %v", err)
		}
	}
	vms, _, err := s.ListVMs(ctx)
	must(err)
	p, _, err := s.GetProject(ctx, "dev")
	must(err)
	if ok != 5 || len(vms) != 5 || p.Usage != (api.Usage{VMs: 5, CPUs: 5, MemoryMiB: 5 * 256, DiskBytes: 5 << 30}) {
		t.Fatalf("%d creates succeeded, %d VMs recorded, usage %+v; want 5", ok, len(vms), p.Usage)
	}
	if err := s.DeleteProject(ctx, "dev"); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), `project "dev" has 5 VMs: delete them first`) {
		t.Errorf("deleting a project with VMs: %v", err)
	}
	// A duplicate name in a batch fails alone, with its own reason.
	must(s.RemoveVM(ctx, vms[0]))
	dup := projectVM(30, "dev")
	dup.Name = vms[1].Name
	if _, err := s.CreateVM(ctx, dup); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("duplicate name: %v", err)
	}
	if _, err := s.CreateVM(ctx, projectVM(31, "dev")); err != nil {
		t.Errorf("create after a removal: %v", err)
	}
	ps, err := s.ListProjects(ctx)
	must(err)
	if len(ps) != 1 || ps[0].Usage.VMs != 5 || ps[0].Limits.VMs != 5 {
		t.Errorf("projects %+v", ps)
	}
	vms, _, err = s.ListVMs(ctx)
	must(err)
	for _, v := range vms {
		must(s.RemoveVM(ctx, v))
	}
	must(s.DeleteProject(ctx, "dev"))
	if _, _, err := s.GetProject(ctx, "dev"); !api.IsNotFound(err) {
		t.Errorf("deleted project: %v", err)
	}
	// The default project needs no record and has no limits.
	if _, err := s.CreateVM(ctx, projectVM(40, "")); err != nil {
		t.Errorf("create in the default project: %v", err)
	}
}

// TestQuotaPipelineStaysExact: 150 creates at once, through two
// stores, into a project of at most 100 VMs, while its 10 older VMs
// are removed and 3 of the creates take names already in use (so
// batches in flight fail and go again): the usage record equals what
// the VMs recorded take, no more than 100 were ever admitted, every
// refusal names the limit and every duplicate fails alone.
func TestQuotaPipelineStaysExact(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	servers := []*store.Store{s, store.New(s.Client())}
	if err := s.CreateProject(ctx, api.Project{Name: "dev", Limits: api.Limits{VMs: 100}}); err != nil {
		t.Fatal(err)
	}
	vm := func(i int) api.VMSpec {
		v := projectVM(0, "dev")
		v.Name, v.ID = fmt.Sprintf("vm%03d", i), fmt.Sprintf("id%03d", i)
		v.IP, v.MAC = fmt.Sprintf("10.0.%d.%d", i/200, 10+i%200), fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256)
		return v
	}
	var old []api.VMSpec
	for i := range 10 {
		if _, err := s.CreateVM(ctx, vm(i)); err != nil {
			t.Fatal(err)
		}
		v, err := s.GetVM(ctx, vm(i).Name)
		if err != nil {
			t.Fatal(err)
		}
		old = append(old, v)
	}
	var wg sync.WaitGroup
	errs := make([]error, 150)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := vm(100 + i)
			if i%50 == 7 {
				v.Name = fmt.Sprintf("vm%03d", 100+i-1) // a name another create takes
			}
			_, errs[i] = servers[i%2].CreateVM(ctx, v)
		}()
	}
	for _, v := range old {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := servers[1].RemoveVM(ctx, v); err != nil {
				t.Errorf("remove %s: %v", v.Name, err)
			}
		}()
	}
	wg.Wait()
	ok, dups := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, api.ErrConflict) && strings.Contains(err.Error(), "already exists"):
			dups++
		case !errors.Is(err, api.ErrConflict) || !strings.HasPrefix(err.Error(), `project "dev" is at its quota: max-vms 100 (`):
			t.Errorf("refusal: %v", err)
		}
	}
	have, want, vms := usageOf(t, s, "dev")
	if have != want || ok != vms || ok > 100 || ok < 90 {
		t.Fatalf("%d creates succeeded, %d VMs recorded, usage %+v, want %+v", ok, vms, have, want)
	}
	if dups > 3 {
		t.Errorf("%d duplicates refused, at most 3 are", dups)
	}
}

// TestBatchWithSharedKeys: creates that arrive together and share a
// name, an address, a MAC or a QEMU user id are never sent in one
// transaction (etcd refuses a transaction that writes a key twice, which
// failed the whole batch as unavailable): one of each pair is written,
// the other gets its own conflict.
func TestBatchWithSharedKeys(t *testing.T) {
	ctx := context.Background()
	s := storetest.New(t)
	if err := s.CreateProject(ctx, api.Project{Name: "dev"}); err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		v := projectVM(i, "dev")
		v.UID = 70000 + i
		switch p := i - i%2; i % 8 { // pairs (p, p+1) share one key
		case 1:
			v.Name = projectVM(p, "dev").Name
		case 3:
			v.IP = projectVM(p, "dev").IP
		case 5:
			v.MAC = projectVM(p, "dev").MAC
		case 7:
			v.UID = 70000 + p
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CreateVM(ctx, v)
		}()
	}
	wg.Wait()
	for p := 0; p < n; p += 2 {
		a, b := errs[p], errs[p+1]
		if (a == nil) == (b == nil) {
			t.Errorf("pair %d: %v and %v; want one written, one refused", p, a, b)
			continue
		}
		if err := cmp.Or(a, b); !errors.Is(err, api.ErrConflict) {
			t.Errorf("pair %d: %v; want a conflict", p, err)
		}
	}
	vms, _, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != n/2 {
		t.Errorf("%d VMs written, want %d", len(vms), n/2)
	}
}
