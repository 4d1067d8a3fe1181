// Package client is the typed REST client of Shoal's API, shared by the
// CLI, the lab and tests.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// Client talks to one Shoal server.
type Client struct {
	base  string // scheme://host, no trailing slash
	token string
	http  *http.Client
	dial  func(ctx context.Context) (net.Conn, error) // raw connection, for the console
}

// New returns a client for server, which is https://HOST:PORT or
// unix:///path.sock. caPEM, if set, is the CA that signed the server.
func New(server, token string, caPEM []byte) (*Client, error) {
	if server == "" {
		return nil, errors.New("no server given: pass --server, set SHOAL_SERVER, or run 'shoal up' to write the config")
	}
	c := &Client{token: token}
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	if path, ok := strings.CutPrefix(server, "unix://"); ok {
		c.base = "http://shoal"
		var d net.Dialer
		c.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) }
	} else {
		u, err := url.Parse(server)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("server %q must be https://HOST:PORT or unix:///PATH", server)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if len(caPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return nil, errors.New("the configured CA certificate does not parse")
			}
			cfg.RootCAs = pool
		}
		tr.TLSClientConfig = cfg
		c.base = "https://" + u.Host
		c.dial = func(ctx context.Context) (net.Conn, error) {
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, "tcp", u.Host)
		}
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

func (c *Client) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out (if non-nil). Non-2xx answers become typed api errors.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

func (c *Client) send(req *http.Request, out any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Shoal server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("bad answer from server: %w", err)
	}
	return nil
}

func readError(resp *http.Response) error {
	var eb api.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = fmt.Sprintf("server answered %s", resp.Status)
	}
	return api.FromHTTP(resp.StatusCode, eb.Error)
}

func esc(s string) string { return url.PathEscape(s) }

// ListVMs returns every VM.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var out []api.VM
	return out, c.do(ctx, "GET", "/v1/vms", nil, &out)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, name string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "GET", "/v1/vms/"+esc(name), nil, &out)
}

func waitQuery(wait bool) string {
	if wait {
		return ""
	}
	return "?wait=false"
}

// CreateVM creates a VM; with wait, it returns once the VM is stopped (or
// running, when req.Start).
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest, wait bool) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "POST", "/v1/vms"+waitQuery(wait), req, &out)
}

// UpdateVM changes a VM's HA, failover priority or anti-affinity group
// (the fields of req that are set) and returns the VM.
func (c *Client) UpdateVM(ctx context.Context, name string, req api.UpdateVMRequest) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "PATCH", "/v1/vms/"+esc(name), req, &out)
}

// VMAction runs start, stop, restart, pause or resume, waiting for it.
func (c *Client) VMAction(ctx context.Context, name, action string, force bool) (api.VM, error) {
	var out api.VM
	var in any
	if force {
		in = api.StopRequest{Force: true}
	}
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(name)+"/"+esc(action), in, &out)
}

// DeleteVM deletes a VM and everything of it, waiting until it is gone.
func (c *Client) DeleteVM(ctx context.Context, name string, force bool) error {
	q := ""
	if force {
		q = "?force=true"
	}
	return c.do(ctx, "DELETE", "/v1/vms/"+esc(name)+q, nil, nil)
}

// Logs returns the VM's serial console output so far.
func (c *Client) Logs(ctx context.Context, name string) (io.ReadCloser, error) {
	req, err := c.request(ctx, "GET", "/v1/vms/"+esc(name)+"/logs", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the Shoal server at %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

// Console opens the VM's serial console: a raw byte stream both ways.
func (c *Client) Console(ctx context.Context, name string) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the Shoal server at %s: %w", c.base, err)
	}
	req, _ := c.request(ctx, "GET", "/v1/vms/"+esc(name)+"/console", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "shoal-console")
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, readError(resp)
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// ListHosts returns every host.
func (c *Client) ListHosts(ctx context.Context) ([]api.Host, error) {
	var out []api.Host
	return out, c.do(ctx, "GET", "/v1/hosts", nil, &out)
}

// GetHost returns one host.
func (c *Client) GetHost(ctx context.Context, name string) (api.Host, error) {
	var out api.Host
	return out, c.do(ctx, "GET", "/v1/hosts/"+esc(name), nil, &out)
}

// ListNetworks returns every network.
func (c *Client) ListNetworks(ctx context.Context) ([]api.Network, error) {
	var out []api.Network
	return out, c.do(ctx, "GET", "/v1/networks", nil, &out)
}

// ListImages returns the image library.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	return out, c.do(ctx, "GET", "/v1/images", nil, &out)
}

// BuildImage builds a built-in image (only "tiny").
func (c *Client) BuildImage(ctx context.Context, name string) (api.Image, error) {
	var out api.Image
	return out, c.do(ctx, "POST", "/v1/images/build", map[string]string{"name": name}, &out)
}

// ImportImage uploads a disk image to become image name.
func (c *Client) ImportImage(ctx context.Context, name string, r io.Reader) (api.Image, error) {
	var out api.Image
	req, err := c.request(ctx, "PUT", "/v1/images/"+esc(name), r)
	if err != nil {
		return out, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	return out, c.send(req, &out)
}

// DeleteImage removes an image no VM uses.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/images/"+esc(name), nil, nil)
}

// JoinToken is a one-time token for a machine to join as a host.
type JoinToken struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// CreateJoinToken makes a join token valid for ttl ("" = 1h).
func (c *Client) CreateJoinToken(ctx context.Context, ttl string) (JoinToken, error) {
	var out JoinToken
	return out, c.do(ctx, "POST", "/v1/cluster/tokens", map[string]string{"ttl": ttl}, &out)
}

// MigrateVM starts a live migration and returns its record at once;
// follow it with Migration.
func (c *Client) MigrateVM(ctx context.Context, name string, req api.MigrateRequest) (api.MigrationRecord, error) {
	var out api.MigrationRecord
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(name)+"/migrate", req, &out)
}

// Migration returns the VM's migration in flight, or else its last one.
func (c *Client) Migration(ctx context.Context, name string) (api.MigrationRecord, error) {
	var out api.MigrationRecord
	return out, c.do(ctx, "GET", "/v1/vms/"+esc(name)+"/migration", nil, &out)
}

// CancelMigration calls off the VM's migration in flight and returns its
// record once it has ended (the VM runs on its source).
func (c *Client) CancelMigration(ctx context.Context, name string) (api.MigrationRecord, error) {
	var out api.MigrationRecord
	return out, c.do(ctx, "DELETE", "/v1/vms/"+esc(name)+"/migration", nil, &out)
}

// EventQuery selects events: about a VM, about a host, since a time
// (RFC 3339) or a duration back (10m), newer than the event with id
// After. Limit keeps the newest (with After, the oldest after it); 0 =
// the server's default.
type EventQuery struct {
	VM, Host, Since, After string
	Limit                  int
}

// Events returns the cluster's events that match q, oldest first.
func (c *Client) Events(ctx context.Context, q EventQuery) ([]api.Event, error) {
	v := url.Values{}
	for k, s := range map[string]string{"vm": q.VM, "host": q.Host, "since": q.Since, "after": q.After} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", fmt.Sprint(q.Limit))
	}
	path := "/v1/events"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out []api.Event
	return out, c.do(ctx, "GET", path, nil, &out)
}

// DrainHost puts a host in maintenance and starts moving its VMs off; it
// returns the drain's report at once. Follow it with Drain.
func (c *Client) DrainHost(ctx context.Context, name string, req api.DrainRequest) (api.DrainReport, error) {
	var out api.DrainReport
	return out, c.do(ctx, "POST", "/v1/hosts/"+esc(name)+"/drain", req, &out)
}

// Drain returns the host's running drain, or else its last one.
func (c *Client) Drain(ctx context.Context, name string) (api.DrainReport, error) {
	var out api.DrainReport
	return out, c.do(ctx, "GET", "/v1/hosts/"+esc(name)+"/drain", nil, &out)
}

// ResumeHost puts a host in maintenance back in service.
func (c *Client) ResumeHost(ctx context.Context, name string) (api.Host, error) {
	var out api.Host
	return out, c.do(ctx, "POST", "/v1/hosts/"+esc(name)+"/resume", nil, &out)
}
