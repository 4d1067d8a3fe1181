package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

func TestNewServerURLs(t *testing.T) {
	tests := []struct {
		server  string
		wantErr string // "" means accepted
	}{
		{"https://127.0.0.1:7443", ""},
		{"https://shoal.example:7443", ""},
		{"https://127.0.0.1:7443/ignored/path", ""},
		{"unix:///x.sock", ""},
		{"unix:///var/lib/shoal/shoal.sock", ""},
		{"", "no server given"},
		{"http://x", `server "http://x" must be https://HOST:PORT or unix:///PATH`},
		{"http://127.0.0.1:7443", "must be https://HOST:PORT or unix:///PATH"},
		{"https://", "must be https://HOST:PORT"},
		{"ftp://x:21", "must be https://HOST:PORT"},
		{"127.0.0.1:7443", "must be https://HOST:PORT"},
		{"localhost:7443", "must be https://HOST:PORT"},
		{"x", "must be https://HOST:PORT"},
		{"https://[::1", "must be https://HOST:PORT"},
	}
	for _, tc := range tests {
		c, err := New(tc.server, "tok", nil)
		if tc.wantErr == "" {
			if err != nil || c == nil {
				t.Errorf("New(%q) = %v, want a client", tc.server, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("New(%q) = %v, want an error containing %q", tc.server, err, tc.wantErr)
		}
	}
	if _, err := New("https://127.0.0.1:7443", "tok", []byte("not a PEM")); err == nil ||
		!strings.Contains(err.Error(), "CA certificate does not parse") {
		t.Errorf("bad CA: got %v", err)
	}
}

// seen is what a fake server saw of one request.
type seen struct {
	method, path, rawQuery, auth, contentType string
	contentLength                             int64
	body                                      []byte
}

// fakeAPI is an httptest TLS server that answers each request with the
// next canned answer and records what it saw.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []seen
	srv  *httptest.Server
	ca   []byte
	code int
	body string
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	cert, caPEM := testServerCert(t)
	return newFakeAPIWith(t, cert, caPEM)
}

// The tests' cluster CA and server certificate, one for all fake servers
// (as replicas share theirs), made once in a dir TestMain removes.
var (
	testPKIDir  string
	testPKIOnce sync.Once
	testCert    tls.Certificate
	testCAPEM   []byte
	testPKIErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testPKIDir != "" {
		os.RemoveAll(testPKIDir)
	}
	os.Exit(code)
}

func testServerCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	testPKIOnce.Do(func() {
		if testPKIDir, testPKIErr = os.MkdirTemp("", "shoal-client-test-"); testPKIErr == nil {
			testCert, testCAPEM, testPKIErr = pki.Ensure(testPKIDir, []string{"127.0.0.1"})
		}
	})
	must(t, testPKIErr)
	return testCert, testCAPEM
}

// newFakeAPIWith is newFakeAPI serving with the certificate cert of the
// CA caPEM.
func newFakeAPIWith(t *testing.T, cert tls.Certificate, caPEM []byte) *fakeAPI {
	t.Helper()
	f := &fakeAPI{ca: caPEM}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{method: r.Method, path: r.URL.EscapedPath(), rawQuery: r.URL.RawQuery,
			auth: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type"),
			contentLength: r.ContentLength, body: b})
		code, body := f.code, f.body
		f.mu.Unlock()
		if strings.HasPrefix(body, "{") || strings.HasPrefix(body, "[") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}))
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) answer(code int, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.code = code
	if s, ok := v.(string); ok {
		f.body = s
		return
	}
	b, _ := json.Marshal(v)
	f.body = string(b)
}

func (f *fakeAPI) last(t *testing.T) seen {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("the server saw no request")
	}
	return f.reqs[len(f.reqs)-1]
}

func (f *fakeAPI) client(t *testing.T, token string) *Client {
	t.Helper()
	c, err := New(f.srv.URL, token, f.ca)
	must(t, err)
	return c
}

func TestClientErrorFromServer(t *testing.T) {
	f := newFakeAPI(t)
	c := f.client(t, "tok-1")
	ctx := context.Background()

	msg := `vm "web1" already exists`
	f.answer(http.StatusConflict, api.ErrorBody{Error: msg, Kind: "conflict"})
	_, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Image: "tiny", Memory: "256M"}, false)
	if err == nil {
		t.Fatal("no error from a 409")
	}
	if !errors.Is(err, api.ErrConflict) {
		t.Errorf("error %v is not api.ErrConflict", err)
	}
	if err.Error() != msg {
		t.Errorf("error message %q, want the server's %q", err, msg)
	}
	for _, k := range []error{api.ErrNotFound, api.ErrInvalid, api.ErrInternal} {
		if errors.Is(err, k) {
			t.Errorf("409 error is also %v", k)
		}
	}
	r := f.last(t)
	if r.method != "POST" || r.path != "/v1/vms" || r.rawQuery != "wait=false" {
		t.Errorf("request %s %s?%s", r.method, r.path, r.rawQuery)
	}
	if r.auth != "Bearer tok-1" || r.contentType != "application/json" {
		t.Errorf("auth %q content-type %q", r.auth, r.contentType)
	}
	var sent api.CreateVMRequest
	if err := json.Unmarshal(r.body, &sent); err != nil || sent.Name != "web1" || sent.Memory != "256M" {
		t.Errorf("body %s (%v)", r.body, err)
	}

	// Each status maps to its kind, with the server's message.
	for _, tc := range []struct {
		code int
		kind error
	}{
		{400, api.ErrInvalid}, {401, api.ErrUnauthorized}, {404, api.ErrNotFound},
		{507, api.ErrCapacity}, {503, api.ErrUnavailable}, {500, api.ErrInternal},
	} {
		f.answer(tc.code, api.ErrorBody{Error: "message for " + http.StatusText(tc.code), Kind: "x"})
		_, err := c.GetVM(ctx, "web1")
		if !errors.Is(err, tc.kind) || err.Error() != "message for "+http.StatusText(tc.code) {
			t.Errorf("status %d: got %v, want %v with the server's message", tc.code, err, tc.kind)
		}
	}

	// A body that is not an api.ErrorBody (a proxy's page, say) still
	// gives a readable error with the status.
	f.answer(http.StatusBadGateway, "<html>bad gateway</html>")
	_, err = c.ListVMs(ctx)
	if err == nil || err.Error() != "server answered 502 Bad Gateway" || !errors.Is(err, api.ErrInternal) {
		t.Errorf("502 with HTML: got %v", err)
	}
	f.answer(http.StatusNotFound, `{"kind": "not_found"}`)
	if _, err = c.ListVMs(ctx); err == nil || err.Error() != "server answered 404 Not Found" || !api.IsNotFound(err) {
		t.Errorf("404 without a message: got %v", err)
	}
}

func TestClientSuccessfulCalls(t *testing.T) {
	f := newFakeAPI(t)
	c := f.client(t, "tok-2")
	ctx := context.Background()

	want := api.VM{Name: "web1", ID: "abc", State: api.StateRunning, Host: "host1", IP: "10.57.0.10", CPUs: 1, MemoryMiB: 256}
	f.answer(http.StatusOK, want)
	got, err := c.GetVM(ctx, "web1")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("GetVM = %+v, %v", got, err)
	}
	if r := f.last(t); r.method != "GET" || r.path != "/v1/vms/web1" || r.auth != "Bearer tok-2" || len(r.body) != 0 {
		t.Errorf("GetVM sent %+v", r)
	}

	// Names are path-escaped, so odd input cannot reach another endpoint.
	f.answer(http.StatusOK, want)
	_, _ = c.GetVM(ctx, "../hosts")
	if r := f.last(t); r.path != "/v1/vms/..%2Fhosts" {
		t.Errorf("GetVM(../hosts) requested %q", r.path)
	}

	// With wait, create sends no query.
	f.answer(http.StatusCreated, want)
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Image: "tiny"}, true); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.rawQuery != "" {
		t.Errorf("waiting create sent query %q", r.rawQuery)
	}

	// A plain action sends no body (the server reads a stop's body only
	// when there is one); a forced stop sends {"force":true}.
	f.answer(http.StatusOK, want)
	if _, err := c.VMAction(ctx, "web1", "stop", false); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.method != "POST" || r.path != "/v1/vms/web1/stop" || r.contentLength != 0 || len(r.body) != 0 {
		t.Errorf("stop sent %+v", r)
	}
	if _, err := c.VMAction(ctx, "web1", "stop", true); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); string(r.body) != `{"force":true}` {
		t.Errorf("forced stop body %q", r.body)
	}

	// Update sends only the settings given: an empty group is sent (it
	// takes the VM out of its group), an unset HA is not.
	f.answer(http.StatusOK, want)
	prio, group := "high", ""
	if _, err := c.UpdateVM(ctx, "web1", api.UpdateVMRequest{Priority: &prio, AntiAffinity: &group}); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.method != "PATCH" || r.path != "/v1/vms/web1" || string(r.body) != `{"priority":"high","anti_affinity":""}` {
		t.Errorf("update sent %s %s %s", r.method, r.path, r.body)
	}

	// Delete: 204 and 202 are both success; force goes in the query.
	f.answer(http.StatusNoContent, "")
	if err := c.DeleteVM(ctx, "web1", true); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.method != "DELETE" || r.path != "/v1/vms/web1" || r.rawQuery != "force=true" {
		t.Errorf("delete sent %+v", r)
	}
	f.answer(http.StatusAccepted, "")
	if err := c.DeleteVM(ctx, "web1", false); err != nil {
		t.Fatal(err)
	}
	if r := f.last(t); r.rawQuery != "" {
		t.Errorf("unforced delete sent query %q", r.rawQuery)
	}

	// A 200 whose body is not the promised JSON is an error.
	f.answer(http.StatusOK, "not json")
	if _, err := c.ListHosts(ctx); err == nil || !strings.Contains(err.Error(), "bad answer from server") {
		t.Errorf("garbage body: got %v", err)
	}
}

func TestClientRefusesUntrustedServer(t *testing.T) {
	f := newFakeAPI(t)
	f.answer(http.StatusOK, []api.VM{})
	// No CA given: the system roots do not know httptest's certificate.
	c, err := New(f.srv.URL, "tok", nil)
	must(t, err)
	_, err = c.ListVMs(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Shoal server at "+f.srv.URL) {
		t.Fatalf("untrusted server: got %v", err)
	}
	f.mu.Lock()
	n := len(f.reqs)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("the token was sent to an untrusted server (%d requests)", n)
	}
}

// TestClientRefusesAgentAsServer: a host's certificate is of the cluster
// CA and may hold the server's address, but it is not a server's: the
// client refuses it before sending the token.
func TestClientRefusesAgentAsServer(t *testing.T) {
	dir := t.TempDir()
	_, caPEM, err := pki.Ensure(dir, []string{"127.0.0.1"})
	must(t, err)
	keyDir := t.TempDir()
	csr, err := pki.NewCSR(keyDir, "host1", nil)
	must(t, err)
	certPEM, err := pki.SignAgent(dir, csr, "host1", []net.IP{net.IPv4(127, 0, 0, 1)})
	must(t, err)
	keyPEM, err := os.ReadFile(filepath.Join(keyDir, pki.AgentKey))
	must(t, err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, err)
	f := newFakeAPIWith(t, cert, caPEM)
	f.answer(http.StatusOK, []api.VM{})
	c, err := New(f.srv.URL, "tok", caPEM)
	must(t, err)
	_, err = c.ListVMs(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is not the shoal-server") {
		t.Fatalf("agent posing as the server: got %v", err)
	}
	f.mu.Lock()
	n := len(f.reqs)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("the token was sent to a host posing as the server (%d requests)", n)
	}
}

func TestClientServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	c, err := New("https://"+addr, "tok", nil)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.ListVMs(ctx)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Shoal server at https://"+addr) {
		t.Fatalf("got %v", err)
	}
}

func TestClientUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	must(t, err)
	var auth, path string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth, path = r.Header.Get("Authorization"), r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode([]api.Host{{Name: "host1", State: api.HostUp}})
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	c, err := New("unix://"+sock, "tok-3", nil)
	must(t, err)
	hosts, err := c.ListHosts(context.Background())
	if err != nil || len(hosts) != 1 || hosts[0].Name != "host1" || hosts[0].State != api.HostUp {
		t.Fatalf("ListHosts over unix socket = %+v, %v", hosts, err)
	}
	if auth != "Bearer tok-3" || path != "/v1/hosts" {
		t.Errorf("server saw auth %q path %q", auth, path)
	}

	c, err = New("unix://"+filepath.Join(t.TempDir(), "missing.sock"), "t", nil)
	must(t, err)
	if _, err := c.ListHosts(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach the Shoal server") {
		t.Errorf("missing socket: got %v", err)
	}
}
