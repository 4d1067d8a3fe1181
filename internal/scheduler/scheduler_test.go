package scheduler

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// host returns an up host with 4 CPUs and 1024 MiB, the default network and
// both lab pools; opts adjust it.
func host(name string, opts ...func(*Host)) Host {
	h := Host{
		Name: name, State: api.HostUp, CPUs: 4, MemoryMiB: 1024,
		Networks: []string{"default"}, Pools: []string{"local", "shared"},
		CPUFeatures: []string{"sse4_2", "avx", "avx2"},
	}
	for _, o := range opts {
		o(&h)
	}
	return h
}

func state(s string) func(*Host)       { return func(h *Host) { h.State = s } }
func used(mib int64) func(*Host)       { return func(h *Host) { h.AllocatedMiB = mib } }
func usedCPUs(n int) func(*Host)       { return func(h *Host) { h.AllocatedCPUs = n } }
func memory(mib int64) func(*Host)     { return func(h *Host) { h.MemoryMiB = mib } }
func cpus(n int) func(*Host)           { return func(h *Host) { h.CPUs = n } }
func allocCPUs(n int) func(*Host)      { return func(h *Host) { h.AllocatedCPUs = n } }
func networks(n ...string) func(*Host) { return func(h *Host) { h.Networks = n } }
func pools(p ...string) func(*Host)    { return func(h *Host) { h.Pools = p } }
func features(f ...string) func(*Host) { return func(h *Host) { h.CPUFeatures = f } }
func group(g string, n int) func(*Host) {
	return func(h *Host) {
		if h.Groups == nil {
			h.Groups = map[string]int{}
		}
		h.Groups[g] = n
	}
}

func vm(name string, mib int64, cpus int) Request {
	return Request{Name: name, MemoryMiB: mib, CPUs: cpus}
}

// TestFilters runs every filter alone on a single host: the host is rejected
// with the exact reason, and the error names it.
func TestFilters(t *testing.T) {
	tests := []struct {
		name   string
		host   Host
		req    Request
		pol    Policy
		reason string // "" = fits
	}{
		{"fits", host("h1"), vm("v", 256, 1), Policy{}, ""},
		{"down", host("h1", state(api.HostDown)), vm("v", 256, 1), Policy{}, "down"},
		{"maintenance", host("h1", state(api.HostMaintenance)), vm("v", 256, 1), Policy{}, "in maintenance"},
		{"other state", host("h1", state("joining")), vm("v", 256, 1), Policy{}, `not up (state "joining")`},
		{"no state", host("h1", state("")), vm("v", 256, 1), Policy{}, `not up (state "")`},
		{"excluded", host("h1"), Request{Name: "v", MemoryMiB: 256, Exclude: []string{"h0", "h1"}}, Policy{}, "excluded"},
		{"not excluded", host("h1"), Request{Name: "v", MemoryMiB: 256, Exclude: []string{"h2"}}, Policy{}, ""},
		{"memory", host("h1", used(844)), vm("v", 256, 1), Policy{}, "180 MiB free, needs 256 MiB"},
		{"memory exact fit", host("h1", used(768)), vm("v", 256, 1), Policy{}, ""},
		{"memory overallocated", host("h1", used(2000)), vm("v", 256, 1), Policy{}, "0 MiB free, needs 256 MiB"},
		{"memory overcommit fits", host("h1", used(1000)), vm("v", 512, 1), Policy{MemOvercommit: 1.5}, ""},
		{"memory overcommit short", host("h1", used(1100)), vm("v", 512, 1), Policy{MemOvercommit: 1.5}, "436 MiB free, needs 512 MiB"},
		{"memory undercommit", host("h1"), vm("v", 1024, 1), Policy{MemOvercommit: 0.9}, "921 MiB free, needs 1024 MiB"},
		{"cpu default overcommit fits", host("h1", usedCPUs(12)), vm("v", 256, 4), Policy{}, ""},
		{"cpu default overcommit short", host("h1", usedCPUs(14)), vm("v", 256, 4), Policy{}, "2 vCPUs free, needs 4"},
		{"cpu no overcommit", host("h1", usedCPUs(2)), vm("v", 256, 4), Policy{CPUOvercommit: 1}, "2 vCPUs free, needs 4"},
		{"cpu fractional overcommit", host("h1", cpus(3), allocCPUs(2)), vm("v", 256, 3), Policy{CPUOvercommit: 1.5}, "2 vCPUs free, needs 3"},
		{"network present", host("h1", networks("default", "prod")), Request{Name: "v", Network: "prod"}, Policy{}, ""},
		{"network missing", host("h1"), Request{Name: "v", Network: "prod"}, Policy{}, `no network "prod"`},
		{"pool present", host("h1"), Request{Name: "v", Pool: "shared"}, Policy{}, ""},
		{"pool missing", host("h1", pools("local")), Request{Name: "v", Pool: "shared"}, Policy{}, `no pool "shared"`},
		{"features present", host("h1"), Request{Name: "v", CPUFeatures: []string{"avx2", "sse4_2"}}, Policy{}, ""},
		{"feature missing", host("h1"), Request{Name: "v", CPUFeatures: []string{"avx2", "avx512f"}}, Policy{}, "CPU lacks feature(s) avx512f"},
		{"features missing, deduplicated", host("h1", features("sse4_2")),
			Request{Name: "v", CPUFeatures: []string{"avx", "sse4_2", "avx2", "avx"}}, Policy{}, "CPU lacks feature(s) avx, avx2"},
		{"host reports no features", host("h1", features()), Request{Name: "v", CPUFeatures: []string{"avx"}}, Policy{}, "CPU lacks feature(s) avx"},
		{"anti-affinity", host("h1", group("web", 1)), Request{Name: "v", AntiAffinity: "web"}, Policy{}, `already runs a VM of group "web"`},
		{"anti-affinity other group", host("h1", group("db", 2)), Request{Name: "v", AntiAffinity: "web"}, Policy{}, ""},
		{"anti-affinity zero count", host("h1", group("web", 0)), Request{Name: "v", AntiAffinity: "web"}, Policy{}, ""},
		// The first failing filter gives the reason.
		{"excluded before down", host("h1", state(api.HostDown)), Request{Name: "v", Exclude: []string{"h1"}}, Policy{}, "excluded"},
		{"down before memory", host("h1", state(api.HostDown), used(1024)), vm("v", 256, 1), Policy{}, "down"},
		{"network before memory", host("h1", used(1024)), Request{Name: "v", MemoryMiB: 256, Network: "prod"}, Policy{}, `no network "prod"`},
		{"memory before cpu", host("h1", used(1024), usedCPUs(16)), vm("v", 256, 1), Policy{}, "0 MiB free, needs 256 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Place([]Host{tt.host}, tt.req, tt.pol)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("Place: %v", err)
				}
				if d.Host != "h1" || len(d.Rejections) != 0 {
					t.Fatalf("decision = %+v, want h1 and no rejections", d)
				}
				return
			}
			if !errors.Is(err, api.ErrCapacity) {
				t.Fatalf("err = %v, want ErrCapacity", err)
			}
			want := fmt.Sprintf("no host fits vm %q: h1: %s", tt.req.Name, tt.reason)
			if err.Error() != want {
				t.Errorf("err = %q\nwant  %q", err, want)
			}
			if wantR := []Rejection{{"h1", tt.reason}}; !reflect.DeepEqual(d.Rejections, wantR) {
				t.Errorf("rejections = %+v, want %+v", d.Rejections, wantR)
			}
			if d.Host != "" {
				t.Errorf("host = %q, want none", d.Host)
			}
		})
	}
}

// TestExplanation checks the whole message for several hosts: name order
// whatever the input order, one reason each.
func TestExplanation(t *testing.T) {
	hosts := []Host{
		host("host3", state(api.HostMaintenance)),
		host("host1", used(844)),
		host("host2", state(api.HostDown)),
	}
	_, err := Place(hosts, vm("web1", 256, 1), Policy{})
	want := `no host fits vm "web1": host1: 180 MiB free, needs 256 MiB; host2: down; host3: in maintenance`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	if !errors.Is(err, api.ErrCapacity) {
		t.Errorf("err kind: %v is not ErrCapacity", err)
	}

	tests := []struct {
		name  string
		hosts []Host
		req   Request
		want  string
	}{
		{"mixed reasons", []Host{
			host("a", networks()),
			host("b", pools()),
			host("c", usedCPUs(16)),
			host("d", group("g", 1)),
			host("e", features("sse4_2")),
		}, Request{Name: "x", CPUs: 2, MemoryMiB: 64, Network: "default", Pool: "local", AntiAffinity: "g", CPUFeatures: []string{"avx", "avx2"}},
			`no host fits vm "x": a: no network "default"; b: no pool "local"; c: 0 vCPUs free, needs 2; d: already runs a VM of group "g"; e: CPU lacks feature(s) avx, avx2`},
		{"quoting", []Host{host("a")}, Request{Name: `we"ird`, Network: `n"1`},
			`no host fits vm "we\"ird": a: no network "n\"1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Place(tt.hosts, tt.req, Policy{})
			if err == nil || err.Error() != tt.want {
				t.Errorf("err = %v\nwant  %s", err, tt.want)
			}
		})
	}
}

// TestExplanationLong: past 20 hosts the message counts the rest by reason.
func TestExplanationLong(t *testing.T) {
	var hosts []Host
	for i := 1; i <= 30; i++ {
		var h Host
		switch {
		case i <= 24:
			h = host(fmt.Sprintf("h%02d", i), used(1000))
		case i <= 27:
			h = host(fmt.Sprintf("h%02d", i), state(api.HostDown))
		default:
			h = host(fmt.Sprintf("h%02d", i), networks())
		}
		hosts = append(hosts, h)
	}
	d, err := Place(hosts, Request{Name: "v", MemoryMiB: 100, Network: "default"}, Policy{})
	if err == nil {
		t.Fatal("placed, want an error")
	}
	var listed []string
	for i := 1; i <= 20; i++ {
		listed = append(listed, fmt.Sprintf("h%02d: 24 MiB free, needs 100 MiB", i))
	}
	want := `no host fits vm "v": ` + strings.Join(listed, "; ") +
		`; and 10 more hosts (3 down, 3 without network "default", 4 short of memory)`
	if err.Error() != want {
		t.Errorf("err = %s\nwant  %s", err, want)
	}
	if len(d.Rejections) != 30 {
		t.Errorf("%d rejections, want 30", len(d.Rejections))
	}
}

func TestErrors(t *testing.T) {
	hosts := []Host{host("h1"), host("h2", state(api.HostDown))}
	tests := []struct {
		name  string
		hosts []Host
		req   Request
		pol   Policy
		kind  error
		msg   string
	}{
		{"no hosts", nil, vm("v", 1, 1), Policy{}, api.ErrUnavailable, "no hosts have joined yet"},
		{"pinned host unknown", hosts, Request{Name: "v", Host: "x"}, Policy{}, api.ErrNotFound, `host "x" not found`},
		{"pinned host down", hosts, Request{Name: "v", Host: "h2"}, Policy{}, api.ErrCapacity, `no host fits vm "v": h2: down`},
		{"pinned host excluded", hosts, Request{Name: "v", Host: "h1", Exclude: []string{"h1"}}, Policy{}, api.ErrCapacity, `no host fits vm "v": h1: excluded`},
		{"pinned host full", hosts, Request{Name: "v", Host: "h1", MemoryMiB: 2048}, Policy{}, api.ErrCapacity, `no host fits vm "v": h1: 1024 MiB free, needs 2048 MiB`},
		{"bad strategy", hosts, vm("v", 1, 1), Policy{Strategy: "random"}, api.ErrInvalid, `unknown placement strategy "random": use "spread" or "pack"`},
		{"negative mem overcommit", hosts, vm("v", 1, 1), Policy{MemOvercommit: -1}, api.ErrInvalid, "memory overcommit -1: must be a positive number (1.0 = none)"},
		{"negative cpu overcommit", hosts, vm("v", 1, 1), Policy{CPUOvercommit: -2}, api.ErrInvalid, "CPU overcommit -2: must be a positive number of vCPUs per host CPU"},
		{"negative cpus", hosts, vm("v", 1, -1), Policy{}, api.ErrInvalid, `vm "v": -1 CPUs: must not be negative`},
		{"negative memory", hosts, vm("v", -5, 1), Policy{}, api.ErrInvalid, `vm "v": -5 MiB of memory: must not be negative`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Place(tt.hosts, tt.req, tt.pol)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want kind %v", err, tt.kind)
			}
			if err.Error() != tt.msg {
				t.Errorf("err = %q\nwant  %q", err, tt.msg)
			}
		})
	}
}

func TestPinned(t *testing.T) {
	hosts := []Host{host("h1"), host("h2", used(512)), host("h3", state(api.HostDown))}
	d, err := Place(hosts, Request{Name: "v", MemoryMiB: 256, Host: "h2"}, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	// h1 would score better, and h3 is down: neither is considered or listed.
	if d.Host != "h2" || len(d.Rejections) != 0 {
		t.Errorf("decision = %+v, want h2 with no rejections", d)
	}
	if d.Score != 0.25 {
		t.Errorf("score = %v, want 0.25", d.Score)
	}
}

func TestExclude(t *testing.T) {
	hosts := []Host{host("h1"), host("h2", used(512)), host("h3", used(256))}
	d, err := Place(hosts, Request{Name: "v", MemoryMiB: 128, Exclude: []string{"h1"}}, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Host != "h3" {
		t.Errorf("host = %s, want h3 (h1 excluded, h3 has the most free)", d.Host)
	}
	if want := []Rejection{{"h1", "excluded"}}; !reflect.DeepEqual(d.Rejections, want) {
		t.Errorf("rejections = %+v, want %+v", d.Rejections, want)
	}
}

func TestScoring(t *testing.T) {
	tests := []struct {
		name  string
		hosts []Host
		req   Request
		pol   Policy
		want  string
		score float64
	}{
		{"spread: most free fraction", []Host{host("a", used(512)), host("b", used(256)), host("c", used(768))}, vm("v", 256, 1), Policy{}, "b", 0.5},
		{"spread: fraction not absolute", []Host{host("big", memory(4096), used(3072)), host("small", used(256))}, vm("v", 256, 1), Policy{}, "small", 0.5},
		{"spread: tie goes to more vCPU headroom", []Host{host("a", usedCPUs(8)), host("b", usedCPUs(4))}, vm("v", 256, 1), Policy{}, "b", 0.75},
		{"spread: full tie goes to lower name", []Host{host("b"), host("a"), host("c")}, vm("v", 256, 1), Policy{}, "a", 0.75},
		{"pack: least free that fits", []Host{host("a", used(512)), host("b", used(900)), host("c", used(768))}, vm("v", 256, 1), Policy{Strategy: "pack"}, "c", 1},
		{"pack: tie goes to less vCPU headroom", []Host{host("a", usedCPUs(4)), host("b", usedCPUs(8))}, vm("v", 256, 1), Policy{Strategy: "pack"}, "b", 0.25},
		{"pack: full tie goes to lower name", []Host{host("c"), host("b")}, vm("v", 256, 1), Policy{Strategy: "pack"}, "b", 0.25},
		{"spread: a host without capacity counts as full", []Host{host("a", memory(0), cpus(0)), host("b", used(1000))}, vm("v", 0, 0), Policy{}, "b", 24.0 / 1024},
		{"pack: a host without capacity counts as full", []Host{host("b", memory(0), cpus(0)), host("a", used(512))}, vm("v", 0, 0), Policy{Strategy: "pack"}, "b", 1},
		{"overcommit counts in the fraction", []Host{host("a", used(1024)), host("b", used(512))}, vm("v", 512, 1), Policy{MemOvercommit: 2}, "b", 0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Place(tt.hosts, tt.req, tt.pol)
			if err != nil {
				t.Fatal(err)
			}
			if d.Host != tt.want || d.Score != tt.score {
				t.Errorf("got %s (score %v), want %s (score %v)", d.Host, d.Score, tt.want, tt.score)
			}
		})
	}
}

// counts places reqs with Plan and returns how many landed on each host.
func counts(t *testing.T, hosts []Host, reqs []Request, pol Policy) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i, r := range Plan(hosts, reqs, pol) {
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		got[r.Decision.Host]++
	}
	return got
}

func TestPlanSpread(t *testing.T) {
	hosts := []Host{host("host1"), host("host2"), host("host3")}
	var reqs []Request
	for i := range 6 {
		reqs = append(reqs, vm(fmt.Sprintf("vm%d", i), 256, 1))
	}
	want := map[string]int{"host1": 2, "host2": 2, "host3": 2}
	if got := counts(t, hosts, reqs, Policy{}); !reflect.DeepEqual(got, want) {
		t.Errorf("spread = %v, want %v", got, want)
	}
	// Plan works on a copy.
	for _, h := range hosts {
		if h.AllocatedMiB != 0 || h.AllocatedCPUs != 0 {
			t.Errorf("Plan changed its input: %+v", h)
		}
	}
}

func TestPlanPack(t *testing.T) {
	hosts := []Host{host("host1"), host("host2"), host("host3")}
	var reqs []Request
	for i := range 6 {
		reqs = append(reqs, vm(fmt.Sprintf("vm%d", i), 256, 1))
	}
	res := Plan(hosts, reqs, Policy{Strategy: StrategyPack})
	var got []string
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		got = append(got, r.Decision.Host)
	}
	want := []string{"host1", "host1", "host1", "host1", "host2", "host2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pack = %v, want %v", got, want)
	}
}

func TestPlanCapacity(t *testing.T) {
	hosts := []Host{host("h1", memory(512)), host("h2", memory(512))}
	reqs := []Request{vm("a", 300, 1), vm("b", 300, 1), vm("c", 300, 1), vm("d", 200, 1)}
	res := Plan(hosts, reqs, Policy{})
	var got []string
	for _, r := range res {
		if r.Err != nil {
			got = append(got, r.Err.Error())
		} else {
			got = append(got, r.Decision.Host)
		}
	}
	want := []string{"h1", "h2",
		`no host fits vm "c": h1: 212 MiB free, needs 300 MiB; h2: 212 MiB free, needs 300 MiB`,
		"h1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plan = %q\nwant   %q", got, want)
	}
	if !errors.Is(res[2].Err, api.ErrCapacity) {
		t.Errorf("err kind: %v", res[2].Err)
	}
}

func TestPlanAntiAffinity(t *testing.T) {
	groups := map[string]int{"db": 1}
	hosts := []Host{host("h1", func(h *Host) { h.Groups = groups }), host("h2"), host("h3")}
	reqs := []Request{
		{Name: "web1", MemoryMiB: 64, AntiAffinity: "web"},
		{Name: "web2", MemoryMiB: 64, AntiAffinity: "web"},
		{Name: "web3", MemoryMiB: 64, AntiAffinity: "web"},
		{Name: "web4", MemoryMiB: 64, AntiAffinity: "web"},
		{Name: "db2", MemoryMiB: 64, AntiAffinity: "db"},
	}
	res := Plan(hosts, reqs, Policy{})
	seen := map[string]bool{}
	for _, r := range res[:3] {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if seen[r.Decision.Host] {
			t.Errorf("two web VMs on %s", r.Decision.Host)
		}
		seen[r.Decision.Host] = true
	}
	want := `no host fits vm "web4": h1: already runs a VM of group "web"; h2: already runs a VM of group "web"; h3: already runs a VM of group "web"`
	if res[3].Err == nil || res[3].Err.Error() != want {
		t.Errorf("web4: %v\nwant %s", res[3].Err, want)
	}
	if res[4].Err != nil || res[4].Decision.Host == "h1" {
		t.Errorf("db2: %+v, want a host other than h1", res[4])
	}
	if !reflect.DeepEqual(groups, map[string]int{"db": 1}) || hosts[1].Groups != nil {
		t.Errorf("Plan changed its input's groups: %v, %v", groups, hosts[1].Groups)
	}
}

func TestPlanPerRequestErrors(t *testing.T) {
	hosts := []Host{host("h1")}
	res := Plan(hosts, []Request{{Name: "a", Host: "nope"}, vm("b", -1, 1), vm("c", 1024, 4)}, Policy{})
	if !errors.Is(res[0].Err, api.ErrNotFound) || !errors.Is(res[1].Err, api.ErrInvalid) || res[2].Err != nil || res[2].Decision.Host != "h1" {
		t.Errorf("results = %+v", res)
	}
}

func TestRejectionsSorted(t *testing.T) {
	hosts := []Host{
		host("d", state(api.HostDown)), host("b", used(1024)), host("ok"), host("a", state(api.HostMaintenance)),
	}
	d, err := Place(hosts, vm("v", 10, 1), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Rejection{{"a", "in maintenance"}, {"b", "0 MiB free, needs 10 MiB"}, {"d", "down"}}
	if d.Host != "ok" || !reflect.DeepEqual(d.Rejections, want) {
		t.Errorf("decision = %+v\nwant rejections %+v", d, want)
	}
}

// TestDeterministic: shuffled inputs give the same decision.
func TestDeterministic(t *testing.T) {
	a := []Host{host("h1"), host("h2"), host("h3", state(api.HostDown)), host("h4", used(100))}
	b := []Host{a[3], a[1], a[2], a[0]}
	for i := range 10 {
		req := vm(fmt.Sprintf("v%d", i), int64(i*50), 1)
		da, ea := Place(a, req, Policy{})
		db, eb := Place(b, req, Policy{})
		if !reflect.DeepEqual(da, db) || (ea == nil) != (eb == nil) {
			t.Errorf("%v: %+v vs %+v", req, da, db)
		}
	}
}

// TestSharedFeatures: the memo for shared feature slices does not leak a
// verdict onto a host whose list differs.
func TestSharedFeatures(t *testing.T) {
	shared := []string{"sse4_2"}
	full := []string{"sse4_2", "avx"}
	hosts := []Host{
		host("h1", features(shared...), func(h *Host) { h.CPUFeatures = shared }),
		host("h2", func(h *Host) { h.CPUFeatures = shared }),
		host("h3", func(h *Host) { h.CPUFeatures = full[:1] }), // same array as full, shorter
		host("h4", func(h *Host) { h.CPUFeatures = full }),
	}
	d, err := Place(hosts, Request{Name: "v", CPUFeatures: []string{"avx"}}, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Rejection{{"h1", "CPU lacks feature(s) avx"}, {"h2", "CPU lacks feature(s) avx"}, {"h3", "CPU lacks feature(s) avx"}}
	if d.Host != "h4" || !reflect.DeepEqual(d.Rejections, want) {
		t.Errorf("decision = %+v", d)
	}
}

func TestShareCPUFeatures(t *testing.T) {
	hosts := []Host{
		host("a", features("x", "y")),
		host("b", features("xy")),
		host("c", features("x", "y")),
		host("d", features()),
		host("e", features("xy")),
		host("f", features("x", "y", "z")),
	}
	ShareCPUFeatures(hosts)
	same := func(i, j int) bool { return &hosts[i].CPUFeatures[0] == &hosts[j].CPUFeatures[0] }
	if !same(0, 2) || !same(1, 4) || same(0, 1) || same(0, 5) || len(hosts[3].CPUFeatures) != 0 {
		t.Errorf("sharing wrong: %+v", hosts)
	}
	// Many distinct lists, shared and interleaved, more than the memo holds:
	// every verdict is still right.
	var many []Host
	for i := range 40 {
		fs := []string{"base", fmt.Sprintf("gen%d", i%6)}
		if i%6 == 5 {
			fs = append(fs, "avx")
		}
		many = append(many, host(fmt.Sprintf("h%02d", i), features(fs...)))
	}
	ShareCPUFeatures(many)
	d, err := Place(many, Request{Name: "v", CPUFeatures: []string{"avx", "base"}}, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Host != "h05" || len(d.Rejections) != 40-6 {
		t.Errorf("host %s, %d rejections; want h05, 34", d.Host, len(d.Rejections))
	}
	for _, r := range d.Rejections {
		if r.Reason != "CPU lacks feature(s) avx" {
			t.Errorf("%s: %s", r.Host, r.Reason)
		}
	}
}

func TestBaseline(t *testing.T) {
	tests := []struct {
		name  string
		hosts []Host
		want  []string
	}{
		{"no hosts", nil, nil},
		{"one host, sorted and deduplicated", []Host{host("a", features("avx2", "avx", "avx"))}, []string{"avx", "avx2"}},
		{"intersection", []Host{
			host("a", features("sse4_2", "avx", "avx2", "aes")),
			host("b", features("aes", "avx", "sse4_2")),
			host("c", features("avx", "aes", "vmx")),
		}, []string{"aes", "avx"}},
		{"a host without features", []Host{host("a"), host("b", features())}, []string{}},
		{"disjoint", []Host{host("a", features("x")), host("b", features("y"))}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := tt.hosts
			var before [][]string
			for _, h := range hosts {
				before = append(before, append([]string(nil), h.CPUFeatures...))
			}
			got := Baseline(hosts)
			if len(got) != len(tt.want) || (len(got) > 0 && !reflect.DeepEqual(got, tt.want)) {
				t.Errorf("Baseline = %q, want %q", got, tt.want)
			}
			for i, h := range hosts {
				if !reflect.DeepEqual(append([]string(nil), h.CPUFeatures...), before[i]) {
					t.Errorf("Baseline changed host %s features", h.Name)
				}
			}
		})
	}
}

// TestHugeHosts: amounts of 2^31 MiB and more take the 128-bit comparison,
// which agrees with the fast one.
func TestHugeHosts(t *testing.T) {
	hosts := []Host{
		host("a", memory(1<<40), used(1<<39)),
		host("b", memory(1<<41), used(1<<39)),
		host("c", memory(1<<40), used(1<<38)),
	}
	for _, tt := range []struct{ strategy, want string }{{"spread", "b"}, {"pack", "a"}} {
		d, err := Place(hosts, vm("v", 1<<30, 1), Policy{Strategy: tt.strategy})
		if err != nil || d.Host != tt.want {
			t.Errorf("%s: %+v, %v; want %s", tt.strategy, d, err, tt.want)
		}
	}
	p := &placer{}
	vals := []int64{0, 1, 2, 3, 7, 100, 1023, 1024, 65536}
	for _, af := range vals {
		for _, ac := range vals[1:] {
			for _, bf := range vals {
				for _, bc := range vals[1:] {
					a := room{memFree: af, memCap: ac, cpuFree: 1, cpuCap: 2}
					b := room{memFree: bf, memCap: bc, cpuFree: 1, cpuCap: 2}
					if p.better(&a, "a", &b, "b") != p.betterWide(&a, "a", &b, "b") {
						t.Fatalf("better and betterWide disagree on %d/%d vs %d/%d", af, ac, bf, bc)
					}
				}
			}
		}
	}
}

func TestSummaryText(t *testing.T) {
	p := &placer{req: Request{Network: "n", Pool: "p", AntiAffinity: "g"}}
	want := map[reason]string{
		rExcluded: "excluded", rDown: "down", rMaintenance: "in maintenance", rNotUp: "not up",
		rNetwork: `without network "n"`, rPool: `without pool "p"`, rFeatures: "lacking CPU features",
		rAntiAffinity: `already running group "g"`, rMemory: "short of memory", rCPU: "short of vCPUs",
		rCPUCount: "with too few CPUs",
	}
	for why := fits + 1; why < numReasons; why++ {
		if got := p.summary(why); got != want[why] {
			t.Errorf("summary(%d) = %q, want %q", why, got, want[why])
		}
	}
}

func TestVMWiderThanHost(t *testing.T) {
	hosts := []Host{{Name: "h1", State: "up", CPUs: 4, MemoryMiB: 4096}}
	_, err := Place(hosts, Request{Name: "wide", CPUs: 8, MemoryMiB: 256}, Policy{})
	if err == nil || err.Error() != `no host fits vm "wide": h1: has 4 CPUs, needs 8` {
		t.Fatalf("got %v", err)
	}
	if d, err := Place(hosts, Request{Name: "ok", CPUs: 4, MemoryMiB: 256}, Policy{}); err != nil || d.Host != "h1" {
		t.Fatalf("a VM as wide as its host: %v %+v", err, d)
	}
}

// TestPlaceSortedAgreesWithPlace: on hosts in name order, PlaceSorted
// chooses what Place chooses, ties included (many equal hosts, with
// both strategies, wide amounts too), and says the same.
func TestPlaceSortedAgreesWithPlace(t *testing.T) {
	equal := make([]Host, 50)
	for i := range equal {
		equal[i] = host(fmt.Sprintf("h%02d", i))
	}
	wide := make([]Host, 20)
	for i := range wide {
		wide[i] = host(fmt.Sprintf("w%02d", i), func(h *Host) { h.MemoryMiB = 1 << 40; h.AllocatedMiB = int64(i%3) << 38 })
	}
	for _, hosts := range [][]Host{equal, wide, cluster(500)} {
		for _, pol := range []Policy{{}, {Strategy: StrategyPack}} {
			for _, req := range []Request{vm("v", 256, 1), vm("g", 512, 2), {Name: "x", MemoryMiB: 1 << 30}} {
				if hosts[0].Name == "w00" {
					req.MemoryMiB <<= 20
				}
				want, werr := Place(hosts, req, pol)
				got, gerr := PlaceSorted(hosts, req, pol)
				if fmt.Sprint(werr) != fmt.Sprint(gerr) || !reflect.DeepEqual(got, want) {
					t.Errorf("%s on %s.. (%q): PlaceSorted %+v, %v; Place %+v, %v", req.Name, hosts[0].Name, pol.Strategy, got.Host, gerr, want.Host, werr)
				}
			}
		}
	}
	if d, err := PlaceSorted(equal, vm("v", 256, 1), Policy{}); err != nil || d.Host != "h00" {
		t.Errorf("a full tie: %q, %v; want h00", d.Host, err)
	}
}
