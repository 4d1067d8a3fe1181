package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/cpumodel"
	"github.com/shoalvm/shoal/internal/netdev"
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
	alive, err := s.st.AliveHosts(r.Context())
	if err != nil {
		return err
	}
	id := caller(r.Context())
	out := make([]api.VM, 0, len(specs))
	for _, sp := range specs {
		if !id.Sees(sp.Project) {
			continue
		}
		st, ok := sts[sp.ID]
		v := api.MergeVM(sp, ptrIf(st, ok))
		api.MarkUnknown(&v, alive[v.Host])
		out = append(out, v)
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
	v := api.MergeVM(sp, ptrIf(st, err == nil))
	alive, err := s.st.HostAlive(ctx, sp.Host)
	if err != nil {
		return api.VM{}, sp, err
	}
	api.MarkUnknown(&v, alive)
	return v, sp, nil
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) error {
	vm, _, err := s.loadVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	if err := s.withMigrations(r.Context(), &vm); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vm)
	return nil
}

// planVM validates a create request and turns it into a spec, without
// side effects. rev is the revision of the caller's check that the name is
// free: what planVM reads from the cache is at least that recent. The
// host and address are chosen later, by reserve.
func (s *Server) planVM(ctx context.Context, req api.CreateVMRequest, rev int64) (api.VMSpec, error) {
	sp := api.VMSpec{Name: req.Name, Image: req.Image, CPUs: req.CPUs, CPUModel: req.CPU, HA: req.HA, AntiAffinity: req.AntiAffinity,
		Network: req.Network, Pool: req.Pool, Host: req.Host, UserData: req.UserData,
		Power: api.PowerStopped, CreatedAt: time.Now().UTC()}
	if err := api.ValidateName("vm", sp.Name); err != nil {
		return sp, err
	}
	if len(req.UserData) > api.MaxUserData {
		return sp, api.Errorf(api.ErrInvalid, "user data of %d bytes is too large: at most %d (64 KiB); let the guest fetch larger files (e.g. cloud-init's #include)",
			len(req.UserData), api.MaxUserData)
	}
	if sp.AntiAffinity != "" {
		if err := api.ValidateName("anti-affinity group", sp.AntiAffinity); err != nil {
			return sp, err
		}
	}
	if err := api.ValidatePriority(req.Priority); err != nil {
		return sp, err
	}
	if req.Priority != "" && !req.HA {
		return sp, api.Errorf(api.ErrInvalid, "--priority needs --ha: a VM without HA has no failover priority")
	}
	sp.Priority = req.Priority
	if sp.CPUs == 0 {
		sp.CPUs = 1
	}
	if err := checkCPUs(sp.CPUs); err != nil {
		return sp, err
	}
	sp.MemoryMiB = defaultMemory >> 20
	if req.Memory != "" {
		m, err := parseMemory(req.Memory)
		if err != nil {
			return sp, err
		}
		sp.MemoryMiB = m
	}
	if req.Image == "" {
		return sp, api.Errorf(api.ErrInvalid, "an image is required: --image NAME (see 'shoal image list')")
	}
	if sp.Network == "" {
		sp.Network = s.cfg.DefaultNet
	}
	if sp.Pool == "" {
		sp.Pool = s.cfg.DefaultPool
	}
	cat, err := s.cache.lookup(ctx, rev, req.Image, sp.Network, sp.Pool)
	if err != nil {
		return sp, err
	}
	if !cat.imageOK {
		return sp, notFoundHint(api.Errorf(api.ErrNotFound, "image %q not found", req.Image),
			"see 'shoal image list' or build one with 'shoal image build tiny'")
	}
	img := cat.image
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
	if !cat.network {
		return sp, notFoundHint(api.Errorf(api.ErrNotFound, "network %q not found", sp.Network), "see 'shoal network list'")
	}
	if !cat.poolOK { // no pools at all: no hosts, said by placement
		return sp, api.Errorf(api.ErrNotFound, "storage pool %q not found: pools are %v", sp.Pool, cat.pools)
	}
	if sp.CPUModel != "" && !cpumodel.Valid(sp.CPUModel) {
		return sp, api.Errorf(api.ErrInvalid, "unknown CPU model %q: use host or one of %s", sp.CPUModel, cpumodel.Names())
	}
	if sp.CPUModel == "" {
		sp.CPUModel = cat.baseline
	}
	return sp, nil
}

// checkCPUs checks a VM's number of vCPUs, on create and on change. Pure.
func checkCPUs(n int) error {
	if n < 1 || n > maxCPUs {
		return api.Errorf(api.ErrInvalid, "cpus %d is out of range: use 1 to %d", n, maxCPUs)
	}
	return nil
}

// parseMemory parses a VM's memory size ("512M"), on create and on
// change, into MiB. Pure.
func parseMemory(s string) (int64, error) {
	m, err := api.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("memory: %w", err)
	}
	if m < minMemory || m%(1<<20) != 0 {
		return 0, api.Errorf(api.ErrInvalid, "memory %s is invalid: use whole MiB, at least %s", s, api.FormatSize(minMemory))
	}
	return m >> 20, nil
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
	audit.SetObject(ctx, "vm/"+req.Name)
	if req.Project != "" {
		if err := api.ValidateName("project", req.Project); err != nil {
			return err
		}
	}
	project, err := authz.CreateIn(caller(ctx), req.Project)
	if err != nil {
		return err
	}
	exists, rev, err := s.st.VMExists(ctx, req.Name)
	if err != nil {
		return err
	}
	if exists {
		return api.Errorf(api.ErrConflict, "vm %q already exists", req.Name)
	}
	sp, err := s.planVM(ctx, req, rev)
	if err != nil {
		return err
	}
	if req.Start {
		sp.Power = api.PowerRunning
	}
	sp.Project = project
	sp.ID = newID()
	sp.MAC = netdev.MAC(sp.ID)
	sp.UID = store.NewUID()
	if err := s.cache.reserve(ctx, rev, &sp, s.cfg.Policy); err != nil {
		return err
	}
	if sp.Pool != "local" { // the default pool, a directory: no read on the common path
		if err := s.makeBootVolume(ctx, &sp); err != nil {
			s.cache.release(sp)
			return err
		}
	}
	created := false
	defer func() {
		if !created && sp.BootVolume != nil {
			s.dropVolume(context.WithoutCancel(ctx), sp.BootVolume.Name)
		}
	}()
	for try := 0; ; try++ {
		rev, err = s.st.CreateVM(ctx, sp)
		if err == nil {
			s.cache.commit(sp)
			created = true
			break
		}
		if try == 5 || !store.IsAddressTaken(err) {
			s.cache.release(sp)
			return err
		}
		// Another server or tool took the address or MAC: learn which
		// from the store, then try another.
		sp.UID = store.NewUID() // or the user id was taken
		now, rerr := s.st.Revision(ctx)
		if rerr == nil {
			rerr = s.cache.readdress(ctx, now, &sp, newID())
		}
		if rerr != nil {
			s.cache.release(sp)
			return rerr
		}
	}
	s.log.Info("vm created", "name", sp.Name, "host", sp.Host, "ip", sp.IP)
	if !ws.wait {
		// What loadVM would read back: the spec as written, with no
		// status yet (its id is new).
		sp.Rev = rev
		writeJSON(w, http.StatusCreated, api.MergeVM(sp, nil))
		return nil
	}
	target := func(vm api.VM) bool { return vm.State == api.StateStopped }
	if req.Start {
		target = func(vm api.VM) bool { return vm.State == api.StateRunning }
	}
	return s.respondAfter(w, r, http.StatusCreated, sp.Name, rev, ws, target, "was created, but ")
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
