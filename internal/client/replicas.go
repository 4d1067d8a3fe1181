package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/replica"
)

// endpoint is one server the client can talk to.
type endpoint struct {
	name string // https://HOST:PORT or unix:///PATH
	base string // what request URLs start with
	http *http.Client
	dial func(ctx context.Context) (net.Conn, error) // raw connection, for the console
}

func newEndpoint(server string, tlsCfg *tls.Config) (*endpoint, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	ep := &endpoint{}
	if path, ok := strings.CutPrefix(server, "unix://"); ok {
		ep.name, ep.base = server, "http://shoal"
		var d net.Dialer
		ep.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return ep.dial(ctx) }
	} else {
		u, err := url.Parse(server)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("server %q must be https://HOST:PORT or unix:///PATH", server)
		}
		ep.name, ep.base = "https://"+u.Host, "https://"+u.Host
		// A replica that is off must not hold the CLI for long: the next
		// one is tried.
		d := &net.Dialer{Timeout: 5 * time.Second}
		tr.DialContext = d.DialContext
		tr.TLSClientConfig = tlsCfg
		tr.TLSHandshakeTimeout = 10 * time.Second
		ep.dial = func(ctx context.Context) (net.Conn, error) {
			td := tls.Dialer{NetDialer: d, Config: tlsCfg}
			return td.DialContext(ctx, "tcp", u.Host)
		}
	}
	ep.http = &http.Client{Transport: tr}
	return ep, nil
}

// SplitServers splits a comma-separated list of server URLs.
func SplitServers(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (ep *endpoint) request(ctx context.Context, token, method, path string, b *body) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, ep.base+path, b.reader())
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if b != nil && b.contentType != "" {
		req.Header.Set("Content-Type", b.contentType)
	}
	if b != nil && b.ifNoneMatch != "" {
		req.Header.Set("If-None-Match", b.ifNoneMatch)
	}
	return req, nil
}

// body is what a request carries: bytes, which can be sent again, or a
// reader, which can be sent once.
type body struct {
	data        []byte
	r           io.Reader
	contentType string
	ifNoneMatch string // an ETag: answer when what it tags has changed
}

func jsonBody(b []byte) *body {
	if b == nil {
		return nil
	}
	return &body{data: b, contentType: "application/json"}
}

func (b *body) reader() io.Reader {
	switch {
	case b == nil:
		return nil
	case b.r != nil:
		return b.r
	}
	return bytes.NewReader(b.data)
}

// roundTrip sends a request to the servers in turn, from the one that
// answered last, and returns the first answer. It moves on to the next
// server when the request surely did not reach one (no connection, a
// failed TLS handshake), or when it only reads (then also on a lost
// connection or a 5xx). A write that may have reached a server is not
// sent again: the server may have carried it out.
func (c *Client) roundTrip(ctx context.Context, method, path string, b *body) (*http.Response, error) {
	var errs []error
	for _, name := range c.set.Order() {
		ep := c.eps[name]
		tctx, sent := replica.Track(ctx)
		req, err := ep.request(tctx, c.token, method, path, b)
		if err != nil {
			return nil, err
		}
		resp, err := ep.http.Do(req)
		if err != nil {
			c.set.Failed(name)
			if replica.MayRetry(ctx, method, sent()) {
				errs = append(errs, fmt.Errorf("cannot reach the Shoal server at %s: %w", name, err))
				continue
			}
			if sent() && !replica.Idempotent(method) && ctx.Err() == nil {
				return nil, fmt.Errorf("lost the connection to the Shoal server at %s (the request may have been carried out: check before you retry): %w", name, err)
			}
			errs = append(errs, fmt.Errorf("cannot reach the Shoal server at %s: %w", name, err))
			return nil, errors.Join(errs...)
		}
		if replica.Failing(resp.StatusCode) {
			c.set.Failed(name)
			if replica.RetryStatus(method, resp.StatusCode) {
				errs = append(errs, readError(resp))
				resp.Body.Close()
				continue
			}
		} else {
			c.worked(name)
		}
		return resp, nil
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	if len(errs) > 1 && allAPI(errs) {
		return nil, errs[len(errs)-1] // each server answered: its error says what to do
	}
	return nil, errors.Join(errs...)
}

func allAPI(errs []error) bool {
	for _, err := range errs {
		var e *api.Error
		if !errors.As(err, &e) {
			return false
		}
	}
	return true
}

// worked remembers the server that answered.
func (c *Client) worked(name string) {
	c.set.Worked(name)
	if name != c.first {
		c.moved.Store(true)
	}
}

// dialAny opens a raw connection to the first server that takes one.
func (c *Client) dialAny(ctx context.Context) (net.Conn, *endpoint, error) {
	var errs []error
	for _, name := range c.set.Order() {
		ep := c.eps[name]
		conn, err := ep.dial(ctx)
		if err == nil {
			c.worked(name)
			return conn, ep, nil
		}
		c.set.Failed(name)
		errs = append(errs, fmt.Errorf("cannot reach the Shoal server at %s: %w", name, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, nil, errors.Join(errs...)
}

// Servers returns the servers the client knows, the one it turns to
// first, first.
func (c *Client) Servers() []string { return c.set.Order() }

// FailedOver reports whether a server other than the first one given
// answered: the first is down, and the list of replicas is worth
// refreshing (ListServers).
func (c *Client) FailedOver() bool { return c.moved.Load() }

// RemoveServer removes a stopped server replica from the cluster for good.
func (c *Client) RemoveServer(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/cluster/servers/"+url.PathEscape(name), nil, nil)
}

// ListServers returns the control plane's live replicas.
func (c *Client) ListServers(ctx context.Context) ([]api.Server, error) {
	var out []api.Server
	return out, c.do(ctx, "GET", "/v1/cluster/servers", nil, &out)
}
