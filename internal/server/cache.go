package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/store"
)

// placeCache is the server's view of what placement needs: hosts, their
// liveness and what the VMs on them take, storage pools, the CPU
// baseline, networks with the addresses taken on them, and images. It is
// read from etcd once and then kept current by one watch on Shoal's whole
// keyspace, so that a create costs O(hosts) in memory and no listing.
//
// Consistency: a caller passes the store revision of a linearizable read
// it made (see store.VMExists, store.Revision) and the cache first waits
// until it has applied every change up to that revision, so it never
// answers from an older state than etcd would have (read-your-writes
// across API calls, agents and other servers).
//
// Creates are serialized through it: placement and the reservation of the
// chosen host's capacity and of an address happen under one lock, so
// concurrent creates never double-book. The create's write then goes to
// etcd outside the lock; a reservation becomes an ordinary allocation when
// the write succeeds (write-through; the watch confirms it) and is
// released when it fails.
type placeCache struct {
	st  *store.Store
	log *slog.Logger

	// progress asks the current watch for a progress notification, so
	// that a caller waiting for a revision learns when nothing it
	// watches changed up to it.
	progress chan struct{}

	mu      sync.Mutex
	state   *cacheState
	loaded  bool          // state is current and a watch keeps it so
	gen     uint64        // bumped at each load; older watches stop
	rev     int64         // every change up to here is applied
	changed chan struct{} // closed when rev or loaded changes
}

// progressAfter is how long a caller waits for the watch before asking
// etcd for a progress notification.
const progressAfter = 20 * time.Millisecond

func newPlaceCache(st *store.Store, log *slog.Logger) *placeCache {
	return &placeCache{st: st, log: log, progress: make(chan struct{}, 1), changed: make(chan struct{})}
}

// lockAt returns with c.mu held once the state reflects every change up
// to rev, loading it first if needed.
func (c *placeCache) lockAt(ctx context.Context, rev int64) error {
	c.mu.Lock()
	for {
		if !c.loaded {
			if err := c.loadLocked(ctx); err != nil {
				c.mu.Unlock()
				return err
			}
		}
		if c.rev >= rev {
			return nil
		}
		ch := c.changed
		c.mu.Unlock()
		t := time.NewTimer(progressAfter)
		select {
		case <-ch:
		case <-t.C:
			select {
			case c.progress <- struct{}{}:
			default:
			}
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("placement cache at revision %d: %w: %w", rev, api.ErrUnavailable, ctx.Err())
		}
		t.Stop()
		c.mu.Lock()
	}
}

// notifyLocked wakes the callers waiting in lockAt.
func (c *placeCache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// loadPrefixes are the parts of the keyspace the cache reads.
var loadPrefixes = []string{"hosts/", "alive/", "vms/", "ipam/", "networks/", "images/"}

// loadLocked reads the state from etcd at one revision and starts the
// watch that keeps it current. Reservations in flight survive it.
func (c *placeCache) loadLocked(ctx context.Context) error {
	fresh := newCacheState()
	var rev int64
	for _, p := range loadPrefixes {
		r, err := c.st.Range(ctx, p, rev, fresh.apply)
		if err != nil {
			return fmt.Errorf("load placement cache: %w", err)
		}
		rev = r
	}
	if c.state != nil {
		fresh.adoptPending(c.state)
	}
	c.state, c.loaded, c.rev = fresh, true, max(c.rev, rev)
	c.gen++
	go c.follow(c.gen, rev+1)
	c.notifyLocked()
	c.log.Debug("placement cache loaded", "revision", rev, "hosts", len(fresh.hosts), "vms", len(fresh.vms))
	return nil
}

var errStaleWatch = errors.New("placement cache reloaded")

// follow applies the changes from revision from on until the watch
// breaks; the next caller then reloads.
func (c *placeCache) follow(gen uint64, from int64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := c.st.WatchAll(ctx, from, c.progress, func(changes []store.Change, upTo int64) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.gen != gen {
			return errStaleWatch
		}
		for _, ch := range changes {
			c.state.apply(ch)
		}
		if upTo > c.rev {
			c.rev = upTo
			c.notifyLocked()
		}
		return nil
	})
	c.mu.Lock()
	if c.gen == gen {
		c.loaded = false
		c.notifyLocked()
	}
	c.mu.Unlock()
	if !errors.Is(err, errStaleWatch) {
		c.log.Info("placement cache watch ended; the next request reloads it", "err", err)
	}
}

// catalog is what validating a create needs from the cache.
type catalog struct {
	image    api.Image
	imageOK  bool
	network  bool     // the network exists
	poolOK   bool     // some host offers the pool, or no host offers any
	pools    []string // every pool, when !poolOK
	baseline string
}

// lookup answers what planVM needs to know, as of revision rev or later.
func (c *placeCache) lookup(ctx context.Context, rev int64, image, network, pool string) (catalog, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return catalog{}, err
	}
	defer c.mu.Unlock()
	s := c.state
	var out catalog
	out.image, out.imageOK = s.images[image]
	n := s.nets[network]
	out.network = n != nil && n.known
	out.poolOK = len(s.pools) == 0 || s.pools[pool] > 0
	if !out.poolOK {
		out.pools = s.knownPools()
	}
	out.baseline = s.baselineCPU()
	return out, nil
}

// reserve places sp (setting its Host and IP) and holds the chosen host's
// capacity and the address for it until commit or release.
func (c *placeCache) reserve(ctx context.Context, rev int64, sp *api.VMSpec, pol scheduler.Policy) error {
	if err := c.lockAt(ctx, rev); err != nil {
		return err
	}
	defer c.mu.Unlock()
	s := c.state
	if s.vms[sp.Name] != nil { // created (or being created) since the caller looked
		return api.Errorf(api.ErrConflict, "vm %q already exists", sp.Name)
	}
	hosts := s.hostSnapshot()
	pool := sp.Pool
	if s.pools[pool] == len(hosts) {
		pool = "" // every host offers it: the filter would reject none, and costs a search per host
	}
	d, err := scheduler.PlaceSorted(hosts, scheduler.Request{
		// Networks are cluster-wide (checked in planVM), so no host lacks one.
		Name: sp.Name, CPUs: sp.CPUs, MemoryMiB: sp.MemoryMiB,
		Pool: pool, Host: sp.Host, AntiAffinity: sp.AntiAffinity,
	}, pol)
	if err != nil {
		return err
	}
	ip, err := s.allocIP(sp.Network, sp.ID)
	if err != nil {
		return err
	}
	sp.Host, sp.IP = d.Host, ip.String()
	v := &vmAlloc{id: sp.ID, host: sp.Host, group: sp.AntiAffinity, mem: sp.MemoryMiB, cpus: sp.CPUs,
		running: sp.Power != api.PowerStopped, pending: true}
	s.vms[sp.Name] = v
	s.account(v, 1)
	return nil
}

// readdress gives a reservation whose address or MAC was taken meanwhile
// a new id and MAC and another address, once the cache has seen the
// store at revision rev (which shows who took them).
func (c *placeCache) readdress(ctx context.Context, rev int64, sp *api.VMSpec, id string) error {
	if err := c.lockAt(ctx, rev); err != nil {
		return err
	}
	defer c.mu.Unlock()
	s := c.state
	s.releaseIP(sp.Network, sp.IP, sp.ID)
	v := s.vms[sp.Name]
	if v == nil || !v.pending || v.id != sp.ID {
		return api.Errorf(api.ErrConflict, "vm %q already exists", sp.Name)
	}
	ip, err := s.allocIP(sp.Network, id)
	if err != nil {
		s.account(v, -1)
		delete(s.vms, sp.Name)
		return err
	}
	v.id, sp.ID, sp.MAC, sp.IP = id, id, netdev.MAC(id), ip.String()
	return nil
}

// commit turns the reservation of sp, now written to etcd, into an
// allocation.
func (c *placeCache) commit(sp api.VMSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	if v := s.vms[sp.Name]; v != nil && v.pending && v.id == sp.ID {
		v.pending = false
	}
	if n := s.nets[sp.Network]; n != nil {
		if a, err := netip.ParseAddr(sp.IP); err == nil {
			if u, ok := n.used[a]; ok && u.pending && u.id == sp.ID {
				n.used[a] = ipUse{id: sp.ID}
			}
		}
	}
}

// release drops the reservation of sp, whose create was not written.
func (c *placeCache) release(sp api.VMSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	if v := s.vms[sp.Name]; v != nil && v.pending && v.id == sp.ID {
		s.account(v, -1)
		delete(s.vms, sp.Name)
	}
	s.releaseIP(sp.Network, sp.IP, sp.ID)
}

// hostViews returns every host with its liveness and allocations, as of
// revision rev or later.
func (c *placeCache) hostViews(ctx context.Context, rev int64, hb Heartbeats) ([]api.Host, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	snap := s.hostSnapshot()
	out := make([]api.Host, 0, len(snap))
	for _, sh := range snap {
		out = append(out, s.hosts[sh.Name].view(hb))
	}
	return out, nil
}

// hostView returns one host (ok false if there is no such record).
func (c *placeCache) hostView(ctx context.Context, rev int64, name string, hb Heartbeats) (api.Host, bool, error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return api.Host{}, false, err
	}
	defer c.mu.Unlock()
	e := c.state.hosts[name]
	if e == nil || !e.known {
		return api.Host{}, false, nil
	}
	return e.view(hb), true, nil
}

// view is the API's view of a host: its record with state and
// allocations filled in.
func (e *hostEntry) view(hb Heartbeats) api.Host {
	h := e.rec
	h.State = hostState(h, e.alive)
	if hb != nil {
		if t, ok := hb.LastHeartbeat(h.Name); ok {
			h.LastHeartbeat = t.UTC()
		}
	}
	h.VMs += e.vms
	h.AllocatedMiB += e.mem
	return h
}

// admitStart checks that the host of a stopped VM still has room for it
// and accounts it as running at once, so that concurrent starts (and
// creates) cannot overbook the host. undo gives the room back if the start
// is not written after all.
func (c *placeCache) admitStart(ctx context.Context, rev int64, name string, pol scheduler.Policy) (undo func(), err error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	v := s.vms[name]
	if v == nil || v.running {
		return func() {}, nil
	}
	if e := s.hosts[v.host]; e != nil && e.rec.State == api.HostMaintenance {
		return nil, api.Errorf(api.ErrConflict, "vm %q belongs to host %s, which is in maintenance: put the host back in service ('shoal host resume %s') to start it there",
			name, v.host, v.host)
	}
	if _, err := scheduler.PlaceSorted(s.hostSnapshot(), scheduler.Request{Name: name, CPUs: v.cpus, MemoryMiB: v.mem,
		Host: v.host, AntiAffinity: v.group}, pol); err != nil {
		return nil, err
	}
	s.account(v, -1)
	v.running = true
	s.account(v, 1)
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cur := c.state.vms[name]; cur == v && v.running {
			c.state.account(v, -1)
			v.running = false
			c.state.account(v, 1)
		}
	}, nil
}

// reserveMigration chooses where VM sp (running on sp.Host, with its
// migration's size in sp.Migration) can move (to: the user's choice, "" =
// the scheduler's) and holds room there, as
// if the migration were written already; undo gives the room back if it
// is not written after all. (Once written, the VM's record holds it.)
func (c *placeCache) reserveMigration(ctx context.Context, rev int64, sp api.VMSpec, to string, pol scheduler.Policy) (string, func(), error) {
	if err := c.lockAt(ctx, rev); err != nil {
		return "", nil, err
	}
	defer c.mu.Unlock()
	s := c.state
	v := s.vms[sp.Name]
	if v == nil || v.id != sp.ID {
		return "", nil, api.Errorf(api.ErrConflict, "vm %q changed meanwhile, try again", sp.Name)
	}
	cpus, mem := sp.HeldSize() // sp.Migration has the size it runs at
	d, err := scheduler.PlaceSorted(s.hostSnapshot(), scheduler.Request{Name: sp.Name, CPUs: cpus, MemoryMiB: mem,
		Pool: sp.Pool, Host: to, AntiAffinity: sp.AntiAffinity, Exclude: []string{sp.Host}}, pol)
	if err != nil {
		return "", nil, err
	}
	oldCPUs, oldMem := v.cpus, v.mem
	s.account(v, -1)
	v.target, v.cpus, v.mem = d.Host, cpus, mem
	s.account(v, 1)
	return d.Host, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cur := c.state.vms[sp.Name]; cur == v && v.target == d.Host {
			c.state.account(v, -1)
			v.target, v.cpus, v.mem = "", oldCPUs, oldMem
			c.state.account(v, 1)
		}
	}, nil
}
