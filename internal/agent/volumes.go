package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/pool"
	"github.com/shoalvm/shoal/internal/pool/dir"
	"github.com/shoalvm/shoal/internal/storage"
)

// volumeJobs runs the work on volumes this host is asked to do (their
// records name it): one job at a time per volume; a change that arrives
// while one runs is done next, the latest only.
type volumeJobs struct {
	mu   sync.Mutex
	busy map[string]bool
	next map[string]*api.Volume
}

// volumeEvent takes a volume record the control plane sent this host.
func (a *Agent) volumeEvent(ctx context.Context, v api.Volume) {
	a.servedVolumes(ctx, []api.Volume{v}, false)
	switch v.State {
	case api.VolumeCreating, api.VolumeResizing, api.VolumeDeleting:
	default:
		return
	}
	if v.Error != "" {
		return // it failed: nothing more until someone asks again
	}
	j := &a.volumes
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.busy == nil {
		j.busy, j.next = map[string]bool{}, map[string]*api.Volume{}
	}
	if j.busy[v.Name] {
		j.next[v.Name] = &v
		return
	}
	j.busy[v.Name] = true
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			a.volumeJob(ctx, v)
			j.mu.Lock()
			n := j.next[v.Name]
			delete(j.next, v.Name)
			if n == nil || ctx.Err() != nil {
				delete(j.busy, v.Name)
				j.mu.Unlock()
				return
			}
			j.mu.Unlock()
			v = *n
		}
	}()
}

// volumeJob does what v's state asks and reports the outcome.
func (a *Agent) volumeJob(ctx context.Context, v api.Volume) {
	log := a.log.With("volume", v.Name, "id", v.ID, "pool", v.Pool)
	out := v
	err := a.doVolume(ctx, v)
	switch {
	case err != nil:
		out.Error = err.Error()
		_, out.ErrorKind = api.HTTPStatus(err)
		if v.State == api.VolumeCreating {
			out.State = api.VolumeFailed
		} else if v.State == api.VolumeResizing {
			out.State = api.VolumeReady
		}
		log.Warn("volume job failed", "state", v.State, "err", err)
	case v.State != api.VolumeDeleting:
		out.State, out.DoneBytes = api.VolumeReady, v.SizeBytes
		log.Info("volume ready", "size", v.SizeBytes)
	default:
		log.Info("volume deleted")
	}
	for try := 0; ctx.Err() == nil; try++ {
		err := a.cp.VolumeDone(ctx, a.cfg.Host, out)
		if err == nil || api.IsNotFound(err) || try == 10 {
			return
		}
		if errors.Is(err, api.ErrConflict) {
			return // the record changed: its new state comes as an event
		}
		log.Warn("could not report a volume's outcome; retrying", "err", err)
		sleep(ctx, time.Second)
	}
}

// doVolume makes, grows or removes v's storage.
func (a *Agent) doVolume(ctx context.Context, v api.Volume) error {
	d, baseOf, err := a.volumeDriver(ctx, v.Pool)
	if err != nil {
		return err
	}
	switch v.State {
	case api.VolumeCreating:
		base := ""
		if v.Image != "" {
			if base, err = baseOf(ctx, v.Image); err != nil {
				return err
			}
		}
		return d.Create(ctx, pool.Volume{ID: v.ID, SizeBytes: v.SizeBytes, Base: base})
	case api.VolumeResizing:
		if v.VM != "" {
			return api.Errorf(api.ErrConflict, "volume %q is attached to vm %s: growing a volume in use is not supported yet", v.Name, v.VM)
		}
		return d.Resize(ctx, v.ID, v.SizeBytes)
	case api.VolumeDeleting:
		return d.Delete(ctx, v.ID)
	}
	return nil
}

// volumeBase is the base a volume of image name starts from, where
// every host of pool p finds it.
func (a *Agent) volumeBase(ctx context.Context, p storage.Pool, name string) (string, error) {
	base, im, err := a.imageBase(ctx, name)
	if err != nil || !p.Shared || p.Dir == "" { // a host's own, or a network pool's (which copies it in)
		return base, err
	}
	shared := p.ImageBase(name, image.Version(im))
	if err := storage.EnsureCopy(base, shared); err != nil {
		return "", err
	}
	return shared, nil
}

// driverOf is the driver of one of this host's pools.
func driverOf(p storage.Pool) pool.Driver { return dir.Driver{Name: p.Name, Dir: p.Dir} }

// poolSpaces is what this host reports of its pools' space.
func (a *Agent) poolSpaces(ctx context.Context) []api.PoolSpace {
	out := make([]api.PoolSpace, 0, len(a.cfg.Pools))
	for _, p := range a.cfg.Pools {
		c, err := driverOf(p).Capacity(ctx)
		if err != nil {
			a.log.Warn("cannot read a pool's space", "pool", p.Name, "err", err)
			continue
		}
		out = append(out, api.PoolSpace{Name: p.Name, Type: "dir", Shared: p.Shared,
			SizeBytes: c.SizeBytes, UsedBytes: c.UsedBytes, FreeBytes: c.FreeBytes})
	}
	served := a.servedSpaces(ctx)
	for _, ps := range a.netPoolSpaces() {
		if !slices.ContainsFunc(served, func(s api.PoolSpace) bool { return s.Name == ps.Name }) {
			served = append(served, ps)
		}
	}
	return append(out, served...)
}
