package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
)

// Remote is the control plane of an agent on another host: the agent API
// of a server, over HTTPS with the agent's certificate.
type Remote struct {
	base string // https://server:port
	http *http.Client
	// stream has no overall timeout: the watch lasts as long as it can.
	stream *http.Client
	fetch  sync.Mutex // one image download at a time, so two VMs never race for one file
}

// NewRemote returns a client of the agent API at server (https://HOST:PORT)
// using tlsCfg (the agent's certificate and the cluster CA).
func NewRemote(server string, tlsCfg *tls.Config) (*Remote, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server %q must be https://HOST:PORT", server)
	}
	tlsCfg = tlsCfg.Clone()
	tlsCfg.VerifyConnection = pki.RequireRole(pki.OUServer, "") // not another agent posing as the server
	tr := &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second}
	return &Remote{base: "https://" + u.Host, http: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		stream: &http.Client{Transport: tr}}, nil
}

func (c *Remote) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("control plane %s: %w: %w", c.base, api.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readErr(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func readErr(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = "control plane answered " + resp.Status
	}
	return api.FromHTTP(resp.StatusCode, eb.Error)
}

// Register implements Reporter.
func (c *Remote) Register(ctx context.Context, h api.Host, ttl time.Duration) error {
	return c.do(ctx, "POST", "/v1/agent/register?ttl="+ttl.String(), h, nil)
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

// Image implements Catalog.
func (c *Remote) Image(ctx context.Context, name string) (api.Image, error) {
	var im api.Image
	return im, c.do(ctx, "GET", "/v1/agent/images/"+url.PathEscape(name), nil, &im)
}

// FetchImage implements Catalog: it downloads the image's files into dir,
// each atomically, the disk last (its presence marks a complete copy).
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
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w: %w", path, api.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readErr(resp)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".part-")
	if err != nil {
		return fmt.Errorf("download %s: %w", path, err)
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
	if err != nil {
		return fmt.Errorf("download %s: %w", path, err)
	}
	return nil
}

// WatchVMs implements Source over a long-lived streaming response.
func (c *Remote) WatchVMs(ctx context.Context, host string, fn func(Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/agent/watch", nil)
	if err != nil {
		return err
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return fmt.Errorf("watch: %w: %w", api.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readErr(resp)
	}
	// A stream silent for longer than three keep-alives is dead.
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
	sc := bufio.NewScanner(resp.Body)
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
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return fmt.Errorf("watch: the server closed the stream")
}
