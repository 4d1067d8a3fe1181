package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/store"
	"github.com/shoalvm/shoal/internal/store/storetest"
)

const apiTestToken = "test-token-0123456789"

// apiHarness is a Server over a throwaway etcd, seeded by hand: a token,
// the default network, hosts and the 64 MiB "tiny" image. No agent runs;
// a fake host loop (see fakeHost) plays the hosts' part in the store so
// that calls that wait for convergence return.
type apiHarness struct {
	t   *testing.T
	st  *store.Store
	srv *Server
	cfg Config
	url string

	mu      sync.Mutex
	frozen  map[string]bool // VMs the fake host leaves alone
	migrate bool            // the fake hosts carry out live migrations (see fakeMigration)
}

func testHost(name string, memMiB int64, cpus int) api.Host {
	return api.Host{Name: name, State: api.HostUp, CPUs: cpus, MemoryMiB: memMiB, Address: "https://127.0.0.1:7444",
		Accel: "kvm", LastHeartbeat: time.Now().UTC(), Pools: []string{"local"}}
}

// putHost records a host; one whose heartbeat is recent also gets a
// liveness lease, as a registering agent would.
func putHost(t testing.TB, st *store.Store, h api.Host) {
	t.Helper()
	ctx := context.Background()
	must(t, st.PutHost(ctx, h))
	if time.Since(h.LastHeartbeat) < time.Minute {
		_, err := st.MarkAlive(ctx, h.Name, 30*time.Second)
		must(t, err)
	}
}

// newAPIHarness starts a server. Without hosts it seeds one: host1 with
// 4096 MiB and 4 CPUs, heartbeating now. Pass no hosts at all with
// newAPIHarnessHosts(t).
func newAPIHarness(t *testing.T, hosts ...api.Host) *apiHarness {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []api.Host{testHost("host1", 4096, 4)}
	}
	return newAPIHarnessHosts(t, hosts...)
}

func newAPIHarnessHosts(t *testing.T, hosts ...api.Host) *apiHarness {
	t.Helper()
	ctx := context.Background()
	st := storetest.New(t)
	must(t, st.PutToken(ctx, apiTestToken, store.TokenInfo{Name: "admin", Role: "admin", CreatedAt: time.Now()}))
	must(t, st.PutNetwork(ctx, api.Network{Name: "default", Bridge: "shoal0", Subnet: "10.57.0.0/24", Gateway: "10.57.0.1"}))
	for _, h := range hosts {
		putHost(t, st, h)
	}
	must(t, st.PutImage(ctx, api.Image{Name: "tiny", Format: "qcow2", Source: "built: tiny", SizeBytes: 64 << 20, Kernel: true}))
	cfg := Config{ImageDir: t.TempDir(), Hosts: nil}
	srv := New(cfg, st, slog.New(slog.DiscardHandler))
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	h := &apiHarness{t: t, st: st, srv: srv, cfg: cfg, url: ts.URL, frozen: map[string]bool{}}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); h.fakeHost(fctx) }()
	// Cleanups run last-in first-out: the loop stops before etcd does.
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// freeze makes the fake host ignore a VM from now on: its status stays
// what it was (or what the test writes with report) and it is not
// removed when deleting.
func (h *apiHarness) freeze(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.frozen[name] = true
}

func (h *apiHarness) unfreeze(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.frozen, name)
}

func (h *apiHarness) isFrozen(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.frozen[name]
}

// fakeHost stands in for the agents, through the store only: every few
// milliseconds it reports each VM in the state its desired power asks
// for (having "observed" the spec's revision), carries out restarts, and
// removes VMs marked for deletion. It is a test fake, not a model of the
// agent's timing.
func (h *apiHarness) fakeHost(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		specs, _, err := h.st.ListVMs(ctx)
		if err != nil {
			continue
		}
		sts, err := h.st.ListStatuses(ctx)
		if err != nil {
			continue
		}
		for _, sp := range specs {
			if h.isFrozen(sp.Name) {
				continue
			}
			if sp.Deleting {
				_ = h.st.RemoveVM(ctx, sp)
				continue
			}
			if sp.Migration != nil && h.migrating() {
				h.fakeMigration(ctx, sp)
			}
			want := map[string]string{
				api.PowerStopped: api.StateStopped,
				api.PowerRunning: api.StateRunning,
				api.PowerPaused:  api.StatePaused,
			}[sp.Power]
			cur, ok := sts[sp.ID]
			if ok && cur.ID == sp.ID && cur.State == want && cur.RestartGen == sp.RestartGen && cur.ObservedRev >= sp.Rev {
				continue
			}
			_ = h.st.PutStatus(ctx, api.VMStatus{ID: sp.ID, Host: sp.Host, State: want,
				Accel: "kvm", RestartGen: sp.RestartGen, ObservedRev: sp.Rev})
		}
	}
}

// report writes a host's report about VM name, as of its current spec
// revision; st.ID defaults to the spec's id.
func (h *apiHarness) report(name string, st api.VMStatus) {
	h.t.Helper()
	sp := h.spec(name)
	if st.ID == "" {
		st.ID = sp.ID
	}
	if st.Host == "" {
		st.Host = sp.Host
	}
	if st.ObservedRev == 0 {
		st.ObservedRev = sp.Rev
	}
	must(h.t, h.st.PutStatus(context.Background(), st))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// apiResp is one HTTP answer.
type apiResp struct {
	code int
	hdr  http.Header
	body []byte
}

// call sends an authenticated request. body may be nil, a string (sent
// as is) or a value (sent as JSON).
func (h *apiHarness) call(method, path string, body any) apiResp {
	h.t.Helper()
	return h.callToken(apiTestToken, method, path, body)
}

func (h *apiHarness) callToken(token, method, path string, body any) apiResp {
	h.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		js, err := json.Marshal(b)
		must(h.t, err)
		r = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, h.url+path, r)
	must(h.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return h.do(req)
}

// do sends req and reads the whole answer.
func (h *apiHarness) do(req *http.Request) apiResp {
	h.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	must(h.t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	must(h.t, err)
	return apiResp{code: resp.StatusCode, hdr: resp.Header, body: out}
}

// wantError checks an error answer: status, JSON body with the kind, and
// a message containing every one of parts.
func (r apiResp) wantError(t *testing.T, code int, kind string, parts ...string) api.ErrorBody {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d; body %s", r.code, code, r.body)
	}
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var eb api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil {
		t.Fatalf("error body %q is not an api.ErrorBody: %v", r.body, err)
	}
	if eb.Kind != kind {
		t.Errorf("kind %q, want %q (message %q)", eb.Kind, kind, eb.Error)
	}
	if eb.Error == "" {
		t.Errorf("empty error message")
	}
	for _, p := range parts {
		if !strings.Contains(eb.Error, p) {
			t.Errorf("message %q does not contain %q", eb.Error, p)
		}
	}
	return eb
}

// decodeOK checks a 2xx status and decodes the JSON body into v.
func (r apiResp) decodeOK(t *testing.T, code int, v any) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d; body %s", r.code, code, r.body)
	}
	if v == nil {
		return
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
}

// createVM creates a VM, waiting (by default) for the fake host to
// report it, and returns what the API answered.
func (h *apiHarness) createVM(req api.CreateVMRequest) api.VM {
	h.t.Helper()
	var vm api.VM
	h.call("POST", "/v1/vms?timeout=10s", req).decodeOK(h.t, http.StatusCreated, &vm)
	return vm
}

func (h *apiHarness) spec(name string) api.VMSpec {
	h.t.Helper()
	sp, err := h.st.GetVM(context.Background(), name)
	must(h.t, err)
	return sp
}

func (h *apiHarness) vmCount() int {
	h.t.Helper()
	specs, _, err := h.st.ListVMs(context.Background())
	must(h.t, err)
	return len(specs)
}

func (h *apiHarness) usedIPs() []string {
	h.t.Helper()
	ips, err := h.st.UsedIPs(context.Background(), "default")
	must(h.t, err)
	return ips
}
