package node

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pki"
)

// testLimits are short, for tests that wait them out.
var testLimits = httpLimits{Header: 300 * time.Millisecond, BodyPause: 300 * time.Millisecond, Idle: 5 * time.Second, MaxHeaderBytes: 4 << 10, MaxConns: 2}

// startTestHTTP serves, within lim, a handler with the kinds of request
// the API has: quick ones, long waits, bodies, and a hijacked stream.
func startTestHTTP(t *testing.T, lim httpLimits) string { return startTestHTTPS(t, lim, nil) }

// startTestHTTPS is startTestHTTP over TLS if tlsCfg is set.
func startTestHTTPS(t *testing.T, lim httpLimits, tlsCfg *tls.Config) string {
	t.Helper()
	long := 3 * lim.BodyPause // longer than any of the client's timeouts
	wait := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(long):
			fmt.Fprint(w, "done")
		case <-r.Context().Done():
			// Answer nothing: the client sees the request cut.
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /quick", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("GET /wait", wait)
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Got", fmt.Sprint(n))
		wait(w, r) // and then works a while on it
	})
	mux.HandleFunc("GET /hijack", func(w http.ResponseWriter, r *http.Request) {
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		fmt.Fprint(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
		buf.Flush()
		line, _ := buf.ReadString('\n') // after a silence longer than the timeouts
		fmt.Fprint(c, "echo "+line)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(startHTTP(slog.New(slog.DiscardHandler), "test", l, tlsCfg, mux, lim))
	return l.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cutWithin checks that the server ends the connection within d.
func cutWithin(t *testing.T, c net.Conn, d time.Duration, what string) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(d + 5*time.Second))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() || time.Since(start) > d {
		t.Errorf("%s: still connected after %s", what, time.Since(start).Round(time.Millisecond))
	}
}

// TestHTTPSlowClientsCutOff checks that a client that opens a connection
// and stalls, in its headers or in its body, is cut off.
func TestHTTPSlowClientsCutOff(t *testing.T) {
	addr := startTestHTTP(t, testLimits)
	within := testLimits.Header + testLimits.BodyPause + time.Second

	c := dial(t, addr)
	fmt.Fprint(c, "GET /quick HTTP/1.1\r\nHost: x\r\n")
	cutWithin(t, c, within, "half a header")

	c = dial(t, addr)
	fmt.Fprint(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
	cutWithin(t, c, within, "half a body")

	c = dial(t, addr)
	cutWithin(t, c, within, "nothing sent")

	cert, caPEM, err := pki.Ensure(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := tlsConfig(cert, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	c = dial(t, startTestHTTPS(t, testLimits, tlsCfg))
	fmt.Fprint(c, "\x16\x03\x01") // the start of a TLS record, then silence
	cutWithin(t, c, within, "half a TLS handshake")

	c = dial(t, addr)
	fmt.Fprintf(c, "GET /quick HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 2*testLimits.MaxHeaderBytes))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized header: %v %v", resp, err)
	}
}

// TestHTTPLongRequestsLast checks that the limits cut no request that
// lasts long on the server's side or streams: a long wait, a slow but
// steady upload followed by a long wait, and a hijacked connection.
func TestHTTPLongRequestsLast(t *testing.T) {
	addr := startTestHTTP(t, testLimits)
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get("/wait"); got != "done" {
		t.Errorf("a long wait was cut: %q", got)
	}

	pr, pw := io.Pipe()
	go func() {
		for range 6 { // 6 pauses of half the limit: longer in all than the limit
			time.Sleep(testLimits.BodyPause / 2)
			_, _ = pw.Write(make([]byte, 1000))
		}
		pw.Close()
	}()
	resp, err := http.Post("http://"+addr+"/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Got") != "6000" || string(b) != "done" {
		t.Errorf("a slow upload: %d, got %q bytes, %q", resp.StatusCode, resp.Header.Get("X-Got"), b)
	}

	c := dial(t, addr)
	fmt.Fprint(c, "GET /hijack HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	time.Sleep(3 * testLimits.BodyPause)
	fmt.Fprint(c, "hello\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := br.ReadString('\n'); line != "echo hello\n" {
		t.Errorf("a hijacked connection after a silence: %q %v", line, err)
	}
}

// TestHTTPConnLimit checks that a listener keeps at most MaxConns
// connections open: one more is served only once another closes.
func TestHTTPConnLimit(t *testing.T) {
	addr := startTestHTTP(t, testLimits)
	request := func(c net.Conn, br *bufio.Reader, wait time.Duration) error {
		_ = c.SetDeadline(time.Now().Add(wait))
		if _, err := fmt.Fprint(c, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	var held []net.Conn
	for range testLimits.MaxConns { // served, then kept alive
		c := dial(t, addr)
		if err := request(c, bufio.NewReader(c), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	extra := dial(t, addr)
	br := bufio.NewReader(extra)
	if err := request(extra, br, 500*time.Millisecond); err == nil {
		t.Fatalf("a connection beyond the limit of %d was served", testLimits.MaxConns)
	}
	held[0].Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the waiting connection was not served once another closed: %v %v", resp, err)
	}
}
