package server

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func poolHost(name, state string, spaces ...api.PoolSpace) api.Host {
	return api.Host{Name: name, State: state, Storage: spaces}
}

// TestPoolViews: a shared pool's space is counted once, a local pool's
// summed over its hosts; down hosts are left out; volumes are counted.
func TestPoolViews(t *testing.T) {
	local := func(free int64) api.PoolSpace {
		return api.PoolSpace{Name: "local", Type: "dir", SizeBytes: 100, UsedBytes: 100 - free, FreeBytes: free}
	}
	shared := api.PoolSpace{Name: "shared", Type: "dir", Shared: true, SizeBytes: 1000, UsedBytes: 400, FreeBytes: 600}
	hosts := []api.Host{
		poolHost("h2", api.HostUp, local(30), shared),
		poolHost("h1", api.HostMaintenance, local(50), shared),
		poolHost("h3", api.HostDown, local(90), shared),
	}
	got := poolViews(hosts, []api.Volume{{Pool: "shared"}, {Pool: "shared"}, {Pool: "local"}, {Pool: "gone"}, {Pool: "san"}},
		[]api.PoolConfig{{Name: "san", Type: api.PoolISCSI, Server: "storage"}})
	want := []api.Pool{
		{Name: "local", Type: "dir", SizeBytes: 200, UsedBytes: 120, FreeBytes: 80, Hosts: []string{"h1", "h2"}, Volumes: 1},
		{Name: "san", Type: "iscsi", Shared: true, Hosts: []string{}, Volumes: 1},
		{Name: "shared", Type: "dir", Shared: true, SizeBytes: 1000, UsedBytes: 400, FreeBytes: 600, Hosts: []string{"h1", "h2"}, Volumes: 2},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("poolViews:\n got %+v\nwant %+v", got, want)
	}
}

// TestPoolViewsManaged: a managed pool's space is its storage server's,
// whatever the VM hosts that reach it report and in whichever order.
func TestPoolViewsManaged(t *testing.T) {
	seen := api.PoolSpace{Name: "san", Type: "iscsi", Shared: true}
	served := api.PoolSpace{Name: "san", Type: "iscsi", Shared: true, Manages: true, SizeBytes: 1000, UsedBytes: 100, FreeBytes: 900}
	hosts := []api.Host{poolHost("a1", api.HostUp, seen), poolHost("nas", api.HostUp, served), poolHost("z9", api.HostUp, seen)}
	want := []api.Pool{{Name: "san", Type: "iscsi", Shared: true, SizeBytes: 1000, UsedBytes: 100, FreeBytes: 900, Hosts: []string{"a1", "nas", "z9"}}}
	if got := poolViews(hosts, nil, nil); !reflect.DeepEqual(got, want) {
		t.Errorf("poolViews:\n got %+v\nwant %+v", got, want)
	}
}

// TestVolumeHost: who makes a volume, and each refusal's one line.
func TestVolumeHost(t *testing.T) {
	local := api.PoolSpace{Name: "local", FreeBytes: 1 << 30}
	shared := api.PoolSpace{Name: "shared", Shared: true, FreeBytes: 10 << 30}
	two := []api.Host{poolHost("h2", api.HostUp, local, shared), poolHost("h1", api.HostUp, local, shared), poolHost("h3", api.HostDown, local, shared)}
	one := []api.Host{poolHost("solo", api.HostUp, local)}
	seen := api.PoolSpace{Name: "san", Shared: true, FreeBytes: 100 << 30}
	served := api.PoolSpace{Name: "san", Shared: true, Manages: true, FreeBytes: 1 << 30}
	san := []api.Host{poolHost("a1", api.HostUp, seen), poolHost("nas", api.HostUp, served)}
	sanDown := []api.Host{poolHost("a1", api.HostUp, seen), poolHost("nas", api.HostDown, served)}
	cases := []struct {
		name       string
		hosts      []api.Host
		pool, want string
		size       int64
		host       string
		kind       error
		msg        string
	}{
		{"shared: first up host", two, "shared", "", 1 << 30, "h1", nil, ""},
		{"shared: the host asked", two, "shared", "h2", 1 << 30, "h2", nil, ""},
		{"local: the host asked", two, "local", "h2", 1 << 20, "h2", nil, ""},
		{"local: the only host", one, "local", "", 1 << 20, "solo", nil, ""},
		{"local: which host?", two, "local", "", 1 << 20, "", api.ErrInvalid, "say on which host the volume lives (--host)"},
		{"too big", two, "shared", "", 11 << 30, "", api.ErrCapacity, `pool "shared" has 10G free (on h2): a volume of 11G does not fit`},
		{"host down", two, "shared", "h3", 1, "", api.ErrUnavailable, "host h3 is down"},
		{"no such pool", two, "san", "", 1, "", api.ErrNotFound, `pool "san" not found on any host that is up`},
		{"managed: its storage server", san, "san", "", 1 << 20, "nas", nil, ""},
		{"managed: not another host", san, "san", "a1", 1 << 20, "", api.ErrInvalid, `pool "san" is served by storage server nas`},
		{"managed: too big", san, "san", "", 2 << 30, "", api.ErrCapacity, `pool "san" has 1G free (on nas): a volume of 2G does not fit`},
		{"managed: server down", sanDown, "san", "", 1, "", api.ErrUnavailable, `storage server nas of pool "san" is down`},
		{"no such host", two, "shared", "h9", 1, "", api.ErrNotFound, `host "h9" not found or has no pool "shared"`},
	}
	for _, c := range cases {
		got, err := volumeHost(c.hosts, c.pool, c.want, c.size)
		if c.kind == nil && (err != nil || got != c.host) {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.host)
		}
		if c.kind != nil && (!errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.msg)) {
			t.Errorf("%s: %q, %v; want %v with %q", c.name, got, err, c.kind, c.msg)
		}
	}
}
