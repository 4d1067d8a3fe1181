// Package client is the typed REST client of Shoal's API, shared by the
// CLI, the lab and tests.
package client

import (
	"bufio"
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
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/replica"
)

// Client talks to a Shoal server: to one of the control plane's replicas,
// moving on to the next when one cannot be reached (see roundTrip).
type Client struct {
	token string
	eps   map[string]*endpoint // by server URL
	set   *replica.Set         // the server URLs, the one that answered last current
	first string               // the server given first
	moved atomic.Bool          // a server other than the first one answered
}

// New returns a client for server, which is https://HOST:PORT or
// unix:///path.sock, or a comma-separated list of them (replicas of one
// control plane, tried in turn). caPEM, if set, is the CA that signed the
// servers.
func New(server, token string, caPEM []byte) (*Client, error) {
	return NewReplicas(SplitServers(server), token, caPEM)
}

// NewReplicas returns a client for the control plane's replicas at
// servers (see New), the first tried first.
func NewReplicas(servers []string, token string, caPEM []byte) (*Client, error) {
	if len(servers) == 0 {
		return nil, errors.New("no server given: pass --server, set SHOAL_SERVER, or run 'shoal up' to write the config")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the configured CA certificate does not parse")
		}
		cfg.RootCAs = pool
		// The cluster CA also signs the hosts' certificates: only one
		// that names a server may take the token.
		cfg.VerifyConnection = pki.RequireRole(pki.OUServer, "")
	}
	c := &Client{token: token, eps: map[string]*endpoint{}}
	var names []string
	for _, s := range servers {
		ep, err := newEndpoint(s, cfg)
		if err != nil {
			return nil, err
		}
		if _, dup := c.eps[ep.name]; !dup {
			c.eps[ep.name] = ep
			names = append(names, ep.name)
		}
	}
	c.set, c.first = replica.NewSet(names), names[0]
	return c, nil
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out (if non-nil). Non-2xx answers become typed api errors.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	resp, err := c.roundTrip(ctx, method, path, jsonBody(body))
	if err != nil {
		return err
	}
	return decode(resp, out)
}

// decode reads an answer: an api error for a non-2xx status, else the
// JSON body into out (if non-nil).
func decode(resp *http.Response, out any) error {
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
	resp, err := c.roundTrip(ctx, "GET", "/v1/vms/"+esc(name)+"/logs", nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

// Console opens the VM's serial console: a raw byte stream both ways.
func (c *Client) Console(ctx context.Context, name string) (net.Conn, error) {
	conn, ep, err := c.dialAny(ctx)
	if err != nil {
		return nil, err
	}
	req, _ := ep.request(ctx, c.token, "GET", "/v1/vms/"+esc(name)+"/console", nil)
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
	// Hidden behind NopCloser, r is not closed by a failed attempt, so
	// another replica can have it if the first one was never reached.
	resp, err := c.roundTrip(ctx, "PUT", "/v1/images/"+esc(name), &body{r: io.NopCloser(r), contentType: "application/octet-stream"})
	if err != nil {
		return out, err
	}
	return out, decode(resp, &out)
}

// DeleteImage removes an image no VM uses.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/images/"+esc(name), nil, nil)
}

// JoinToken is a one-time token for a machine to join as a host or, of
// kind "server", as a server replica.
type JoinToken struct {
	Token   string    `json:"token"`
	Kind    string    `json:"kind"`
	Expires time.Time `json:"expires"`
}

// CreateJoinToken makes a join token of kind ("host" or "server"; "" =
// host) valid for ttl ("" = 1h).
func (c *Client) CreateJoinToken(ctx context.Context, kind, ttl string) (JoinToken, error) {
	var out JoinToken
	return out, c.do(ctx, "POST", "/v1/cluster/tokens", map[string]string{"ttl": ttl, "kind": kind}, &out)
}

// MigrateVM starts a live migration and returns its record at once;
// follow it with Migration.
func (c *Client) MigrateVM(ctx context.Context, name string, req api.MigrateRequest) (api.MigrationRecord, error) {
	var out api.MigrationRecord
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(name)+"/migrate", req, &out)
}

// RecoverVM restarts a VM whose host is dead on another host (req.To, ""
// = the scheduler picks); with wait, it returns once the VM runs there
// (or, if it was stopped, once the new host has taken it).
func (c *Client) RecoverVM(ctx context.Context, name string, req api.RecoverRequest, wait bool) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, "POST", "/v1/vms/"+esc(name)+"/recover"+waitQuery(wait), req, &out)
}

// Migration returns the VM's migration in flight, or else its last one.
func (c *Client) Migration(ctx context.Context, name string) (api.MigrationRecord, error) {
	var out api.MigrationRecord
	return out, c.do(ctx, "GET", "/v1/vms/"+esc(name)+"/migration", nil, &out)
}

// MigrationChange returns the VM's migration record (as Migration) once it
// differs from the one tagged etag, waiting up to wait for a change; with
// an empty etag it answers at once. changed is false when the wait ran
// out. The new record's tag comes back as next ("" from a server that
// does not tag records: then poll).
func (c *Client) MigrationChange(ctx context.Context, name, etag string, wait time.Duration) (rec api.MigrationRecord, next string, changed bool, err error) {
	path := "/v1/vms/" + esc(name) + "/migration"
	var b *body
	if etag != "" {
		path += "?timeout=" + url.QueryEscape(wait.String())
		b = &body{ifNoneMatch: etag}
	}
	resp, err := c.roundTrip(ctx, "GET", path, b)
	if err != nil {
		return rec, etag, false, err
	}
	if resp.StatusCode == http.StatusNotModified {
		resp.Body.Close()
		return rec, etag, false, nil
	}
	next = resp.Header.Get("ETag")
	return rec, next, true, decode(resp, &rec)
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
	path := listPath("/v1/events", map[string]string{"vm": q.VM, "host": q.Host, "since": q.Since, "after": q.After}, q.Limit)
	var out []api.Event
	return out, c.do(ctx, "GET", path, nil, &out)
}

// listPath is a listing's path with its filters (those set) and limit
// (if positive) as its query.
func listPath(base string, filters map[string]string, limit int) string {
	v := url.Values{}
	for k, s := range filters {
		if s != "" {
			v.Set(k, s)
		}
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	if len(v) == 0 {
		return base
	}
	return base + "?" + v.Encode()
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

// RemoveHost removes a host without VMs from the cluster for good,
// revoking its certificate.
func (c *Client) RemoveHost(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/hosts/"+esc(name), nil, nil)
}
