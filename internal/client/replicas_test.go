package client

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

// downURL is an https URL where nothing listens.
func downURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	u := "https://" + l.Addr().String()
	l.Close()
	return u
}

func (f *fakeAPI) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func TestClientFailoverFirstDown(t *testing.T) {
	f := newFakeAPI(t)
	down := downURL(t)
	c, err := New(down+", "+f.srv.URL, "tok", f.ca)
	must(t, err)
	ctx := context.Background()

	// A write that never reached the down server goes to the next one.
	f.answer(http.StatusCreated, api.VM{Name: "web1"})
	if vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Image: "tiny"}, false); err != nil || vm.Name != "web1" {
		t.Fatalf("CreateVM with the first server down = %+v, %v", vm, err)
	}
	if r := f.last(t); r.method != "POST" || r.auth != "Bearer tok" || !strings.Contains(string(r.body), `"web1"`) {
		t.Errorf("second server saw %+v", r)
	}
	if !c.FailedOver() || !slices.Equal(c.Servers(), []string{f.srv.URL, down}) {
		t.Errorf("FailedOver %v, Servers %v", c.FailedOver(), c.Servers())
	}
	// So does an upload, whole.
	f.answer(http.StatusCreated, api.Image{Name: "img"})
	c, _ = New(down+","+f.srv.URL, "tok", f.ca)
	if _, err := c.ImportImage(ctx, "img", strings.NewReader("disk bytes")); err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	if r := f.last(t); r.method != "PUT" || string(r.body) != "disk bytes" || r.contentType != "application/octet-stream" {
		t.Errorf("upload arrived as %s %q %q", r.method, r.body, r.contentType)
	}
	// The console's raw connection too.
	c, _ = New(down+","+f.srv.URL, "tok", f.ca)
	f.answer(http.StatusNotFound, api.ErrorBody{Error: `vm "x" not found`})
	if _, err := c.Console(ctx, "x"); !api.IsNotFound(err) {
		t.Fatalf("Console with the first server down: %v, want the second server's 404", err)
	}

	// All down: one error that names each server.
	other := downURL(t)
	c, _ = New(down+","+other, "tok", f.ca)
	_, err = c.ListVMs(ctx)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Shoal server at "+down) ||
		!strings.Contains(err.Error(), "cannot reach the Shoal server at "+other) {
		t.Fatalf("all down: %v", err)
	}
	if c.FailedOver() {
		t.Error("FailedOver with no server answering")
	}
}

func TestClientNoRetryOfSentWrite(t *testing.T) {
	hang := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close() // it read the request, and died
		}
	}))
	cert, _ := testServerCert(t)
	hang.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	hang.StartTLS()
	defer hang.Close()
	f := newFakeAPI(t)
	f.answer(http.StatusOK, api.VM{Name: "web1"})
	c, err := New(hang.URL+","+f.srv.URL, "tok", f.ca)
	must(t, err)
	ctx := context.Background()
	_, err = c.VMAction(ctx, "web1", "stop", true)
	if err == nil || !strings.Contains(err.Error(), "lost the connection to the Shoal server at "+hang.URL) ||
		!strings.Contains(err.Error(), "check before you retry") {
		t.Fatalf("stop whose connection broke: %v", err)
	}
	if n := f.count(); n != 0 {
		t.Fatalf("the stop was sent again to the second server (%d requests)", n)
	}
	// A read is asked of the next server.
	c, _ = New(hang.URL+","+f.srv.URL, "tok", f.ca)
	if vm, err := c.GetVM(ctx, "web1"); err != nil || vm.Name != "web1" {
		t.Fatalf("GetVM after a hang-up = %+v, %v", vm, err)
	}
	// A 503 to a read too; a 503 to a write is the answer.
	sick := newFakeAPI(t)
	sick.answer(http.StatusServiceUnavailable, api.ErrorBody{Error: "etcd is away"})
	c, _ = New(sick.srv.URL+","+f.srv.URL, "tok", f.ca)
	if _, err := c.GetVM(ctx, "web1"); err != nil {
		t.Fatalf("GetVM with the first server sick: %v", err)
	}
	c, _ = New(sick.srv.URL+","+f.srv.URL, "tok", f.ca)
	before := f.count()
	if _, err := c.VMAction(ctx, "web1", "start", false); !errors.Is(err, api.ErrUnavailable) || err.Error() != "etcd is away" {
		t.Fatalf("start answered 503: %v", err)
	}
	if f.count() != before {
		t.Fatal("a write answered 503 was sent again")
	}
}

func TestConfigServers(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "config.json")
	// The old form, one server, still reads.
	must(t, os.WriteFile(path, []byte(`{"server": "https://10.0.0.1:7443", "token": "t"}`), 0o600))
	cfg, err := LoadConfig(path)
	must(t, err)
	if got := cfg.URLs(); !slices.Equal(got, []string{"https://10.0.0.1:7443"}) {
		t.Fatalf("URLs() = %v", got)
	}

	// The cluster's list goes after the file's own server; nothing else
	// changes.
	saved, err := SaveServers(path, cfg, []string{"https://10.0.0.2:7443", "https://10.0.0.1:7443", "https://10.0.0.3:7443"})
	if err != nil || !saved {
		t.Fatalf("SaveServers = %v, %v", saved, err)
	}
	got, err := LoadConfig(path)
	want := Config{Server: "https://10.0.0.1:7443", Servers: []string{"https://10.0.0.2:7443", "https://10.0.0.3:7443"}, Token: "t"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after SaveServers: %+v, %v", got, err)
	}
	if u := got.URLs(); !slices.Equal(u, []string{"https://10.0.0.1:7443", "https://10.0.0.2:7443", "https://10.0.0.3:7443"}) {
		t.Fatalf("URLs() = %v", u)
	}
	if saved, _ := SaveServers(path, got, []string{"https://10.0.0.2:7443", "https://10.0.0.3:7443"}); saved {
		t.Error("the same list written again")
	}
	if saved, _ := SaveServers(path, got, nil); saved {
		t.Error("an empty list wiped the servers")
	}
	// A file rewritten meanwhile (another cluster's 'shoal up') is left alone.
	must(t, SaveConfig(path, Config{Server: "unix:///other.sock", Token: "t2"}))
	if saved, _ := SaveServers(path, got, []string{"https://10.0.0.9:7443"}); saved {
		t.Error("SaveServers wrote over settings of another server")
	}

	// SHOAL_SERVER replaces the file's servers, the replicas too; it may
	// name several.
	must(t, SaveConfig(path, want))
	t.Setenv("SHOAL_SERVER", "https://10.0.1.1:7443,https://10.0.1.2:7443")
	got, err = LoadConfig(path)
	must(t, err)
	if u := got.URLs(); err != nil || !slices.Equal(u, []string{"https://10.0.1.1:7443", "https://10.0.1.2:7443"}) {
		t.Fatalf("URLs() with SHOAL_SERVER = %v", u)
	}
}
