package server

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/cpumodel"
	"github.com/shoalvm/shoal/internal/netdev"
	"github.com/shoalvm/shoal/internal/scheduler"
	"github.com/shoalvm/shoal/internal/store"
)

// cacheState is what the placement cache knows, built from etcd records
// and kept current by applying each change. Not safe for concurrent use:
// placeCache guards it.
type cacheState struct {
	hosts  map[string]*hostEntry
	vms    map[string]*vmAlloc // by VM name
	nets   map[string]*netEntry
	images map[string]api.Image
	pools  map[string]int // storage pool -> number of host records offering it

	snap      []scheduler.Host // known hosts by name, as placement sees them
	snapDirty bool             // a host record came or went: rebuild snap
	baseline  string           // cpumodel.Choose over every host record
	baseDirty bool
}

// hostEntry is one host: its record (if any), liveness, and what the VMs
// placed on it take.
type hostEntry struct {
	name   string
	rec    api.Host
	known  bool // a host record exists
	alive  bool // its liveness lease holds
	vms    int  // VMs placed here, in any power state
	mem    int64
	cpus   int
	groups map[string]int // anti-affinity group -> running VMs of it here
	idx    int            // in snap; -1 when not there
}

// vmAlloc is what one VM takes from its host.
type vmAlloc struct {
	id, host, group string
	target          string // host the VM is migrating to: it holds room there too
	mem             int64
	cpus            int
	running         bool // not stopped: holds memory, vCPUs and its group
	pending         bool // reserved by a create whose write is in flight
}

// netEntry is a network's record and the addresses taken on it.
type netEntry struct {
	rec     api.Network
	known   bool
	pool    netdev.Pool
	poolErr error
	used    map[netip.Addr]ipUse
	low     netip.Addr // every pool address below it is taken
}

// ipUse is one taken address: by which VM id, and whether only reserved.
type ipUse struct {
	id      string
	pending bool
}

func newCacheState() *cacheState {
	return &cacheState{hosts: map[string]*hostEntry{}, vms: map[string]*vmAlloc{}, nets: map[string]*netEntry{},
		images: map[string]api.Image{}, pools: map[string]int{}, baseDirty: true}
}

// apply takes one record (Value nil: deleted) into the state.
func (s *cacheState) apply(c store.Change) {
	kind, rest, _ := strings.Cut(c.Key, "/")
	switch kind {
	case "vms":
		s.putVM(rest, c.Value)
	case "hosts":
		s.putHost(rest, c.Value)
	case "alive":
		s.setAlive(rest, c.Value != nil)
	case "ipam":
		if network, ip, ok := strings.Cut(rest, "/"); ok {
			s.setIP(network, ip, c.Value)
		}
	case "networks":
		s.putNetwork(rest, c.Value)
	case "images":
		var im api.Image
		if c.Value == nil || json.Unmarshal(c.Value, &im) != nil {
			delete(s.images, rest) // an unreadable record is no record, as when listing
			return
		}
		s.images[rest] = im
	}
}

func (s *cacheState) host(name string) *hostEntry {
	e := s.hosts[name]
	if e == nil {
		e = &hostEntry{name: name, idx: -1}
		s.hosts[name] = e
	}
	return e
}

// forget drops an entry that no longer says anything.
func (s *cacheState) forget(e *hostEntry) {
	if !e.known && !e.alive && e.vms == 0 {
		delete(s.hosts, e.name)
	}
}

// sync copies an entry into its place in snap.
func (s *cacheState) sync(e *hostEntry) {
	if e.idx < 0 || s.snapDirty {
		return
	}
	fillHost(&s.snap[e.idx], e)
}

func fillHost(h *scheduler.Host, e *hostEntry) {
	*h = scheduler.Host{Name: e.name, State: hostState(e.rec, e.alive), CPUs: e.rec.CPUs, MemoryMiB: e.rec.MemoryMiB,
		Pools: e.rec.Pools, AllocatedMiB: e.mem, AllocatedCPUs: e.cpus, Groups: e.groups}
	if e.rec.Role == api.HostRoleStorage && h.State == api.HostUp {
		h.State = "storage server" // runs no VM: "not up (state "storage server")"
	}
}

// hostSnapshot returns the known hosts in name order for the scheduler.
// It is the state's own slice: read it only under the cache's lock.
func (s *cacheState) hostSnapshot() []scheduler.Host {
	if !s.snapDirty {
		return s.snap
	}
	names := make([]string, 0, len(s.hosts))
	for name, e := range s.hosts {
		e.idx = -1
		if e.known {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	s.snap = make([]scheduler.Host, len(names))
	for i, name := range names {
		e := s.hosts[name]
		e.idx = i
		fillHost(&s.snap[i], e)
	}
	s.snapDirty = false
	return s.snap
}

func (s *cacheState) putHost(name string, val []byte) {
	var h api.Host
	ok := val != nil && json.Unmarshal(val, &h) == nil // unreadable: no record, as when listing
	e := s.host(name)
	if e.known {
		s.countPools(e.rec.Pools, -1)
		if !ok || !slices.Equal(e.rec.CPUFlags, h.CPUFlags) {
			s.baseDirty = true
		}
	} else if ok {
		s.snapDirty, s.baseDirty = true, true
	}
	if !ok {
		if e.known {
			s.snapDirty = true
		}
		e.rec, e.known = api.Host{}, false
		s.forget(e)
		return
	}
	e.rec, e.known = h, true
	s.countPools(h.Pools, 1)
	s.sync(e)
}

func (s *cacheState) countPools(pools []string, d int) {
	for i, p := range pools {
		if slices.Contains(pools[:i], p) {
			continue
		}
		if s.pools[p] += d; s.pools[p] <= 0 {
			delete(s.pools, p)
		}
	}
}

// knownPools lists the storage pools any host offers, in the order of
// the hosts' names and of each host's list.
func (s *cacheState) knownPools() []string {
	var pools []string
	for _, h := range s.hostSnapshot() {
		for _, p := range s.hosts[h.Name].rec.Pools {
			if !contains(pools, p) {
				pools = append(pools, p)
			}
		}
	}
	return pools
}

// baselineCPU is the most capable CPU model every host can run.
func (s *cacheState) baselineCPU() string {
	if s.baseDirty {
		hosts := s.hostSnapshot()
		flags := make([][]string, 0, len(hosts))
		for _, h := range hosts {
			flags = append(flags, s.hosts[h.Name].rec.CPUFlags)
		}
		s.baseline, s.baseDirty = cpumodel.Choose(flags), false
	}
	return s.baseline
}

func (s *cacheState) setAlive(name string, alive bool) {
	e := s.host(name)
	e.alive = alive
	s.sync(e)
	s.forget(e)
}

func (s *cacheState) putVM(name string, val []byte) {
	old := s.vms[name]
	var sp api.VMSpec
	if val == nil || json.Unmarshal(val, &sp) != nil { // unreadable: no record, as when listing
		if old != nil && !old.pending { // a reservation goes only with its create
			s.account(old, -1)
			delete(s.vms, name)
		}
		return
	}
	cpus, mem := sp.HeldSize()
	v := vmAlloc{id: sp.ID, host: sp.Host, group: sp.AntiAffinity, mem: mem, cpus: cpus,
		running: sp.Power != api.PowerStopped}
	if sp.Migration != nil {
		v.target = sp.Migration.Target
	}
	if old != nil {
		s.account(old, -1)
		*old = v
	} else {
		old = &v
		s.vms[name] = old
	}
	s.account(old, 1)
}

// account adds (d=1) or removes (d=-1) what v takes from its host, and
// from the target of its migration.
func (s *cacheState) account(v *vmAlloc, d int) {
	v.host = s.charge(v.host, v, d, true) // one string per host, however many VMs
	if v.target != "" {
		v.target = s.charge(v.target, v, d, false)
	}
}

// charge adds (d=1) or removes (d=-1) what v takes from one host; count
// says whether v counts among the host's VMs. It returns the host's name.
func (s *cacheState) charge(host string, v *vmAlloc, d int, count bool) string {
	e := s.host(host)
	if count {
		e.vms += d
	}
	if v.running {
		e.mem += int64(d) * v.mem
		e.cpus += d * v.cpus
		if v.group != "" {
			if e.groups == nil {
				e.groups = map[string]int{}
			}
			if e.groups[v.group] += d; e.groups[v.group] <= 0 {
				delete(e.groups, v.group)
			}
		}
	}
	s.sync(e)
	s.forget(e)
	return e.name
}

func (s *cacheState) network(name string) *netEntry {
	n := s.nets[name]
	if n == nil {
		n = &netEntry{used: map[netip.Addr]ipUse{}}
		s.nets[name] = n
	}
	return n
}

func (s *cacheState) putNetwork(name string, val []byte) {
	var rec api.Network
	n := s.network(name)
	if val == nil || json.Unmarshal(val, &rec) != nil {
		n.rec, n.known = api.Network{}, false
		return
	}
	if !n.known || rec.Subnet != n.rec.Subnet {
		n.pool, n.poolErr = netdev.ParsePool(rec.Subnet)
		n.low = n.pool.First
	}
	n.rec, n.known = rec, true
}

func (s *cacheState) setIP(network, ip string, val []byte) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return // not an address: it blocks nothing, as when listing
	}
	n := s.network(network)
	if val != nil {
		n.used[a] = ipUse{id: string(val)}
		return
	}
	if u, ok := n.used[a]; ok && !u.pending {
		n.free(a)
	}
}

func (n *netEntry) free(a netip.Addr) {
	delete(n.used, a)
	if a.Less(n.low) {
		n.low = a
	}
}

// allocIP reserves the lowest free address of a network for VM id. Every
// address below n.low is taken, so the search starts there: allocation
// costs O(1) amortised, not O(addresses in use).
func (s *cacheState) allocIP(network, id string) (netip.Addr, error) {
	n := s.nets[network]
	if n == nil || !n.known {
		return netip.Addr{}, api.Errorf(api.ErrNotFound, "network %q not found", network)
	}
	if n.poolErr != nil {
		return netip.Addr{}, fmt.Errorf("network %s: %w", n.rec.Name, n.poolErr)
	}
	p := n.pool
	a := n.low
	if !a.IsValid() || a.Less(p.First) {
		a = p.First
	}
	for ; a.IsValid() && !p.Last.Less(a); a = a.Next() {
		if _, taken := n.used[a]; !taken && a != p.Gateway {
			n.used[a] = ipUse{id: id, pending: true}
			n.low = a.Next()
			return a, nil
		}
	}
	n.low = a
	return netip.Addr{}, api.Errorf(api.ErrCapacity, "network %s: %v", network, fmt.Errorf("pool %s %w", p.Subnet, netdev.ErrPoolExhausted))
}

// releaseIP frees an address reserved for VM id whose create failed.
func (s *cacheState) releaseIP(network, ip, id string) {
	n := s.nets[network]
	a, err := netip.ParseAddr(ip)
	if n == nil || err != nil {
		return
	}
	if u, ok := n.used[a]; ok && u.pending && u.id == id {
		n.free(a)
	}
}

// adoptPending carries the reservations of creates still in flight over
// from an older state (after a reload).
func (s *cacheState) adoptPending(old *cacheState) {
	for name, v := range old.vms {
		if v.pending && s.vms[name] == nil {
			nv := *v
			s.vms[name] = &nv
			s.account(&nv, 1)
		}
	}
	for name, on := range old.nets {
		for a, u := range on.used {
			if !u.pending {
				continue
			}
			n := s.network(name)
			if _, ok := n.used[a]; !ok {
				n.used[a] = u
			}
		}
	}
}
