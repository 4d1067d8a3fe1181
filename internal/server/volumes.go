package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/audit"
	"github.com/shoalvm/shoal/internal/authz"
	"github.com/shoalvm/shoal/internal/store"
)

// A volume's storage is made, grown and removed by the host its record
// names (Host): the server writes what it wants into the record (state
// creating, resizing or deleting) and the host, which watches the
// volumes it works on, does it and writes the outcome back. The calls
// wait for that outcome, up to volumeWait.

// volumeWait bounds how long a volume call waits for its host.
const volumeWait = 2 * time.Minute

// volumeObject is the object of a route on volume {name}: its project,
// for a caller confined to one.
func (s *Server) volumeObject(r *http.Request) authz.Object {
	return inProject(r, "volume", func(ctx context.Context, name string) (string, error) {
		v, err := s.st.GetVolume(ctx, name)
		return v.Project, err
	})
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	vols, _, err := s.st.ListVolumes(r.Context())
	if err != nil {
		return err
	}
	id := caller(r.Context())
	out := make([]api.Volume, 0, len(vols))
	for _, v := range vols {
		if id.Sees(v.Project) && (r.URL.Query().Get("pool") == "" || r.URL.Query().Get("pool") == v.Pool) {
			out = append(out, v)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	v, err := s.st.GetVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var req api.CreateVolumeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	audit.SetObject(ctx, "volume/"+req.Name)
	if err := api.ValidateName("volume", req.Name); err != nil {
		return err
	}
	project, err := authz.CreateIn(caller(ctx), req.Project)
	if err != nil {
		return err
	}
	if project != api.DefaultProject {
		if _, _, err := s.st.GetProject(ctx, project); err != nil {
			return err
		}
	}
	var size int64
	if req.Size != "" {
		if size, err = api.ParseSize(req.Size); err != nil {
			return err
		}
	}
	if req.Image != "" {
		im, err := s.st.GetImage(ctx, req.Image)
		if err != nil {
			return notFoundHint(err, "see 'shoal image list'")
		}
		if size == 0 {
			size = im.SizeBytes
		} else if size < im.SizeBytes {
			return api.Errorf(api.ErrInvalid, "size %s is smaller than image %s (%s)", api.FormatSize(size), req.Image, api.FormatSize(im.SizeBytes))
		}
	}
	if size <= 0 {
		return api.Errorf(api.ErrInvalid, "a volume needs a size, e.g. --size 10G")
	}
	hosts, err := s.hostViews(ctx)
	if err != nil {
		return err
	}
	pool := req.Pool
	if pool == "" {
		pool = defaultVolumePool(hosts)
	}
	host, err := volumeHost(hosts, pool, req.Host, size)
	if err != nil {
		return err
	}
	v := api.Volume{Name: req.Name, ID: newID(), Project: project, Pool: pool, SizeBytes: size, Image: req.Image,
		Host: host, State: api.VolumeCreating, CreatedAt: time.Now().UTC()}
	got, err := s.makeVolume(ctx, v)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, got)
	return nil
}

// makeVolume records v and waits for its host to make it: the volume
// made, or the host's error, and then nothing of it stays (its host
// made nothing, or removed what it made).
func (s *Server) makeVolume(ctx context.Context, v api.Volume) (api.Volume, error) {
	rev, err := s.st.CreateVolume(ctx, v)
	if err != nil {
		return v, err
	}
	got, err := s.awaitVolume(ctx, v.Name, rev, api.VolumeCreating)
	if err != nil {
		return got, err
	}
	if got.State != api.VolumeReady {
		if err := s.st.RemoveVolume(ctx, got); err != nil {
			return got, err
		}
		return got, volumeFailure(got)
	}
	return got, nil
}

// volumeFailure is the error a host reported for v, of its kind.
func volumeFailure(v api.Volume) error {
	return api.Errorf(api.KindByName(v.ErrorKind), "volume %q: %s", v.Name, v.Error)
}

func (s *Server) resizeVolume(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var req api.ResizeVolumeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	size, err := api.ParseSize(req.Size)
	if err != nil {
		return err
	}
	v, err := s.st.GetVolume(ctx, r.PathValue("name"))
	if err != nil {
		return err
	}
	if v.State != api.VolumeReady {
		return api.Errorf(api.ErrConflict, "volume %q is %s: resize it once it is ready", v.Name, v.State)
	}
	if size < v.SizeBytes {
		return api.Errorf(api.ErrInvalid, "volume %q is %s: a volume only grows", v.Name, api.FormatSize(v.SizeBytes))
	}
	if size == v.SizeBytes {
		writeJSON(w, http.StatusOK, v)
		return nil
	}
	if v.VM != "" {
		return s.growAttached(w, r, v, size)
	}
	want := v
	want.SizeBytes, want.State, want.Error, want.ErrorKind = size, api.VolumeResizing, "", ""
	rev, err := s.st.UpdateVolume(ctx, v, want)
	if err != nil {
		return err
	}
	got, err := s.awaitVolume(ctx, v.Name, rev, api.VolumeResizing)
	if err != nil {
		return err
	}
	if got.Error != "" {
		return volumeFailure(got)
	}
	writeJSON(w, http.StatusOK, got)
	return nil
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v, err := s.st.GetVolume(ctx, r.PathValue("name"))
	if err != nil {
		return err
	}
	if v, err = s.releaseStale(ctx, v); err != nil {
		return err
	}
	if v.VM != "" {
		return api.Errorf(api.ErrConflict, "volume %q is attached to vm %s: detach it first ('shoal vm detach %s %s')", v.Name, v.VM, v.VM, v.Name)
	}
	if v.State == api.VolumeCreating || v.State == api.VolumeResizing {
		return api.Errorf(api.ErrConflict, "volume %q is %s: delete it once that is done", v.Name, v.State)
	}
	rev := v.Rev
	if v.State != api.VolumeDeleting || v.Error != "" { // not under way: (again) ask its host
		want := v
		want.State, want.Error, want.ErrorKind = api.VolumeDeleting, "", ""
		if rev, err = s.st.UpdateVolume(ctx, v, want); err != nil {
			return err
		}
	}
	if v, err = s.awaitVolume(ctx, v.Name, rev, api.VolumeDeleting); err != nil {
		return err
	}
	if v.Error != "" {
		return volumeFailure(v)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// awaitVolume waits, from revision rev on, until volume name leaves
// state (or its record goes: then the last record seen, with state
// gone). The host clears Error when it succeeds.
func (s *Server) awaitVolume(ctx context.Context, name string, rev int64, state string) (api.Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, volumeWait)
	defer cancel()
	last, err := s.st.GetVolume(ctx, name)
	if api.IsNotFound(err) && state == api.VolumeDeleting {
		return api.Volume{Name: name}, nil
	}
	if err != nil {
		return last, err
	}
	if last.State != state {
		return last, nil
	}
	wch := s.st.Client().Watch(clientv3.WithRequireLeader(ctx), store.VolumePrefix+name, clientv3.WithRev(last.Rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return last, fmt.Errorf("watch volume %q: %w: %w", name, api.ErrUnavailable, err)
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return api.Volume{Name: name}, nil
			}
			v, err := store.DecodeVolume(ev.Kv)
			if err != nil {
				return last, err
			}
			if v.State != state {
				return v, nil
			}
			last = v
		}
	}
	return last, api.Errorf(api.ErrUnavailable, "volume %q is still %s on host %s after %s: see 'shoal volume show %s'", name, state, last.Host, volumeWait, name)
}

// growAttached grows volume v, attached to a VM, to size: the VM's host
// grows it through the VM's QEMU (a disk in use is never grown under
// it), which the guest sees at once; a VM that is not running takes it
// at its next start.
func (s *Server) growAttached(w http.ResponseWriter, r *http.Request, v api.Volume, size int64) error {
	ctx := r.Context()
	hosts, err := s.hostViews(ctx)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if ps, ok := poolOf(h, v.Pool); ok && ps.Type != api.PoolDir {
			return api.Errorf(api.ErrConflict, "volume %q is attached to vm %s: growing a volume of a %s pool in use is not supported yet; detach it first", v.Name, v.VM, ps.Type)
		}
	}
	if err := checkGrowth(hosts, v, size); err != nil {
		return err
	}
	sp, err := s.st.GrowAttached(ctx, v, size)
	if err != nil {
		return err
	}
	var last api.VM
	if !s.awaitVM(ctx, sp.Name, func(vm api.VM, err error) bool {
		last = vm
		return err == nil && (vm.ObservedRev >= sp.Rev || vm.State != api.StateRunning && vm.State != api.StatePaused)
	}) {
		return api.Errorf(api.ErrUnavailable, "vm %s has not grown volume %s after %s; its host may be down (see 'shoal host list')", sp.Name, v.Name, s.cfg.WaitTimeout)
	}
	if last.State == api.StateFailed && last.ObservedRev >= sp.Rev {
		return api.Errorf(api.ErrConflict, "vm %s could not grow volume %s: %s", sp.Name, v.Name, last.Error)
	}
	got, err := s.st.GetVolume(ctx, v.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, got)
	return nil
}

// checkGrowth refuses to grow v by more than its pool's free space as
// the hosts last reported it. Pure.
func checkGrowth(hosts []api.Host, v api.Volume, size int64) error {
	for _, h := range hosts {
		if ps, ok := poolOf(h, v.Pool); ok && (ps.Shared || h.Name == v.Host) && ps.SizeBytes > 0 && size-v.SizeBytes > ps.FreeBytes {
			return api.Errorf(api.ErrCapacity, "pool %q has %s free: growing volume %s by %s does not fit", v.Pool, api.FormatSize(ps.FreeBytes), v.Name, api.FormatSize(size-v.SizeBytes))
		}
	}
	return nil
}

// makeBootVolume makes, for a VM of spec sp placed on a pool the cluster
// defines (iSCSI, RBD), the volume that holds its first disk, from its
// image, attached to it from the start, and names it in sp. A pool of
// directories needs none.
func (s *Server) makeBootVolume(ctx context.Context, sp *api.VMSpec) error {
	if _, err := s.st.GetPoolConfig(ctx, sp.Pool); api.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	hosts, err := s.hostViews(ctx)
	if err != nil {
		return err
	}
	host, err := volumeHost(hosts, sp.Pool, "", sp.DiskBytes)
	if err != nil {
		return err
	}
	v := api.Volume{Name: "boot-" + sp.ID, ID: newID(), Project: sp.Project, Pool: sp.Pool, SizeBytes: sp.DiskBytes, Image: sp.Image,
		Host: host, VM: sp.Name, Access: []string{sp.Host}, Boot: true, State: api.VolumeCreating, CreatedAt: time.Now().UTC()}
	got, err := s.makeVolume(ctx, v)
	if err != nil {
		return err
	}
	sp.BootVolume = &api.VolumeRef{Name: got.Name, ID: got.ID, Pool: got.Pool, SizeBytes: got.SizeBytes}
	return nil
}

// dropVolume asks the host of volume name to remove it (a boot volume
// whose VM was not made, or is deleted); its record goes once it is gone.
func (s *Server) dropVolume(ctx context.Context, name string) {
	v, err := s.st.GetVolume(ctx, name)
	if err != nil {
		return
	}
	want := v
	want.State, want.Error, want.ErrorKind, want.VM, want.Access = api.VolumeDeleting, "", "", "", nil
	if _, err := s.st.UpdateVolume(ctx, v, want); err != nil {
		s.log.Warn("could not remove a volume", "volume", name, "err", err)
	}
}
