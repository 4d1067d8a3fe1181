// Package scheduler decides where VMs run. Pure: no I/O, no clock.
//
// Placement runs in two steps over a snapshot of the hosts. Filters drop the
// hosts that cannot take the VM, each with a short reason; scoring picks the
// best of the rest. The answer is a Decision (a plan); the caller does the
// I/O that carries it out. Equal inputs give equal decisions.
//
// Filters, in the order they are tried (a host is rejected with the reason of
// the first one it fails):
//
//	excluded           "excluded"                      (Request.Exclude)
//	state              "down", "in maintenance", `not up (state "x")`
//	network            `no network "x"`
//	storage pool       `no pool "x"`
//	CPU compatibility  "CPU lacks feature(s) a, b"
//	anti-affinity      `already runs a VM of group "g"`
//	memory             "180 MiB free, needs 256 MiB"
//	CPU count          "has 4 CPUs, needs 8" (a VM never gets more vCPUs than its host has CPUs)
//	CPU                "2 vCPUs free, needs 4"
//
// A pinned request (Request.Host) considers only that host.
//
// Scoring: "spread" (the default) prefers the host with the largest fraction
// of its memory still free after placing the VM; "pack" prefers the smallest.
// Ties go to the host with more (spread) or less (pack) vCPU headroom, then
// to the lower host name.
package scheduler

import (
	"cmp"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strconv"

	"github.com/shoalvm/shoal/internal/api"
)

// Strategies of Policy.Strategy.
const (
	StrategySpread = "spread"
	StrategyPack   = "pack"
)

// Defaults of Policy when its fields are zero.
const (
	DefaultMemOvercommit = 1.0
	DefaultCPUOvercommit = 4.0
)

// Host is what placement needs to know about one host.
type Host struct {
	Name          string
	State         string         // api.HostUp, api.HostDown, api.HostMaintenance
	CPUs          int            // physical cores/threads
	MemoryMiB     int64          // total usable for VMs
	AllocatedMiB  int64          // memory of VMs placed here (not stopped)
	AllocatedCPUs int            // vCPUs of VMs placed here
	Networks      []string       // networks the host has
	Pools         []string       // storage pools the host has
	CPUFeatures   []string       // CPU flags of the host; hosts with equal lists may share one slice (it is faster)
	Groups        map[string]int // anti-affinity group -> number of VMs of that group on this host
}

// Request is a VM to place.
type Request struct {
	Name         string
	CPUs         int
	MemoryMiB    int64
	Network      string   // "" = none required
	Pool         string   // "" = none required
	Host         string   // pinned host ("" = any)
	AntiAffinity string   // group name ("" = none)
	CPUFeatures  []string // features the VM's CPU model needs
	Exclude      []string // hosts not to use (e.g. the migration source)
}

// Policy tunes placement.
type Policy struct {
	Strategy      string  // StrategySpread (default when "") or StrategyPack
	MemOvercommit float64 // 1.0 = no overcommit (default when 0)
	CPUOvercommit float64 // vCPUs per host CPU, DefaultCPUOvercommit when 0
}

// Rejection says why a host was filtered out.
type Rejection struct{ Host, Reason string }

// Decision is the outcome of placing one VM.
type Decision struct {
	Host       string      // the chosen host ("" when none fits)
	Score      float64     // of the chosen host, 0..1, higher is better (see Score)
	Rejections []Rejection // hosts filtered out, with why (sorted by host name)
}

// Result is the outcome of one request of a Plan.
type Result struct {
	Decision Decision
	Err      error
}

// Place picks a host for req.
//
// Errors: api.ErrInvalid for a bad request or policy; api.ErrUnavailable
// "no hosts have joined yet" when hosts is empty; api.ErrNotFound
// `host "x" not found` when the pinned host does not exist; api.ErrCapacity
// when no host fits, with a message naming each host and why, e.g.
//
//	no host fits vm "web1": host1: 180 MiB free, needs 256 MiB; host2: down
//
// (after 20 hosts the rest are summarised by reason). With ErrCapacity the
// Decision still carries the Rejections.
//
// Score is the free memory fraction of the chosen host after placement
// (spread) or its used fraction (pack).
func Place(hosts []Host, req Request, pol Policy) (Decision, error) {
	p, err := newPlacer(req, pol)
	if err != nil {
		return Decision{}, err
	}
	_, d, err := p.place(hosts)
	return d, err
}

// PlaceSorted is Place for hosts already in name order, as a driver's
// snapshot keeps them: a full tie goes to the first of the tied hosts,
// found without comparing names (at thousands of equal hosts, comparing
// their names was a tenth of a placement's CPU). Hosts out of order get
// a valid host, but not necessarily the lower name of a tie.
func PlaceSorted(hosts []Host, req Request, pol Policy) (Decision, error) {
	p, err := newPlacer(req, pol)
	if err != nil {
		return Decision{}, err
	}
	p.sorted = true
	_, d, err := p.place(hosts)
	return d, err
}

// Plan places reqs in order, each decision seeing the allocations (memory,
// vCPUs, anti-affinity groups) of the earlier ones, as drains, failovers and
// batch creates need. It returns one Result per request; a request that fails
// does not stop the others. hosts is not modified.
func Plan(hosts []Host, reqs []Request, pol Policy) []Result {
	out := make([]Result, len(reqs))
	work := slices.Clone(hosts)
	var ownGroups map[int]bool // hosts of work whose Groups map is our own copy
	for i, req := range reqs {
		p, err := newPlacer(req, pol)
		if err != nil {
			out[i].Err = err
			continue
		}
		idx, d, err := p.place(work)
		out[i] = Result{Decision: d, Err: err}
		if err != nil {
			continue
		}
		h := &work[idx]
		h.AllocatedMiB += req.MemoryMiB
		h.AllocatedCPUs += req.CPUs
		if req.AntiAffinity != "" {
			if !ownGroups[idx] {
				g := maps.Clone(h.Groups)
				if g == nil {
					g = map[string]int{}
				}
				h.Groups = g
				if ownGroups == nil {
					ownGroups = map[int]bool{}
				}
				ownGroups[idx] = true
			}
			h.Groups[req.AntiAffinity]++
		}
	}
	return out
}

// Baseline returns the CPU features that every one of hosts has (the
// intersection), sorted, for choosing a VM CPU model that all of them can
// run. A host that reports no features makes the baseline empty. Pure.
func Baseline(hosts []Host) []string {
	if len(hosts) == 0 {
		return nil
	}
	base := slices.Clone(hosts[0].CPUFeatures)
	slices.Sort(base)
	base = slices.Compact(base)
	for _, h := range hosts[1:] {
		if len(base) == 0 {
			break
		}
		have := make(map[string]struct{}, len(h.CPUFeatures))
		for _, f := range h.CPUFeatures {
			have[f] = struct{}{}
		}
		base = slices.DeleteFunc(base, func(f string) bool {
			_, ok := have[f]
			return !ok
		})
	}
	return base
}

// reason is why a host was filtered out; fits means it was not.
type reason uint8

const (
	fits reason = iota
	rExcluded
	rDown
	rMaintenance
	rNotUp
	rNetwork
	rPool
	rFeatures
	rAntiAffinity
	rMemory
	rCPU
	rCPUCount // the VM has more vCPUs than the host has CPUs
	numReasons
)

// reject is a host filtered out, kept compact until it is explained.
type reject struct {
	idx  int // into the hosts being evaluated
	why  reason
	free int64 // free MiB (rMemory) or vCPUs (rCPU)
}

// placer holds one request and policy, validated and normalised.
type placer struct {
	req      Request
	features []string // req.CPUFeatures without duplicates
	memOC    float64
	cpuOC    float64
	pack     bool
	sorted   bool // the hosts are in name order (see PlaceSorted)

	featMemo [4]featVerdict // see hasFeatures
	featNext int
}

func newPlacer(req Request, pol Policy) (*placer, error) {
	p := &placer{req: req, features: req.CPUFeatures, memOC: pol.MemOvercommit, cpuOC: pol.CPUOvercommit}
	switch pol.Strategy {
	case "", StrategySpread:
	case StrategyPack:
		p.pack = true
	default:
		return nil, api.Errorf(api.ErrInvalid, "unknown placement strategy %q: use %q or %q", pol.Strategy, StrategySpread, StrategyPack)
	}
	if p.memOC == 0 {
		p.memOC = DefaultMemOvercommit
	}
	if p.cpuOC == 0 {
		p.cpuOC = DefaultCPUOvercommit
	}
	if !(p.memOC > 0) || math.IsInf(p.memOC, 0) {
		return nil, api.Errorf(api.ErrInvalid, "memory overcommit %v: must be a positive number (1.0 = none)", pol.MemOvercommit)
	}
	if !(p.cpuOC > 0) || math.IsInf(p.cpuOC, 0) {
		return nil, api.Errorf(api.ErrInvalid, "CPU overcommit %v: must be a positive number of vCPUs per host CPU", pol.CPUOvercommit)
	}
	if req.CPUs < 0 {
		return nil, api.Errorf(api.ErrInvalid, "vm %q: %d CPUs: must not be negative", req.Name, req.CPUs)
	}
	if req.MemoryMiB < 0 {
		return nil, api.Errorf(api.ErrInvalid, "vm %q: %d MiB of memory: must not be negative", req.Name, req.MemoryMiB)
	}
	if hasDuplicates(p.features) {
		seen := map[string]bool{}
		p.features = slices.DeleteFunc(slices.Clone(p.features), func(f string) bool {
			dup := seen[f]
			seen[f] = true
			return dup
		})
	}
	return p, nil
}

func hasDuplicates(s []string) bool {
	for i := range s {
		if slices.Contains(s[:i], s[i]) {
			return true
		}
	}
	return false
}

// place evaluates the request against hosts and returns the index of the
// chosen host.
func (p *placer) place(hosts []Host) (int, Decision, error) {
	if len(hosts) == 0 {
		return -1, Decision{}, api.Errorf(api.ErrUnavailable, "no hosts have joined yet")
	}
	if p.req.Host == "" {
		return p.evaluate(hosts, 0)
	}
	for i := range hosts {
		if hosts[i].Name == p.req.Host {
			return p.evaluate(hosts[i:i+1], i)
		}
	}
	return -1, Decision{}, api.Errorf(api.ErrNotFound, "host %q not found", p.req.Host)
}

// evaluate filters and scores hs; base is the index of hs[0] in the caller's
// slice. The loop allocates nothing but the growth of the reject list, and
// divides nothing: fractions are compared by cross-multiplication.
func (p *placer) evaluate(hs []Host, base int) (int, Decision, error) {
	best := -1
	var bestFit room
	var rejs []reject
	for i := range hs {
		h := &hs[i]
		var f room
		if why := p.check(h, &f); why != fits {
			free := f.memFree
			if why == rCPU {
				free = f.cpuFree
			}
			rejs = append(rejs, reject{idx: i, why: why, free: free})
			continue
		}
		if best < 0 || p.better(&f, h.Name, &bestFit, hs[best].Name) {
			best, bestFit = i, f
		}
	}
	if len(rejs) > 1 && !slices.IsSortedFunc(rejs, p.byName(hs)) {
		slices.SortStableFunc(rejs, p.byName(hs))
	}
	d := Decision{Rejections: p.explain(hs, rejs)}
	if best < 0 {
		return -1, d, api.Errorf(api.ErrCapacity, "%s", p.noFit(d.Rejections, rejs))
	}
	d.Host, d.Score = hs[best].Name, p.score(&bestFit)
	return base + best, d, nil
}

func (p *placer) byName(hs []Host) func(a, b reject) int {
	return func(a, b reject) int { return cmp.Compare(hs[a.idx].Name, hs[b.idx].Name) }
}

// room is what a host has: before placement, free memory (MiB) and vCPUs;
// after placement (of a host that fits), what is left of each and of how
// much capacity, overcommit included.
type room struct {
	memFree, memCap int64
	cpuFree, cpuCap int64
}

// check runs the filters on h and returns the first it fails, or fits. It
// fills r: the free memory or vCPUs when that is the reason; what is left
// after placement when h fits.
func (p *placer) check(h *Host, r *room) reason {
	for _, x := range p.req.Exclude {
		if x == h.Name {
			return rExcluded
		}
	}
	switch h.State {
	case api.HostUp:
	case api.HostDown:
		return rDown
	case api.HostMaintenance:
		return rMaintenance
	default:
		return rNotUp
	}
	if p.req.Network != "" && !slices.Contains(h.Networks, p.req.Network) {
		return rNetwork
	}
	if p.req.Pool != "" && !slices.Contains(h.Pools, p.req.Pool) {
		return rPool
	}
	if len(p.features) > 0 && !p.hasFeatures(h.CPUFeatures) {
		return rFeatures
	}
	if p.req.AntiAffinity != "" && h.Groups[p.req.AntiAffinity] > 0 {
		return rAntiAffinity
	}
	if p.req.CPUs > h.CPUs {
		return rCPUCount
	}
	r.memCap = h.MemoryMiB
	if p.memOC != 1 {
		r.memCap = int64(float64(h.MemoryMiB) * p.memOC)
	}
	if r.memFree = r.memCap - h.AllocatedMiB; r.memFree < p.req.MemoryMiB {
		return rMemory
	}
	r.cpuCap = int64(float64(h.CPUs) * p.cpuOC)
	if r.cpuFree = r.cpuCap - int64(h.AllocatedCPUs); r.cpuFree < int64(p.req.CPUs) {
		return rCPU
	}
	r.memFree -= p.req.MemoryMiB
	r.cpuFree -= int64(p.req.CPUs)
	if r.memCap <= 0 { // nothing to spare, like a full host
		r.memFree, r.memCap = 0, 1
	}
	if r.cpuCap <= 0 {
		r.cpuFree, r.cpuCap = 0, 1
	}
	return fits
}

// hasFeatures reports whether have holds every required feature. Verdicts
// are remembered for the last few lists seen, by identity: hosts whose lists
// share a backing array (see ShareCPUFeatures) are checked once.
func (p *placer) hasFeatures(have []string) bool {
	if len(have) == 0 {
		return false
	}
	for _, m := range &p.featMemo {
		if m.ptr == &have[0] && m.n == len(have) {
			return m.ok
		}
	}
	ok := true
	for _, f := range p.features {
		if !slices.Contains(have, f) {
			ok = false
			break
		}
	}
	p.featMemo[p.featNext] = featVerdict{&have[0], len(have), ok}
	p.featNext = (p.featNext + 1) % len(p.featMemo)
	return ok
}

// featVerdict is a remembered outcome of hasFeatures.
type featVerdict struct {
	ptr *string
	n   int
	ok  bool
}

// ShareCPUFeatures makes hosts whose CPUFeatures lists are equal share one
// slice, so that Place checks each distinct list once instead of once per
// host. A driver that keeps a snapshot of many hosts calls it when it builds
// or refreshes the snapshot. It changes only the CPUFeatures fields of hosts,
// not the lists' contents.
func ShareCPUFeatures(hosts []Host) {
	seen := map[string][]string{}
	var key []byte
	for i := range hosts {
		fs := hosts[i].CPUFeatures
		if len(fs) == 0 {
			continue
		}
		key = key[:0]
		for _, f := range fs {
			key = strconv.AppendInt(key, int64(len(f)), 10)
			key = append(key, ':')
			key = append(key, f...)
		}
		if s, ok := seen[string(key)]; ok {
			hosts[i].CPUFeatures = s
		} else {
			seen[string(key)] = fs
		}
	}
}

// better reports whether host a (named an) beats host b: a larger (spread)
// or smaller (pack) fraction of free memory after placement, then of free
// vCPUs, then the lower name. Fractions are compared exactly, by
// cross-multiplication; all amounts are not negative and the capacities are
// positive (see check).
func (p *placer) better(a *room, an string, b *room, bn string) bool {
	if a.memFree|a.memCap|b.memFree|b.memCap|a.cpuFree|a.cpuCap|b.cpuFree|b.cpuCap >= 1<<31 {
		return p.betterWide(a, an, b, bn) // the products might not fit in an int64
	}
	x, y := a.memFree*b.memCap, b.memFree*a.memCap
	if x == y {
		x, y = a.cpuFree*b.cpuCap, b.cpuFree*a.cpuCap
		if x == y {
			return !p.sorted && an < bn // sorted, b came first (see evaluate)
		}
	}
	return x > y != p.pack
}

// betterWide is better for amounts of 2^31 and more, with 128-bit products.
func (p *placer) betterWide(a *room, an string, b *room, bn string) bool {
	c := cmpFraction(a.memFree, a.memCap, b.memFree, b.memCap)
	if c == 0 {
		c = cmpFraction(a.cpuFree, a.cpuCap, b.cpuFree, b.cpuCap)
		if c == 0 {
			return !p.sorted && an < bn
		}
	}
	return c > 0 != p.pack
}

// cmpFraction compares af/ac with bf/bc.
func cmpFraction(af, ac, bf, bc int64) int {
	ahi, alo := bits.Mul64(uint64(af), uint64(bc))
	bhi, blo := bits.Mul64(uint64(bf), uint64(ac))
	if c := cmp.Compare(ahi, bhi); c != 0 {
		return c
	}
	return cmp.Compare(alo, blo)
}

// score is Decision.Score for the chosen host: its free (spread) or used
// (pack) memory fraction after placement.
func (p *placer) score(r *room) float64 {
	f := float64(r.memFree) / float64(r.memCap)
	if p.pack {
		return 1 - f
	}
	return f
}
