package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/replica"
)

// Remote is the control plane of an agent on another host: the agent API
// of the servers (the control plane's replicas), over HTTPS with the
// agent's certificate. Each call goes to the replica that answered last;
// when that one cannot be reached it moves on to the next (see send).
type Remote struct {
	servers *replica.Set
	http    *http.Client
	// stream has no overall timeout: the watch lasts as long as it can.
	stream *http.Client
	fetch  sync.Mutex    // one image download at a time, so two VMs never race for one file
	moved  chan struct{} // a replica failed a call: refresh the list soon
}

// NewRemote returns a client of the agent API of the servers
// (https://HOST:PORT each, all of one cluster) using tlsCfg (the agent's
// certificate and the cluster CA, which signed every replica).
func NewRemote(servers []string, tlsCfg *tls.Config) (*Remote, error) {
	var bases []string
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("server %q must be https://HOST:PORT", s)
		}
		bases = append(bases, "https://"+u.Host)
	}
	if len(bases) == 0 {
		return nil, errors.New("no server to talk to: join one with --join https://SERVER:PORT")
	}
	tlsCfg = tlsCfg.Clone()
	tlsCfg.VerifyConnection = pki.RequireRole(pki.OUServer, "") // not another agent posing as the server
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}
	tr := &http.Transport{TLSClientConfig: tlsCfg, DialContext: d.DialContext, TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, ResponseHeaderTimeout: 30 * time.Second}
	return &Remote{servers: replica.NewSet(bases), http: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		stream: &http.Client{Transport: tr}, moved: make(chan struct{}, 1)}, nil
}

// Servers returns the replicas this client knows, in their order.
func (c *Remote) Servers() []string { return c.servers.All() }

// send sends a request to the replicas in turn, from the one that
// answered last, and returns the first answer with the replica that gave
// it. It moves on to the next replica only when the request surely did
// not reach a server (no connection, a failed TLS handshake) or when it
// only reads (then also on a lost connection or a 5xx). A write that may
// have reached a server is not sent again: its error is returned, and the
// caller's own retry starts at the next replica. perTry, if set, bounds
// each attempt.
func (c *Remote) send(ctx context.Context, hc *http.Client, method, path string, body []byte, perTry time.Duration) (*http.Response, string, error) {
	var last error
	for _, base := range c.servers.Order() {
		resp, err := c.try(ctx, hc, method, base+path, body, perTry)
		if err != nil {
			last = fmt.Errorf("control plane %s: %w: %w", base, api.ErrUnavailable, err)
			c.failed(base)
			var nr notReached
			if replica.MayRetry(ctx, method, !errors.As(err, &nr)) {
				continue
			}
			return nil, base, last
		}
		if replica.Failing(resp.StatusCode) {
			c.failed(base)
			if replica.RetryStatus(method, resp.StatusCode) {
				last = readErr(resp)
				resp.Body.Close()
				continue
			}
		} else {
			c.servers.Worked(base)
		}
		return resp, base, nil
	}
	if last == nil {
		last = fmt.Errorf("control plane: %w: no server known", api.ErrUnavailable)
	}
	return nil, "", last
}

// failed moves on from a replica that failed a call, and asks for a fresh
// list of replicas.
func (c *Remote) failed(base string) {
	c.servers.Failed(base)
	c.refreshSoon()
}

// notReached marks the error of a request that surely reached no server.
type notReached struct{ error }

func (e notReached) Unwrap() error { return e.error }

func (c *Remote) try(ctx context.Context, hc *http.Client, method, url string, body []byte, perTry time.Duration) (*http.Response, error) {
	cancel := context.CancelFunc(func() {})
	tctx := ctx
	if perTry > 0 {
		tctx, cancel = context.WithTimeout(ctx, perTry)
	}
	tctx, sent := replica.Track(tctx)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(tctx, method, url, rd)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		if !sent() {
			return nil, notReached{err}
		}
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// cancelOnClose ends an attempt's context once its answer is read.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (c *Remote) do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.call(ctx, method, path, in, out, 0)
	return err
}

// call is do with a bound on each attempt; it returns the replica that
// answered.
func (c *Remote) call(ctx context.Context, method, path string, in, out any, perTry time.Duration) (string, error) {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return "", err
		}
		body = b
	}
	resp, base, err := c.send(ctx, c.http, method, path, body, perTry)
	if err != nil {
		return base, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return base, readErr(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return base, nil
	}
	return base, json.NewDecoder(resp.Body).Decode(out)
}

func readErr(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = "control plane answered " + resp.Status
	}
	return api.FromHTTP(resp.StatusCode, eb.Error)
}

// Register implements Reporter. Each attempt is bounded by half the
// lease: a replica that hangs must not hold the heartbeat until the lease
// runs out; the next heartbeat goes to another replica.
func (c *Remote) Register(ctx context.Context, h api.Host, ttl time.Duration) error {
	_, err := c.call(ctx, "POST", "/v1/agent/register?ttl="+ttl.String(), h, nil, ttl/2)
	return err
}

// Report implements Reporter.
func (c *Remote) Report(ctx context.Context, st api.VMStatus) error {
	return c.do(ctx, "POST", "/v1/agent/status", st, nil)
}

// Status implements Reporter.
func (c *Remote) Status(ctx context.Context, id string) (api.VMStatus, error) {
	var st api.VMStatus
	return st, c.do(ctx, "GET", "/v1/agent/status/"+url.PathEscape(id), nil, &st)
}

// GuestStopped implements Reporter.
func (c *Remote) GuestStopped(ctx context.Context, s api.VMSpec) (api.VMSpec, error) {
	var v api.VMSpec
	return v, c.do(ctx, "POST", "/v1/agent/guest-stopped", s, &v)
}

// ClaimStart implements Reporter.
func (c *Remote) ClaimStart(ctx context.Context, _ string, s api.VMSpec) error {
	return c.do(ctx, "POST", "/v1/agent/claim-start", s, nil)
}

// Crashed implements Reporter.
func (c *Remote) Crashed(ctx context.Context, _ string, s api.VMSpec, reason, what string, gaveUp bool) error {
	return c.do(ctx, "POST", "/v1/agent/crashed", crashReport{Spec: s, Reason: reason, What: what, GaveUp: gaveUp}, nil)
}

// VolumeDone implements Reporter.
func (c *Remote) VolumeDone(ctx context.Context, _ string, v api.Volume) error {
	return c.do(ctx, "POST", "/v1/agent/volume-done", v, nil)
}

// crashReport is the body of POST /v1/agent/crashed.
type crashReport struct {
	Spec   api.VMSpec `json:"spec"`
	Reason string     `json:"reason"`
	What   string     `json:"what"`
	GaveUp bool       `json:"gave_up,omitempty"`
}

// Removed implements Reporter.
func (c *Remote) Removed(ctx context.Context, s api.VMSpec) error {
	return c.do(ctx, "POST", "/v1/agent/removed", s, nil)
}

// migrationCall carries a migration step of the target to the server.
type migrationCall struct {
	Spec     api.VMSpec             `json:"spec"`
	Endpoint *api.MigrationEndpoint `json:"endpoint,omitempty"`
}

// MigrationReady implements Reporter; the server knows the host from the
// certificate.
func (c *Remote) MigrationReady(ctx context.Context, _ string, s api.VMSpec, ep api.MigrationEndpoint) error {
	return c.do(ctx, "POST", "/v1/agent/migration/ready", migrationCall{Spec: s, Endpoint: &ep}, nil)
}

// CommitMigration implements Reporter.
func (c *Remote) CommitMigration(ctx context.Context, _ string, s api.VMSpec) (api.VMSpec, error) {
	var v api.VMSpec
	return v, c.do(ctx, "POST", "/v1/agent/migration/commit", migrationCall{Spec: s}, &v)
}

// MigrationProgress implements Reporter.
func (c *Remote) MigrationProgress(ctx context.Context, _, vmID string, p api.MigrationProgress) error {
	return c.do(ctx, "POST", "/v1/agent/migration/progress/"+url.PathEscape(vmID), p, nil)
}

// Network implements Catalog.
func (c *Remote) Network(ctx context.Context, name string) (api.Network, error) {
	var n api.Network
	return n, c.do(ctx, "GET", "/v1/agent/networks/"+url.PathEscape(name), nil, &n)
}

// Pools implements Catalog.
func (c *Remote) Pools(ctx context.Context) ([]api.PoolConfig, error) {
	var out []api.PoolConfig
	return out, c.do(ctx, "GET", "/v1/agent/pools", nil, &out)
}

// Image implements Catalog.
func (c *Remote) Image(ctx context.Context, name string) (api.Image, error) {
	var im api.Image
	return im, c.do(ctx, "GET", "/v1/agent/images/"+url.PathEscape(name), nil, &im)
}

// FetchImage implements Catalog: it downloads the image's files into dir,
// each atomically, stamped with the image (image.WriteStamp), the disk
// last (its presence marks a complete copy).
func (c *Remote) FetchImage(ctx context.Context, name, dir string) error {
	c.fetch.Lock()
	defer c.fetch.Unlock()
	if _, err := os.Stat(filepath.Join(dir, "disk.qcow2")); err == nil {
		return nil // another VM's worker fetched it meanwhile
	}
	im, err := c.Image(ctx, name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("image dir: %w", err)
	}
	if err := image.WriteStamp(dir, im); err != nil {
		return err
	}
	files := []string{"disk.qcow2"}
	if im.Kernel {
		files = []string{"vmlinuz", "initrd.img", "disk.qcow2"}
	}
	for _, f := range files {
		if err := c.download(ctx, "/v1/agent/images/"+url.PathEscape(name)+"/files/"+f, filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Remote) download(ctx context.Context, path, dst string) error {
	resp, base, err := c.send(ctx, c.stream, "GET", path, nil, 0)
	if err != nil {
		return fmt.Errorf("download %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readErr(resp)
	}
	if _, err := SaveBody(resp, dst); err != nil {
		c.failed(base) // the copy broke off (or the disk is full): the next try starts elsewhere
		return fmt.Errorf("download %s: %w", path, err)
	}
	return nil
}

// SaveBody writes the body of resp to dst atomically and durably, and
// says how many bytes it wrote.
func SaveBody(resp *http.Response, dst string) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), ".part-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	n, err := io.Copy(f, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), dst)
	}
	return n, err
}

// WatchVMs implements Source over a long-lived streaming response. When
// the stream breaks, the next watch starts at the next replica: the one
// that served it may be dying.
func (c *Remote) WatchVMs(ctx context.Context, host string, fn func(Event) error) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, base, err := c.send(sctx, c.stream, "GET", "/v1/agent/watch", nil, 0)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readErr(resp)
	}
	err = follow(sctx, cancel, resp.Body, fn)
	var fe fnError
	if ctx.Err() == nil && !errors.As(err, &fe) {
		c.failed(base)
	}
	if errors.As(err, &fe) {
		return fe.error
	}
	return err
}

// fnError carries an error of the caller's function out of follow.
type fnError struct{ error }

// follow reads events from body and hands them to fn until the stream
// ends, breaks, or stays silent for longer than three keep-alives (then
// it calls cancel, which must end the stream).
func follow(ctx context.Context, cancel context.CancelFunc, body io.Reader, fn func(Event) error) error {
	alive := make(chan struct{}, 1)
	go func() {
		t := time.NewTimer(35 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-alive:
				t.Reset(35 * time.Second)
			case <-t.C:
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		select {
		case alive <- struct{}{}:
		default:
		}
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("watch: bad event: %w", err)
		}
		if ev.Heartbeat != 0 {
			continue
		}
		if err := fn(ev); err != nil {
			return fnError{err}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return fmt.Errorf("watch: the server closed the stream")
}
