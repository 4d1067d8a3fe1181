package agentapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
)

// Local is the control plane as seen from inside the server: the store.
type Local struct {
	st  *store.Store
	log *slog.Logger

	mu     sync.Mutex
	leases map[string]lease     // host -> liveness lease and who holds it
	beats  map[string]time.Time // host -> last heartbeat seen here
}

// NewLocal returns a control plane backed by the store.
func NewLocal(st *store.Store, log *slog.Logger) *Local {
	return &Local{st: st, log: log, leases: map[string]lease{}, beats: map[string]time.Time{}}
}

// LastHeartbeat returns when host last registered through this process.
func (l *Local) LastHeartbeat(host string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.beats[host]
	return t, ok
}

// lease is a host's liveness lease and the facts it registered with.
type lease struct {
	id   clientv3.LeaseID
	host api.Host // as registered, heartbeat time cleared
}

// claimGrace is how long a host record must have been silent before a
// machine with another identity may take the name over.
const claimGrace = 2 * time.Minute

// Register implements Reporter. The host record is written when it
// changes; liveness is an etcd lease renewed on every call.
func (l *Local) Register(ctx context.Context, h api.Host, ttl time.Duration) error {
	facts := h
	facts.LastHeartbeat = time.Time{}
	l.mu.Lock()
	cur, known := l.leases[h.Name]
	l.mu.Unlock()
	// The fast path: the same machine with the same facts only renews.
	if known && reflect.DeepEqual(cur.host, facts) {
		if err := l.st.RenewAlive(ctx, h.Name, cur.id); err == nil {
			l.beat(h.Name)
			return nil
		}
	}
	alive, err := l.st.HostAlive(ctx, h.Name)
	if err != nil {
		return err
	}
	err = l.st.ClaimHost(ctx, h, func(cur *api.Host) (api.Host, error) {
		if cur == nil {
			return h, nil
		}
		if cur.ID != "" && cur.ID != h.ID && (alive || time.Since(cur.LastHeartbeat) < claimGrace) {
			return h, api.Errorf(api.ErrConflict, "host %q is in use by another machine (id %s); give this one another --host name", h.Name, cur.ID)
		}
		if cur.State == api.HostMaintenance {
			h.State = cur.State // an operator's decision, not the agent's
		}
		return h, nil
	})
	if err != nil {
		return fmt.Errorf("register host %s: %w", h.Name, err)
	}
	id := cur.id
	if !known || cur.host.ID != h.ID || l.st.RenewAlive(ctx, h.Name, id) != nil {
		if id, err = l.st.MarkAlive(ctx, h.Name, ttl); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.leases[h.Name] = lease{id: id, host: facts}
	l.mu.Unlock()
	l.beat(h.Name)
	return nil
}

func (l *Local) beat(host string) {
	l.mu.Lock()
	l.beats[host] = time.Now()
	l.mu.Unlock()
}

// Report implements Reporter.
func (l *Local) Report(ctx context.Context, st api.VMStatus) error { return l.st.PutOwnStatus(ctx, st) }

// Status implements Reporter.
func (l *Local) Status(ctx context.Context, id string) (api.VMStatus, error) {
	return l.st.GetStatus(ctx, id)
}

// GuestStopped implements Reporter.
func (l *Local) GuestStopped(ctx context.Context, s api.VMSpec) (api.VMSpec, error) {
	return l.st.UpdateVM(ctx, s.Name, func(v *api.VMSpec) error {
		if v.ID != s.ID || v.Rev != s.Rev {
			return api.Errorf(api.ErrConflict, "vm %q changed meanwhile", s.Name)
		}
		v.Power, v.StopForce = api.PowerStopped, false
		return nil
	})
}

// Removed implements Reporter.
func (l *Local) Removed(ctx context.Context, s api.VMSpec) error {
	if err := l.st.RemoveVM(ctx, s); err != nil && !api.IsNotFound(err) {
		return err
	}
	// Its boot volume goes with it.
	if b := s.BootVolume; b != nil {
		if v, err := l.st.GetVolume(ctx, b.Name); err == nil && v.ID == b.ID {
			want := v
			want.State, want.Error, want.ErrorKind, want.VM, want.Access = api.VolumeDeleting, "", "", "", nil
			if _, err := l.st.UpdateVolume(ctx, v, want); err != nil {
				l.log.Warn("could not remove a deleted VM's boot volume", "vm", s.Name, "volume", b.Name, "err", err)
			}
		}
	}
	// Its volumes are free: their data stays (delete them apart). One
	// left taken after a crash here is freed when next used (see
	// server.releaseStale).
	for _, r := range s.Volumes {
		if _, err := l.st.FreeVolume(ctx, s.Name, r.Name, func(api.VMSpec) bool { return false }); err != nil && !api.IsNotFound(err) {
			l.log.Warn("could not free a deleted VM's volume", "vm", s.Name, "volume", r.Name, "err", err)
		}
	}
	return nil
}

// Pools implements Catalog. A managed iSCSI pool's portal is its
// storage server's, as its host record says, so that hosts reach its
// LUNs.
func (l *Local) Pools(ctx context.Context) ([]api.PoolConfig, error) {
	cs, err := l.st.ListPoolConfigs(ctx)
	if err != nil {
		return nil, err
	}
	for i, c := range cs {
		if c.Server == "" || c.Portal != "" {
			continue
		}
		if h, err := l.st.GetHost(ctx, c.Server); err == nil {
			cs[i].Portal = h.Portal
		}
	}
	return cs, nil
}

// Network implements Catalog.
func (l *Local) Network(ctx context.Context, name string) (api.Network, error) {
	return l.st.GetNetwork(ctx, name)
}

// Image implements Catalog.
func (l *Local) Image(ctx context.Context, name string) (api.Image, error) {
	return l.st.GetImage(ctx, name)
}

// FetchImage implements Catalog: a local agent shares the library.
func (l *Local) FetchImage(context.Context, string, string) error { return nil }

// WatchVMs implements Source with etcd watches on the VM specs and on
// the volumes, from one revision.
func (l *Local) WatchVMs(ctx context.Context, host string, fn func(Event) error) error {
	specs, rev, err := l.st.ListVMsStrict(ctx)
	if err != nil {
		return err
	}
	mine := make([]api.VMSpec, 0)
	for _, s := range specs {
		if s.OnHost(host) {
			mine = append(mine, s)
		}
	}
	vols, err := l.st.ListVolumesAt(ctx, rev)
	if err != nil {
		return err
	}
	var myVols []api.Volume
	for _, v := range vols {
		if v.Host == host {
			myVols = append(myVols, v)
		}
	}
	if err := fn(Event{Snapshot: true, Specs: mine, Volumes: myVols}); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := l.st.Client().Watch(wctx, store.VMPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	vch := l.st.Client().Watch(wctx, store.VolumePrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var resp clientv3.WatchResponse
		var ok, vms bool
		select {
		case resp, ok = <-wch:
			vms = true
		case resp, ok = <-vch:
		}
		if !ok {
			return ctx.Err()
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch vms: %w", err)
		}
		for _, ev := range resp.Events {
			out, ok := l.vmEvent(ev, host)
			if !vms {
				out, ok = l.volumeEvent(ev, host)
			}
			if !ok {
				continue
			}
			if err := fn(out); err != nil {
				return err
			}
		}
	}
}

// vmEvent is the Event for host of a change of a VM spec, if it has one.
func (l *Local) vmEvent(ev *clientv3.Event, host string) (Event, bool) {
	var prev, cur api.VMSpec
	if ev.PrevKv != nil {
		_ = json.Unmarshal(ev.PrevKv.Value, &prev)
	}
	if ev.Type == clientv3.EventTypePut {
		if err := json.Unmarshal(ev.Kv.Value, &cur); err != nil {
			l.log.Warn("bad vm record", "key", string(ev.Kv.Key), "err", err)
			return Event{}, false
		}
		cur.Rev = ev.Kv.ModRevision
	}
	switch {
	case cur.ID != "" && cur.OnHost(host):
		return Event{Spec: &cur}, true
	case prev.ID != "" && prev.OnHost(host):
		return Event{Gone: prev.ID}, true // deleted, or moved to another host
	}
	return Event{}, false
}

// volumeEvent is the Event for host of a change of a volume, if host
// works on it.
func (l *Local) volumeEvent(ev *clientv3.Event, host string) (Event, bool) {
	if ev.Type != clientv3.EventTypePut {
		return Event{}, false
	}
	v, err := store.DecodeVolume(ev.Kv)
	if err != nil {
		l.log.Warn("bad volume record", "key", string(ev.Kv.Key), "err", err)
		return Event{}, false
	}
	if v.Host != host {
		return Event{}, false
	}
	return Event{Volume: &v}, true
}

// VolumeDone implements Reporter.
func (l *Local) VolumeDone(ctx context.Context, host string, v api.Volume) error {
	cur, err := l.st.GetVolume(ctx, v.Name)
	if err != nil {
		return err
	}
	if cur.ID != v.ID || cur.Host != host || cur.Rev != v.Rev {
		return api.Errorf(api.ErrConflict, "volume %q changed meanwhile", v.Name)
	}
	if cur.State == api.VolumeDeleting && v.Error == "" {
		return l.st.RemoveVolume(ctx, cur)
	}
	done := cur
	done.State, done.Error, done.ErrorKind, done.DoneBytes = v.State, v.Error, v.ErrorKind, v.DoneBytes
	if cur.State == api.VolumeResizing && v.Error != "" {
		done.SizeBytes = v.DoneBytes // not grown: its quota back
	}
	_, err = l.st.UpdateVolume(ctx, cur, done)
	return err
}

// migrationOf checks that v is the VM of s and that host is the target of
// the same migration as s.
func migrationOf(v *api.VMSpec, host string, s api.VMSpec) error {
	if v.ID != s.ID || v.Migration == nil || s.Migration == nil || v.Migration.ID != s.Migration.ID {
		return api.Errorf(api.ErrConflict, "the migration of vm %q was cancelled or replaced", s.Name)
	}
	if v.Migration.Target != host {
		return notYours(host, "the migration of vm "+s.Name)
	}
	return nil
}

// MigrationReady implements Reporter.
func (l *Local) MigrationReady(ctx context.Context, host string, s api.VMSpec, ep api.MigrationEndpoint) error {
	_, err := l.st.UpdateVM(ctx, s.Name, func(v *api.VMSpec) error {
		if err := migrationOf(v, host, s); err != nil {
			return err
		}
		v.Migration.Endpoint = &ep
		return nil
	})
	return err
}

// CommitMigration implements Reporter: the switch of ownership.
//
// With post-copy allowed, QEMU keeps a return path from the target to the
// source, and a source can then fail the migration (and resume its guest
// on its own) after the target received everything: the target may only
// commit once the source has said that it completed, or that it switched
// to post-copy, after which it never resumes. Without a return path, a
// complete stream on the target means the source completed too.
func (l *Local) CommitMigration(ctx context.Context, host string, s api.VMSpec) (api.VMSpec, error) {
	if s.Migration != nil && s.Migration.Options.PostcopyAfterMs > 0 {
		rec, err := l.st.ActiveMigration(ctx, s.ID)
		if err != nil {
			return s, err
		}
		if p := rec.Progress; rec.ID != s.Migration.ID || p == nil || p.ID != rec.ID || (p.Phase != api.MigrationCompleted && !p.Postcopy) {
			return s, api.Errorf(api.ErrUnavailable, "the source %s has not confirmed the end of the migration of vm %q yet", s.Migration.Source, s.Name)
		}
	}
	return l.st.UpdateVM(ctx, s.Name, func(v *api.VMSpec) error {
		if err := migrationOf(v, host, s); err != nil {
			return err
		}
		if v.Migration.Endpoint == nil {
			return api.Errorf(api.ErrConflict, "the migration of vm %q has not started", s.Name)
		}
		v.Host, v.Migration = host, nil
		return nil
	})
}

// MigrationProgress implements Reporter.
func (l *Local) MigrationProgress(ctx context.Context, host, vmID string, p api.MigrationProgress) error {
	_, err := l.st.UpdateMigration(ctx, vmID, func(r *api.MigrationRecord) error {
		if r.ID != p.ID {
			return api.Errorf(api.ErrConflict, "migration %s of vm %s is over", p.ID, r.VM)
		}
		if p.Phase == "resumed" && r.To == host {
			r.SwitchMs, r.ResumedAt = p.SwitchMs, p.ResumedAt
			return nil
		}
		if r.From != host {
			return notYours(host, "the migration of vm "+r.VM)
		}
		if r.Progress != nil && r.Progress.Postcopy {
			p.Postcopy = true // once in post-copy, the record says so for good
		}
		r.Progress = &p
		return nil
	})
	return err
}

// Servers returns the live control-plane replicas, for agents to know
// where else to turn.
func (l *Local) Servers(ctx context.Context) ([]api.Server, error) { return l.st.ListServers(ctx) }

// ClaimStart implements Reporter.
func (l *Local) ClaimStart(ctx context.Context, host string, s api.VMSpec) error {
	return l.st.ClaimStart(ctx, host, s.Name, s.ID)
}

// Crashed implements Reporter: only for a VM of host's.
func (l *Local) Crashed(ctx context.Context, host string, s api.VMSpec, reason, what string, gaveUp bool) error {
	cur, err := l.st.GetVM(ctx, s.Name)
	if err != nil {
		return err
	}
	if cur.ID != s.ID || cur.Host != host {
		return api.Errorf(api.ErrConflict, "vm %q is not host %s's", s.Name, host)
	}
	e := api.Event{Kind: api.EventVMCrashed, Severity: api.SeverityWarning, VM: s.Name, Host: host,
		Message: fmt.Sprintf("vm %s crashed on %s: %s; %s", s.Name, host, reason, what)}
	if gaveUp {
		e.Severity = api.SeverityError
	}
	_, err = l.st.AppendEvent(ctx, e)
	return err
}
