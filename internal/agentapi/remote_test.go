package agentapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

// replicas is a cluster CA with a server certificate, for fake replicas
// that the agent's TLS checks accept.
type replicas struct {
	server tls.Certificate
	client *tls.Config
}

func newReplicas(t *testing.T) *replicas {
	t.Helper()
	dir := t.TempDir()
	cert, _, err := pki.Ensure(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	// The server's own certificate does as the client's: the fakes do not
	// check it.
	cc, err := pki.ClientConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &replicas{server: cert, client: cc}
}

// fake is one replica: it counts the requests it gets, by path.
type fake struct {
	srv  *httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func (r *replicas) start(t *testing.T, h http.HandlerFunc) *fake {
	t.Helper()
	f := &fake{hits: map[string]int{}}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		f.mu.Lock()
		f.hits[req.Method+" "+req.URL.Path]++
		f.mu.Unlock()
		h(w, req)
	}))
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{r.server}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) hit(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[key]
}

func (f *fake) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.hits {
		n += v
	}
	return n
}

// deadURL is an https URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "https://" + l.Addr().String()
	l.Close()
	return u
}

func answer(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

// hangUp reads the request, then drops the connection without answering:
// the request reached the server, which may have acted on it.
func hangUp(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestRemoteFailoverFirstDead(t *testing.T) {
	r := newReplicas(t)
	live := r.start(t, answer(api.Network{Name: "default"}))
	dead := deadURL(t)
	c, err := NewRemote([]string{dead, live.srv.URL}, r.client)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A write that never reached the dead replica goes to the live one.
	if err := c.Report(ctx, api.VMStatus{ID: "vm1"}); err != nil {
		t.Fatalf("Report with the first replica dead: %v", err)
	}
	n, err := c.Network(ctx, "default")
	if err != nil || n.Name != "default" {
		t.Fatalf("Network = %+v, %v; want the second replica's answer", n, err)
	}
	// The replica that answered is remembered: later calls start there.
	if got := c.servers.Current(); got != live.srv.URL {
		t.Errorf("current replica %s, want %s", got, live.srv.URL)
	}
	if got := c.Servers(); !slices.Equal(got, []string{dead, live.srv.URL}) {
		t.Errorf("Servers() = %v", got)
	}
	if live.count() != 2 {
		t.Errorf("live replica got %d requests, want 2", live.count())
	}

	// All dead: an unavailable error naming the servers.
	c2, _ := NewRemote([]string{dead, deadURL(t)}, r.client)
	if _, err := c2.Network(ctx, "default"); !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("all replicas dead: got %v, want ErrUnavailable", err)
	}
}

func TestRemoteFailoverUntrustedFirst(t *testing.T) {
	r := newReplicas(t)
	live := r.start(t, answer(nil))
	// httptest's own certificate is not of this cluster: the handshake
	// fails, the request is never sent, and the next replica gets it.
	stranger := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("a replica of another CA got a request")
	}))
	defer stranger.Close()
	c, err := NewRemote([]string{stranger.URL, live.srv.URL}, r.client)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(context.Background(), api.Host{Name: "h1"}, 3*time.Second); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if live.count() != 1 {
		t.Errorf("live replica got %d requests, want 1", live.count())
	}
}

func TestRemoteNoRetryOfSentWrite(t *testing.T) {
	r := newReplicas(t)
	first := r.start(t, hangUp)
	second := r.start(t, answer(api.VMSpec{ID: "vm1"}))
	c, err := NewRemote([]string{first.srv.URL, second.srv.URL}, r.client)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The commit reached the first replica, which then died: it must not
	// be sent again (the caller finds out what happened and retries).
	_, err = c.CommitMigration(ctx, "h1", api.VMSpec{ID: "vm1"})
	if err == nil {
		t.Fatal("a write whose connection broke after it was sent succeeded")
	}
	if !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("error %v is not ErrUnavailable", err)
	}
	if second.count() != 0 {
		t.Fatalf("the write was sent again to the second replica (%d requests)", second.count())
	}
	if first.count() != 1 {
		t.Errorf("first replica got %d requests, want 1", first.count())
	}
	// The caller's retry starts at the next replica.
	if _, err := c.CommitMigration(ctx, "h1", api.VMSpec{ID: "vm1"}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if second.count() != 1 {
		t.Errorf("retry: second replica got %d requests, want 1", second.count())
	}

	// A read that meets the same hang-up is simply asked of the next one.
	c, _ = NewRemote([]string{first.srv.URL, second.srv.URL}, r.client)
	if _, err := c.Status(ctx, "vm1"); err != nil {
		t.Fatalf("read after a hang-up: %v", err)
	}
	if second.count() != 2 {
		t.Errorf("the read did not go to the second replica")
	}
}

func TestRemoteServerErrors(t *testing.T) {
	r := newReplicas(t)
	sick := r.start(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: "etcd is away", Kind: "unavailable"})
	})
	well := r.start(t, answer(api.Image{Name: "tiny"}))
	c, _ := NewRemote([]string{sick.srv.URL, well.srv.URL}, r.client)
	ctx := context.Background()
	// A read that gets a 503 goes on to the next replica.
	if im, err := c.Image(ctx, "tiny"); err != nil || im.Name != "tiny" {
		t.Fatalf("Image = %+v, %v", im, err)
	}
	// A write that gets one does not: the 503 is the answer.
	c, _ = NewRemote([]string{sick.srv.URL, well.srv.URL}, r.client)
	err := c.Removed(ctx, api.VMSpec{ID: "vm1"})
	if !errors.Is(err, api.ErrUnavailable) || err.Error() != "etcd is away" {
		t.Fatalf("write answered 503: got %v", err)
	}
	if well.hit("POST /v1/agent/removed") != 0 {
		t.Fatal("the write was sent again")
	}
	// A 4xx is an answer, never a reason to move on.
	nf := r.start(t, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: `image "x" not found`})
	})
	c, _ = NewRemote([]string{nf.srv.URL, well.srv.URL}, r.client)
	if _, err := c.Image(ctx, "x"); !api.IsNotFound(err) {
		t.Fatalf("404: got %v", err)
	}
	if c.servers.Current() != nf.srv.URL {
		t.Error("a 404 moved the client to another replica")
	}
}

func TestRemoteWatchMovesOnWhenTheStreamBreaks(t *testing.T) {
	r := newReplicas(t)
	stream := func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(Event{Snapshot: true})
		w.(http.Flusher).Flush()
		// ... and the replica goes away.
	}
	a, b := r.start(t, stream), r.start(t, stream)
	c, _ := NewRemote([]string{a.srv.URL, b.srv.URL}, r.client)
	ctx := context.Background()
	for i, want := range []*fake{a, b, a} {
		snaps := 0
		err := c.WatchVMs(ctx, "h1", func(ev Event) error {
			if ev.Snapshot {
				snaps++
			}
			return nil
		})
		if err == nil || snaps != 1 {
			t.Fatalf("watch %d: %v after %d snapshots", i, err, snaps)
		}
		if n := want.hit("GET /v1/agent/watch"); n == 0 {
			t.Fatalf("watch %d did not go to %s", i, want.srv.URL)
		}
	}
	if a.hit("GET /v1/agent/watch") != 2 || b.hit("GET /v1/agent/watch") != 1 {
		t.Errorf("watches: %d and %d, want 2 and 1", a.hit("GET /v1/agent/watch"), b.hit("GET /v1/agent/watch"))
	}
	// An error of the caller's function is its own: the replica stays.
	mine := errors.New("mine")
	if err := c.WatchVMs(ctx, "h1", func(Event) error { return mine }); err != mine {
		t.Fatalf("got %v, want the function's error", err)
	}
	if c.servers.Current() != b.srv.URL {
		t.Errorf("the function's error moved the client to %s", c.servers.Current())
	}
}

func TestRemoteRefreshServers(t *testing.T) {
	r := newReplicas(t)
	var list atomic.Value
	srv := r.start(t, func(w http.ResponseWriter, req *http.Request) {
		answer(list.Load())(w, req)
	})
	other := r.start(t, answer(nil))
	// The replica advertises another address than the one we reached it
	// by; unusable URLs are left out; the one that answered is kept.
	list.Store([]api.Server{
		{Name: "s2", URL: other.srv.URL + "/"},
		{Name: "s3", URL: "https://0.0.0.0:7443"},
		{Name: "s4", URL: ""},
		{Name: "s5", URL: "http://10.0.0.5:7443"},
		{Name: "s1", URL: "https://s1.example:7443", Leader: true},
	})
	c, _ := NewRemote([]string{srv.srv.URL}, r.client)
	ctx := context.Background()
	changed, err := c.RefreshServers(ctx)
	want := []string{srv.srv.URL, other.srv.URL, "https://s1.example:7443"}
	if err != nil || !changed || !slices.Equal(c.Servers(), want) {
		t.Fatalf("RefreshServers = %v, %v; servers %v, want %v", changed, err, c.Servers(), want)
	}
	if c.servers.Current() != srv.srv.URL {
		t.Errorf("current %s, want the replica that answered", c.servers.Current())
	}
	// An empty answer changes nothing.
	list.Store([]api.Server{})
	if changed, err := c.RefreshServers(ctx); err != nil || changed || !slices.Equal(c.Servers(), want) {
		t.Fatalf("empty list: %v, %v; servers %v", changed, err, c.Servers())
	}

	// KeepServers saves the list (current first) at once, and again after
	// the client moved to another replica.
	list.Store([]api.Server{{Name: "s1", URL: srv.srv.URL}, {Name: "s2", URL: other.srv.URL}})
	c, _ = NewRemote([]string{srv.srv.URL}, r.client)
	saves := make(chan []string, 4)
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.KeepServers(kctx, slog.New(slog.DiscardHandler), time.Hour, func(s []string) error { saves <- s; return nil })
	}()
	defer func() { cancel(); <-done }()
	got := <-saves
	if !slices.Equal(got, []string{srv.srv.URL, other.srv.URL}) {
		t.Fatalf("saved %v", got)
	}
	srv.srv.Close() // the first replica dies
	if _, err := c.Status(ctx, "vm1"); err != nil {
		t.Fatalf("Status after the first replica died: %v", err)
	}
	select {
	case got = <-saves:
	case <-time.After(10 * time.Second):
		t.Fatal("the list was not saved again after the failover")
	}
	if len(got) == 0 || got[0] != other.srv.URL {
		t.Errorf("saved %v after the failover, want %s first", got, other.srv.URL)
	}
}
