package server

import (
	"context"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

func TestAPIAuth(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	tests := []struct {
		name    string
		header  string // "" sends no Authorization header
		wantMsg string
	}{
		{"no token", "", "missing API token"},
		{"empty bearer", "Bearer ", ""}, // net/http trims the space: "invalid" or "missing" will do
		{"wrong token", "Bearer not-the-token", "invalid API token"},
		{"token of another scheme", "Basic " + apiTestToken, "invalid API token"},
		{"token with a suffix", "Bearer " + apiTestToken + "x", "invalid API token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, ep := range []struct{ method, path string }{
				{"GET", "/v1/vms"},
				{"POST", "/v1/vms?wait=false"},
				{"DELETE", "/v1/images/tiny"},
				{"GET", "/v1/no-such-endpoint"},
			} {
				req, _ := http.NewRequest(ep.method, h.url+ep.path, nil)
				if tc.header != "" {
					req.Header.Set("Authorization", tc.header)
				}
				resp, err := http.DefaultClient.Do(req)
				must(t, err)
				r := readResp(t, resp)
				var parts []string
				if tc.wantMsg != "" {
					parts = append(parts, tc.wantMsg)
				}
				r.wantError(t, http.StatusUnauthorized, "unauthorized", parts...)
			}
		})
	}
	// Nothing was changed by the refused calls.
	if _, err := h.st.GetImage(context.Background(), "tiny"); err != nil {
		t.Fatalf("image gone after unauthorized delete: %v", err)
	}
	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs after unauthorized calls", n)
	}
	// The right token works.
	var vms []api.VM
	h.call("GET", "/v1/vms", nil).decodeOK(t, http.StatusOK, &vms)
	if vms == nil || len(vms) != 0 {
		t.Fatalf("GET /v1/vms = %v, want an empty JSON array", vms)
	}
	if r := h.call("GET", "/v1/vms", nil); string(r.body) != "[]\n" {
		t.Errorf("empty list body %q, want []", r.body)
	}
}

func readResp(t *testing.T, resp *http.Response) apiResp {
	t.Helper()
	defer resp.Body.Close()
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			break
		}
	}
	return apiResp{code: resp.StatusCode, hdr: resp.Header, body: b}
}

var macRE = regexp.MustCompile(`^52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$`)

func TestAPICreateDefaults(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	before := time.Now().UTC().Add(-time.Second)
	vm := h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny"})
	checks := []struct {
		what      string
		got, want any
	}{
		{"name", vm.Name, "web1"},
		{"state", vm.State, api.StateStopped}, // the create waited for the host
		{"power", vm.Power, api.PowerStopped},
		{"cpus", vm.CPUs, 1},
		{"memory_mib", vm.MemoryMiB, int64(256)},
		{"disk_bytes", vm.DiskBytes, int64(64 << 20)},
		{"network", vm.Network, "default"},
		{"pool", vm.Pool, "local"},
		{"host", vm.Host, "host1"},
		{"image", vm.Image, "tiny"},
		{"ip", vm.IP, "10.57.0.10"},
		{"ha", vm.HA, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if !macRE.MatchString(vm.MAC) {
		t.Errorf("mac %q is not a 52:54:00 unicast address", vm.MAC)
	}
	if len(vm.ID) != 12 {
		t.Errorf("id %q, want 12 hex digits", vm.ID)
	}
	if vm.CreatedAt.Before(before) || vm.CreatedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("created_at %v is not now", vm.CreatedAt)
	}

	// GET shows the same VM, and the store holds the same spec.
	var got api.VM
	h.call("GET", "/v1/vms/web1", nil).decodeOK(t, http.StatusOK, &got)
	if got.ID != vm.ID || got.IP != vm.IP || got.MAC != vm.MAC || got.Host != vm.Host {
		t.Errorf("GET = %+v, create answered %+v", got, vm)
	}
	sp := h.spec("web1")
	if sp.ID != vm.ID || sp.IP != "10.57.0.10" || sp.MAC != vm.MAC || sp.Deleting {
		t.Errorf("stored spec %+v", sp)
	}
	var list []api.VM
	h.call("GET", "/v1/vms", nil).decodeOK(t, http.StatusOK, &list)
	if len(list) != 1 || list[0].Name != "web1" {
		t.Errorf("list = %+v", list)
	}

	// Explicit values are kept; a disk is rounded up to whole sectors.
	vm2 := h.createVM(api.CreateVMRequest{Name: "web2", Image: "tiny", CPUs: 4, Memory: "1G",
		Disk: "100000001", HA: true, Start: true, UserData: "#cloud-config\n"})
	if vm2.CPUs != 4 || vm2.MemoryMiB != 1024 || vm2.DiskBytes != 100000256 || !vm2.HA ||
		vm2.Power != api.PowerRunning || vm2.State != api.StateRunning {
		t.Errorf("explicit create = %+v", vm2)
	}
	if vm2.MAC == vm.MAC || vm2.ID == vm.ID {
		t.Errorf("two VMs share mac %q or id %q", vm.MAC, vm.ID)
	}
	if sp := h.spec("web2"); sp.UserData != "#cloud-config\n" {
		t.Errorf("user data %q not stored", sp.UserData)
	}
}

func TestAPICreateAllocatesAddressesInOrderAndReusesThem(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	ctx := context.Background()
	for i, name := range []string{"a", "b", "c", "d"} {
		vm := h.createVM(api.CreateVMRequest{Name: name, Image: "tiny"})
		if want := "10.57.0." + itoa(10+i); vm.IP != want {
			t.Fatalf("vm %s got %s, want %s", name, vm.IP, want)
		}
	}
	// Remove b (.11) as the last step of a delete does; its address is
	// the lowest free one and goes to the next VM.
	must(t, h.st.RemoveVM(ctx, h.spec("b")))
	if vm := h.createVM(api.CreateVMRequest{Name: "e", Image: "tiny"}); vm.IP != "10.57.0.11" {
		t.Fatalf("after removing b, e got %s, want 10.57.0.11", vm.IP)
	}
	if vm := h.createVM(api.CreateVMRequest{Name: "f", Image: "tiny"}); vm.IP != "10.57.0.14" {
		t.Fatalf("f got %s, want 10.57.0.14", vm.IP)
	}
	// The name b can be reused too, with a new id and an address of its own.
	old := "10.57.0.11"
	b2 := h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny"})
	if b2.IP == old || b2.IP != "10.57.0.15" {
		t.Fatalf("new b got %s, want 10.57.0.15", b2.IP)
	}
	seen := map[string]string{}
	for _, ip := range h.usedIPs() {
		if seen[ip] != "" {
			t.Fatalf("address %s allocated twice", ip)
		}
		seen[ip] = ip
	}
	if len(seen) != 6 {
		t.Fatalf("used addresses %v, want 6", h.usedIPs())
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func TestAPICreateDuplicateName(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	first := h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny"})
	r := h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "web1", Image: "tiny", CPUs: 2})
	r.wantError(t, http.StatusConflict, "conflict", `vm "web1" already exists`)
	sp := h.spec("web1")
	if sp.ID != first.ID || sp.CPUs != 1 {
		t.Fatalf("the existing VM was changed: %+v", sp)
	}
	if ips := h.usedIPs(); len(ips) != 1 {
		t.Fatalf("a refused create allocated an address: %v", ips)
	}
}

func TestAPICreateDoesNotFit(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	r := h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "big", Image: "tiny", Memory: "8G"})
	r.wantError(t, http.StatusInsufficientStorage, "capacity",
		`no host fits vm "big"`, "host1", "4096 MiB", "needs 8192 MiB")

	r = h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "wide", Image: "tiny", CPUs: 8})
	r.wantError(t, http.StatusInsufficientStorage, "capacity", "host1", "has 4 CPUs, needs 8")

	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs recorded after refused creates", n)
	}
	if ips := h.usedIPs(); len(ips) != 0 {
		t.Fatalf("refused creates allocated %v", ips)
	}
	// Exactly the host's memory fits: memory is checked against the
	// host's size, not against what is free.
	h.createVM(api.CreateVMRequest{Name: "all", Image: "tiny", Memory: "4G"})
}

func TestAPIHostDown(t *testing.T) {
	t.Parallel()
	stale := testHost("host1", 4096, 4)
	stale.LastHeartbeat = time.Now().Add(-2 * time.Minute)
	h := newAPIHarness(t, stale)

	var hosts []api.Host
	h.call("GET", "/v1/hosts", nil).decodeOK(t, http.StatusOK, &hosts)
	if len(hosts) != 1 || hosts[0].Name != "host1" || hosts[0].State != api.HostDown {
		t.Fatalf("hosts = %+v, want host1 down", hosts)
	}
	var one api.Host
	h.call("GET", "/v1/hosts/host1", nil).decodeOK(t, http.StatusOK, &one)
	if one.State != api.HostDown {
		t.Fatalf("GET /v1/hosts/host1 state %q, want down", one.State)
	}

	r := h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "web1", Image: "tiny"})
	r.wantError(t, http.StatusInsufficientStorage, "capacity", "host1", "down")
	r = h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host1"})
	r.wantError(t, http.StatusInsufficientStorage, "capacity", "host1: down")
	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs recorded on a down host", n)
	}

	// The host heartbeats again: it is up and takes the VM.
	putHost(t, h.st, testHost("host1", 4096, 4))
	h.call("GET", "/v1/hosts/host1", nil).decodeOK(t, http.StatusOK, &one)
	if one.State != api.HostUp {
		t.Fatalf("after a heartbeat state %q, want up", one.State)
	}
	if vm := h.createVM(api.CreateVMRequest{Name: "web1", Image: "tiny"}); vm.Host != "host1" {
		t.Fatalf("placed on %q", vm.Host)
	}
}

func TestAPINoHosts(t *testing.T) {
	t.Parallel()
	h := newAPIHarnessHosts(t)
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "web1", Image: "tiny"}).
		wantError(t, http.StatusServiceUnavailable, "unavailable", "no hosts have joined yet")
	var hosts []api.Host
	h.call("GET", "/v1/hosts", nil).decodeOK(t, http.StatusOK, &hosts)
	if hosts == nil || len(hosts) != 0 {
		t.Fatalf("hosts = %#v, want an empty array", hosts)
	}
	h.call("GET", "/v1/hosts/host1", nil).wantError(t, http.StatusNotFound, "not_found", `host "host1" not found`)
}

func TestAPIPlacementAndAllocation(t *testing.T) {
	t.Parallel()
	maint := testHost("host3", 65536, 64)
	maint.State = api.HostMaintenance
	h := newAPIHarness(t, testHost("host1", 4096, 4), testHost("host2", 4096, 4), maint)

	// Running VMs count against their host; placement picks the host with
	// the most unallocated memory (ties: the first by name) and never a
	// host in maintenance.
	a := h.createVM(api.CreateVMRequest{Name: "a", Image: "tiny", Memory: "1G", Start: true})
	b := h.createVM(api.CreateVMRequest{Name: "b", Image: "tiny", Memory: "512M", Start: true})
	c := h.createVM(api.CreateVMRequest{Name: "c", Image: "tiny", Memory: "2G"}) // stopped: allocates nothing
	d := h.createVM(api.CreateVMRequest{Name: "d", Image: "tiny", Memory: "256M", Start: true})
	for _, x := range []struct {
		vm   api.VM
		want string
	}{{a, "host1"}, {b, "host2"}, {c, "host2"}, {d, "host2"}} {
		if x.vm.Host != x.want {
			t.Errorf("vm %s placed on %s, want %s", x.vm.Name, x.vm.Host, x.want)
		}
	}
	// An explicit host is honoured even when another has more room.
	e := h.createVM(api.CreateVMRequest{Name: "e", Image: "tiny", Host: "host1", Start: true})
	if e.Host != "host1" {
		t.Errorf("vm e placed on %s, want host1", e.Host)
	}
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "f", Image: "tiny", Host: "host3"}).
		wantError(t, http.StatusInsufficientStorage, "capacity", "host3: in maintenance")
	h.call("POST", "/v1/vms?wait=false", api.CreateVMRequest{Name: "f", Image: "tiny", Host: "host9"}).
		wantError(t, http.StatusNotFound, "not_found", `host "host9" not found`)

	// Stop d: a stopped VM allocates nothing.
	h.call("POST", "/v1/vms/d/stop", nil).decodeOK(t, http.StatusOK, nil)

	var hosts []api.Host
	h.call("GET", "/v1/hosts", nil).decodeOK(t, http.StatusOK, &hosts)
	want := map[string]struct {
		state     string
		alloc     int64
		vms       int
		memoryMiB int64
	}{
		"host1": {api.HostUp, 1024 + 256, 2, 4096},
		"host2": {api.HostUp, 512, 3, 4096},
		"host3": {api.HostMaintenance, 0, 0, 65536},
	}
	if len(hosts) != len(want) {
		t.Fatalf("hosts = %+v", hosts)
	}
	for _, ho := range hosts {
		w, ok := want[ho.Name]
		if !ok {
			t.Fatalf("unexpected host %q", ho.Name)
		}
		if ho.State != w.state || ho.AllocatedMiB != w.alloc || ho.VMs != w.vms || ho.MemoryMiB != w.memoryMiB {
			t.Errorf("host %s: state %s allocated %d vms %d memory %d; want %s %d %d %d",
				ho.Name, ho.State, ho.AllocatedMiB, ho.VMs, ho.MemoryMiB, w.state, w.alloc, w.vms, w.memoryMiB)
		}
	}

	// A paused VM still holds its memory.
	h.call("POST", "/v1/vms/b/pause", nil).decodeOK(t, http.StatusOK, nil)
	var h2 api.Host
	h.call("GET", "/v1/hosts/host2", nil).decodeOK(t, http.StatusOK, &h2)
	if h2.AllocatedMiB != 512 {
		t.Errorf("host2 allocated %d with b paused, want 512", h2.AllocatedMiB)
	}
}

func TestAPICreateBadInput(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	tests := []struct {
		name  string
		body  any
		code  int
		kind  string
		parts []string
	}{
		{"malformed JSON", `{"name": "web1", "image": `, 400, "invalid", []string{"malformed JSON body"}},
		{"not an object", `["web1"]`, 400, "invalid", []string{"malformed JSON body"}},
		{"wrong type", `{"name": "web1", "image": "tiny", "cpus": "two"}`, 400, "invalid", []string{"malformed JSON body"}},
		{"unknown field", `{"name": "web1", "image": "tiny", "memroy": "1G"}`, 400, "invalid", []string{"malformed JSON body", "memroy"}},
		{"empty body", ``, 400, "invalid", []string{"request body is empty"}},
		{"trailing object", `{"name": "web1", "image": "tiny"} {"name": "web2"}`, 400, "invalid", []string{"trailing data"}},
		{"bad name", api.CreateVMRequest{Name: "Web_1", Image: "tiny"}, 400, "invalid", []string{`vm name "Web_1"`}},
		{"no name", api.CreateVMRequest{Image: "tiny"}, 400, "invalid", []string{"vm name is required"}},
		{"no image", api.CreateVMRequest{Name: "web1"}, 400, "invalid", []string{"an image is required"}},
		{"unknown image", api.CreateVMRequest{Name: "web1", Image: "nope"}, 404, "not_found", []string{`image "nope" not found`, "shoal image list"}},
		{"negative cpus", api.CreateVMRequest{Name: "web1", Image: "tiny", CPUs: -1}, 400, "invalid", []string{"cpus -1 is out of range"}},
		{"too many cpus", api.CreateVMRequest{Name: "web1", Image: "tiny", CPUs: 65}, 400, "invalid", []string{"cpus 65 is out of range: use 1 to 64"}},
		{"memory unit", api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "12Q"}, 400, "invalid", []string{"memory", "unknown unit"}},
		{"memory zero", api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "0"}, 400, "invalid", []string{"greater than zero"}},
		{"memory too small", api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "16M"}, 400, "invalid", []string{"memory 16M is invalid", "at least 32M"}},
		{"memory not whole MiB", api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "100.5M"}, 400, "invalid", []string{"use whole MiB"}},
		{"disk smaller than image", api.CreateVMRequest{Name: "web1", Image: "tiny", Disk: "32M"}, 400, "invalid", []string{`disk 32M is smaller than image "tiny" (64M)`}},
		{"disk too large", api.CreateVMRequest{Name: "web1", Image: "tiny", Disk: "65T"}, 400, "invalid", []string{"at most 64T"}},
		{"disk not a size", api.CreateVMRequest{Name: "web1", Image: "tiny", Disk: "lots"}, 400, "invalid", []string{"disk", "not a number"}},
		{"unknown network", api.CreateVMRequest{Name: "web1", Image: "tiny", Network: "dmz"}, 404, "not_found", []string{`network "dmz" not found`}},
		{"unknown pool", api.CreateVMRequest{Name: "web1", Image: "tiny", Pool: "shared"}, 404, "not_found", []string{`storage pool "shared" not found`, "local"}},
		{"unknown host", api.CreateVMRequest{Name: "web1", Image: "tiny", Host: "host9"}, 404, "not_found", []string{`host "host9" not found`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.call("POST", "/v1/vms?wait=false", tc.body).wantError(t, tc.code, tc.kind, tc.parts...)
		})
	}
	// Bad input changes nothing.
	if n := h.vmCount(); n != 0 {
		t.Fatalf("%d VMs after bad input", n)
	}
	if ips := h.usedIPs(); len(ips) != 0 {
		t.Fatalf("addresses %v allocated by bad input", ips)
	}
}

func TestAPIUnknownRoutes(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	for _, ep := range []struct{ method, path string }{
		{"GET", "/v1/nothing"},
		{"GET", "/"},
		{"GET", "/v2/vms"},
		{"PATCH", "/v1/vms"},
		{"PUT", "/v1/hosts/host1"},
	} {
		h.call(ep.method, ep.path, nil).wantError(t, http.StatusNotFound, "not_found",
			"no such API endpoint: "+ep.method+" "+ep.path)
	}
	h.call("GET", "/v1/vms/ghost", nil).wantError(t, http.StatusNotFound, "not_found", `vm "ghost" not found`, "shoal vm list")
}

func TestAPINetworksAndImagesList(t *testing.T) {
	t.Parallel()
	h := newAPIHarness(t)
	var nets []api.Network
	h.call("GET", "/v1/networks", nil).decodeOK(t, http.StatusOK, &nets)
	want := api.Network{Name: "default", Bridge: "shoal0", Subnet: "10.57.0.0/24", Gateway: "10.57.0.1"}
	if len(nets) != 1 || nets[0] != want {
		t.Fatalf("networks = %+v", nets)
	}
	var ims []api.Image
	h.call("GET", "/v1/images", nil).decodeOK(t, http.StatusOK, &ims)
	if len(ims) != 1 || ims[0].Name != "tiny" || ims[0].SizeBytes != 64<<20 {
		t.Fatalf("images = %+v", ims)
	}
}
