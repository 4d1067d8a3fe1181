package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/cpumodel"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/store"
)

const (
	defaultMemory = 256 << 20
	minMemory     = 32 << 20
	maxCPUs       = 64
)

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) error {
	specs, _, err := s.st.ListVMs(r.Context())
	if err != nil {
		return err
	}
	sts, err := s.st.ListStatuses(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.VM, 0, len(specs))
	for _, sp := range specs {
		st, ok := sts[sp.ID]
		out = append(out, api.MergeVM(sp, ptrIf(st, ok)))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func ptrIf[T any](v T, ok bool) *T {
	if !ok {
		return nil
	}
	return &v
}

// loadVM reads the API view of one VM.
func (s *Server) loadVM(ctx context.Context, name string) (api.VM, api.VMSpec, error) {
	sp, err := s.st.GetVM(ctx, name)
	if err != nil {
		return api.VM{}, sp, notFoundHint(err, "see 'shoal vm list'")
	}
	st, err := s.st.GetStatus(ctx, sp.ID)
	if err != nil && !api.IsNotFound(err) {
		return api.VM{}, sp, err
	}
	return api.MergeVM(sp, ptrIf(st, err == nil)), sp, nil
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) error {
	vm, _, err := s.loadVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// planVM validates a create request and turns it into a spec, without
// side effects.
func (s *Server) planVM(ctx context.Context, req api.CreateVMRequest) (api.VMSpec, error) {
	sp := api.VMSpec{Name: req.Name, Image: req.Image, CPUs: req.CPUs, CPUModel: req.CPU, HA: req.HA, AntiAffinity: req.AntiAffinity,
		Network: req.Network, Pool: req.Pool, Host: req.Host, UserData: req.UserData,
		Power: api.PowerStopped, CreatedAt: time.Now().UTC()}
	if err := api.ValidateName("vm", sp.Name); err != nil {
		return sp, err
	}
	if sp.AntiAffinity != "" {
		if err := api.ValidateName("anti-affinity group", sp.AntiAffinity); err != nil {
			return sp, err
		}
	}
	if sp.CPUs == 0 {
		sp.CPUs = 1
	}
	if sp.CPUs < 0 || sp.CPUs > maxCPUs {
		return sp, api.Errorf(api.ErrInvalid, "cpus %d is out of range: use 1 to %d", sp.CPUs, maxCPUs)
	}
	mem := int64(defaultMemory)
	if req.Memory != "" {
		m, err := api.ParseSize(req.Memory)
		if err != nil {
			return sp, fmt.Errorf("memory: %w", err)
		}
		mem = m
	}
	if mem < minMemory || mem%(1<<20) != 0 {
		return sp, api.Errorf(api.ErrInvalid, "memory %s is invalid: use whole MiB, at least %s", req.Memory, api.FormatSize(minMemory))
	}
	sp.MemoryMiB = mem >> 20
	if req.Image == "" {
		return sp, api.Errorf(api.ErrInvalid, "an image is required: --image NAME (see 'shoal image list')")
	}
	img, err := s.st.GetImage(ctx, req.Image)
	if err != nil {
		return sp, notFoundHint(err, "see 'shoal image list' or build one with 'shoal image build tiny'")
	}
	sp.DiskBytes = img.SizeBytes
	if req.Disk != "" {
		d, err := api.ParseSize(req.Disk)
		if err != nil {
			return sp, fmt.Errorf("disk: %w", err)
		}
		if d < img.SizeBytes {
			return sp, api.Errorf(api.ErrInvalid, "disk %s is smaller than image %q (%s)", req.Disk, img.Name, api.FormatSize(img.SizeBytes))
		}
		if d > 64<<40 {
			return sp, api.Errorf(api.ErrInvalid, "disk %s is too large: at most 64T", req.Disk)
		}
		sp.DiskBytes = (d + 511) &^ 511
	}
	if sp.Network == "" {
		sp.Network = s.cfg.DefaultNet
	}
	if _, err := s.st.GetNetwork(ctx, sp.Network); err != nil {
		return sp, notFoundHint(err, "see 'shoal network list'")
	}
	if sp.Pool == "" {
		sp.Pool = s.cfg.DefaultPool
	}
	if pools, err := s.knownPools(ctx); err != nil {
		return sp, err
	} else if len(pools) > 0 && !contains(pools, sp.Pool) { // no pools at all: no hosts, said below
		return sp, api.Errorf(api.ErrNotFound, "storage pool %q not found: pools are %v", sp.Pool, pools)
	}
	if sp.CPUModel != "" && !cpumodel.Valid(sp.CPUModel) {
		return sp, api.Errorf(api.ErrInvalid, "unknown CPU model %q: use host or one of %s", sp.CPUModel, cpumodel.Names())
	}
	if sp.CPUModel == "" {
		if sp.CPUModel, err = s.baselineCPU(ctx); err != nil {
			return sp, err
		}
	}
	host, err := s.placeVM(ctx, sp)
	if err != nil {
		return sp, err
	}
	sp.Host = host
	return sp, nil
}

// placeVM picks the host for a new VM with the scheduler.
func (s *Server) placeVM(ctx context.Context, sp api.VMSpec) (string, error) {
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return "", err
	}
	specs, _, err := s.st.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	alive, err := s.st.AliveHosts(ctx)
	if err != nil {
		return "", err
	}
	snap := placementSnapshot(hosts, specs, alive)
	d, err := scheduler.Place(snap, scheduler.Request{
		// Networks are cluster-wide (checked in planVM), so no host lacks one.
		Name: sp.Name, CPUs: sp.CPUs, MemoryMiB: sp.MemoryMiB,
		Pool: sp.Pool, Host: sp.Host, AntiAffinity: sp.AntiAffinity,
	}, s.cfg.Policy)
	if err != nil {
		return "", err
	}
	return d.Host, nil
}

// placementSnapshot turns host records, VM specs and liveness into what
// the scheduler needs. Pure. Networks are cluster-wide.
func placementSnapshot(hosts []api.Host, specs []api.VMSpec, alive map[string]bool) []scheduler.Host {
	byName := make(map[string]int, len(hosts))
	out := make([]scheduler.Host, len(hosts))
	for i, h := range hosts {
		byName[h.Name] = i
		out[i] = scheduler.Host{Name: h.Name, State: hostState(h, alive[h.Name]), CPUs: h.CPUs,
			MemoryMiB: h.MemoryMiB, Pools: h.Pools}
	}
	for _, v := range specs {
		i, ok := byName[v.Host]
		if !ok || v.Power == api.PowerStopped {
			continue
		}
		out[i].AllocatedMiB += v.MemoryMiB
		out[i].AllocatedCPUs += v.CPUs
		if v.AntiAffinity != "" {
			if out[i].Groups == nil {
				out[i].Groups = map[string]int{}
			}
			out[i].Groups[v.AntiAffinity]++
		}
	}
	return out
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) error {
	ws, err := s.wantWait(r)
	if err != nil {
		return err
	}
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := s.st.GetVM(ctx, req.Name); err == nil {
		return api.Errorf(api.ErrConflict, "vm %q already exists", req.Name)
	}
	sp, err := s.planVM(ctx, req)
	if err != nil {
		return err
	}
	if req.Start {
		sp.Power = api.PowerRunning
	}
	sp.ID = newID()
	sp.MAC = netdev.MAC(sp.ID)
	var rev int64
	for try := 0; ; try++ {
		if sp.IP, err = s.allocateIP(ctx, sp.Network); err != nil {
			return err
		}
		rev, err = s.st.CreateVM(ctx, sp)
		if err == nil || try == 5 || !store.IsAddressTaken(err) {
			break
		}
		sp.ID = newID()
		sp.MAC = netdev.MAC(sp.ID)
	}
	if err != nil {
		return err
	}
	s.log.Info("vm created", "name", sp.Name, "host", sp.Host, "ip", sp.IP)
	target := func(vm api.VM) bool { return vm.State == api.StateStopped }
	if req.Start {
		target = func(vm api.VM) bool { return vm.State == api.StateRunning }
	}
	return s.respondAfter(w, r, http.StatusCreated, sp.Name, rev, ws, target, "was created, but ")
}

func (s *Server) allocateIP(ctx context.Context, network string) (string, error) {
	n, err := s.st.GetNetwork(ctx, network)
	if err != nil {
		return "", err
	}
	pool, err := netdev.ParsePool(n.Subnet)
	if err != nil {
		return "", fmt.Errorf("network %s: %w", n.Name, err)
	}
	used, err := s.st.UsedIPs(ctx, network)
	if err != nil {
		return "", err
	}
	m := map[netip.Addr]bool{}
	for _, u := range used {
		if a, err := netip.ParseAddr(u); err == nil {
			m[a] = true
		}
	}
	a, err := pool.Next(m)
	if err != nil {
		return "", api.Errorf(api.ErrCapacity, "network %s: %v", network, err)
	}
	return a.String(), nil
}

// baselineCPU is the most capable CPU model every host can run, so that a
// VM may move to any of them.
func (s *Server) baselineCPU(ctx context.Context) (string, error) {
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return "", err
	}
	flags := make([][]string, 0, len(hosts))
	for _, h := range hosts {
		flags = append(flags, h.CPUFlags)
	}
	return cpumodel.Choose(flags), nil
}

// knownPools lists the storage pools any host offers.
func (s *Server) knownPools(ctx context.Context) ([]string, error) {
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	var pools []string
	for _, h := range hosts {
		for _, p := range h.Pools {
			if !contains(pools, p) {
				pools = append(pools, p)
			}
		}
	}
	return pools, nil
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
