package agentapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/qemu"
)

// ConsoleProtocol is the Upgrade token of console connections: after the
// 101 answer the connection carries the raw serial console both ways.
const ConsoleProtocol = "shoal-console"

// Host is what the server reaches on a host directly: its VMs' serial
// consoles and console logs.
type Host interface {
	DialConsole(ctx context.Context, vmID string) (net.Conn, error)
	OpenLog(ctx context.Context, vmID string) (io.ReadCloser, error)
}

// HostClient reaches an agent's own API (served by HostHandler) with the
// server's certificate.
type HostClient struct {
	Name string // the host, whose certificate the agent must present
	Addr string // https://HOST:PORT of the agent
	TLS  *tls.Config
}

// tls returns the settings that accept only the agent of this host.
func (c HostClient) tls() *tls.Config {
	cfg := c.TLS.Clone()
	cfg.VerifyConnection = pki.RequireRole(pki.OUAgent, c.Name)
	return cfg
}

func (c HostClient) hostport() (string, error) {
	u, err := url.Parse(c.Addr)
	if err != nil || u.Host == "" {
		return "", api.Errorf(api.ErrUnavailable, "host address %q is not usable", c.Addr)
	}
	return u.Host, nil
}

// DialConsole implements Host.
func (c HostClient) DialConsole(ctx context.Context, vmID string) (net.Conn, error) {
	hp, err := c.hostport()
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{Config: c.tls()}
	conn, err := d.DialContext(ctx, "tcp", hp)
	if err != nil {
		return nil, api.Errorf(api.ErrUnavailable, "cannot reach host at %s: %v", c.Addr, err)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", c.Addr+"/v1/host/vms/"+url.PathEscape(vmID)+"/console", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", ConsoleProtocol)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("console request: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("console answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, readErr(resp)
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// OpenLog implements Host.
func (c HostClient) OpenLog(ctx context.Context, vmID string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.Addr+"/v1/host/vms/"+url.PathEscape(vmID)+"/logs", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: c.tls(), DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return nil, api.Errorf(api.ErrUnavailable, "cannot reach host at %s: %v", c.Addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readErr(resp)
	}
	return resp.Body, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// LocalHost is what an agent offers the server on its own machine.
type LocalHost interface {
	DialConsole(ctx context.Context, vmID string) (net.Conn, error)
	// LogDir is the state directory of a VM, which holds its console log.
	LogDir(vmID string) string
}

// Direct adapts a LocalHost in the server's own process to Host.
type Direct struct{ LocalHost }

// OpenLog implements Host.
func (d Direct) OpenLog(_ context.Context, vmID string) (io.ReadCloser, error) {
	f, err := qemu.OpenConsoleLog(d.LogDir(vmID))
	if os.IsNotExist(err) {
		return nil, api.Errorf(api.ErrNotFound, "no console log yet: the VM has not been started")
	}
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	return f, nil
}

// HostHandler serves an agent's own API to the cluster's servers only.
func HostHandler(h LocalHost) http.Handler {
	mux := http.NewServeMux()
	guard := func(fn func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if _, role, ok := pki.PeerRole(r.TLS); !ok || role != pki.OUServer {
				writeErr(w, api.Errorf(api.ErrUnauthorized, "only a server of this cluster may use a host's API"))
				return
			}
			if err := fn(w, r); err != nil {
				writeErr(w, err)
			}
		}
	}
	mux.HandleFunc("GET /v1/host/vms/{id}/logs", guard(func(w http.ResponseWriter, r *http.Request) error {
		f, err := Direct{h}.OpenLog(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		defer f.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err = io.Copy(w, f)
		return err
	}))
	mux.HandleFunc("GET /v1/host/vms/{id}/console", guard(func(w http.ResponseWriter, r *http.Request) error {
		backend, err := h.DialConsole(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		defer backend.Close()
		return Splice(w, backend)
	}))
	return mux
}

// Splice answers an Upgrade request with 101 and copies bytes between the
// client connection and backend until either side ends.
func Splice(w http.ResponseWriter, backend net.Conn) error {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return api.Errorf(api.ErrInternal, "connection cannot be upgraded")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	_, _ = buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + ConsoleProtocol + "\r\n\r\n")
	if err := buf.Flush(); err != nil {
		return nil
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(backend, buf); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, backend); done <- struct{}{} }()
	<-done
	return nil
}
