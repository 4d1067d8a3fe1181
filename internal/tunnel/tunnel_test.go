package tunnel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI is a throwaway CA with a certificate for each named peer.
type testPKI struct {
	pool  *x509.CertPool
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{pool: pool, ca: ca, caKey: key}
}

// config returns a mutual-TLS config for peer name that accepts only want.
func (p *testPKI) config(t testing.TB, name, want string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: p.pool, ClientCAs: p.pool,
		ClientAuth: tls.RequireAndVerifyClientCert, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName != want {
				return io.ErrUnexpectedEOF
			}
			return nil
		}}
}

// echoServer answers on a unix socket: each connection gets its kind
// label, then what it sends, upper-cased, until it half-closes.
func echoServer(t *testing.T, path, label string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l, label)
}

// serveEcho answers on l as echoServer does.
func serveEcho(t *testing.T, l net.Listener, label string) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, label+":")
				b, _ := io.ReadAll(c)
				c.Write(bytes.ToUpper(b))
			}()
		}
	}()
}

// loopback is where the tests' sources connect from.
var loopback = netip.MustParseAddr("127.0.0.1")

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// roundTrip connects to the forwarder's socket, sends msg, half-closes
// and returns the whole answer.
func roundTrip(t *testing.T, path, msg string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return string(b)
}

func TestTunnelCarriesEachKindToItsSocket(t *testing.T) {
	for _, secure := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "tls"}[secure]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			echoServer(t, filepath.Join(dir, "mig.sock"), "mig")
			echoServer(t, filepath.Join(dir, "nbd.sock"), "nbd")
			var srvCfg, cliCfg *tls.Config
			if secure {
				p := newTestPKI(t)
				srvCfg, cliCfg = p.config(t, "host2", "host1"), p.config(t, "host1", "host2")
			}
			l, err := Listen("127.0.0.1:0", loopback, srvCfg, map[byte]string{
				Migration: filepath.Join(dir, "mig.sock"), Disk: filepath.Join(dir, "nbd.sock")}, quiet())
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fm, err := Forward(filepath.Join(dir, "out-mig.sock"), l.Addr(), Migration, cliCfg, quiet())
			if err != nil {
				t.Fatal(err)
			}
			defer fm.Close()
			fd, err := Forward(filepath.Join(dir, "out-nbd.sock"), l.Addr(), Disk, cliCfg, quiet())
			if err != nil {
				t.Fatal(err)
			}
			defer fd.Close()
			big := strings.Repeat("memory page ", 200000) // a few MiB, over many TLS records
			if got := roundTrip(t, fm.Path(), big); got != "mig:"+strings.ToUpper(big) {
				t.Fatalf("migration stream: got %d bytes, want %d", len(got), len("mig:")+len(big))
			}
			if got := roundTrip(t, fd.Path(), "block"); got != "nbd:BLOCK" {
				t.Fatalf("disk stream: %q", got)
			}
		})
	}
}

func TestTunnelRefusesAnotherPeer(t *testing.T) {
	dir := t.TempDir()
	echoServer(t, filepath.Join(dir, "mig.sock"), "mig")
	p := newTestPKI(t)
	l, err := Listen("127.0.0.1:0", loopback, p.config(t, "host2", "host1"), map[byte]string{Migration: filepath.Join(dir, "mig.sock")}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// host3 is a member of the cluster, but not the migration's source.
	f, err := Forward(filepath.Join(dir, "out.sock"), l.Addr(), Migration, p.config(t, "host3", "host2"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("unix", f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	if len(b) != 0 {
		t.Fatalf("another host got an answer through the tunnel: %q", b)
	}
	// A stranger without a certificate gets nothing either.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s, err := Dial(ctx, l.Addr(), Migration, nil); err == nil {
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if b, _ := io.ReadAll(s); strings.Contains(string(b), "mig:") {
			t.Fatalf("a plain connection reached QEMU's socket: %q", b)
		}
		s.Close()
	}
}

func TestCloseCutsOpenStreams(t *testing.T) {
	dir := t.TempDir()
	echoServer(t, filepath.Join(dir, "mig.sock"), "mig")
	l, err := Listen("127.0.0.1:0", loopback, nil, map[byte]string{Migration: filepath.Join(dir, "mig.sock")}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	f, err := Forward(filepath.Join(dir, "out.sock"), l.Addr(), Migration, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("unix", f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "mig:" {
		t.Fatalf("stream did not open: %q %v", buf, err)
	}
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The stream is still open from QEMU's side (no half-close): Close
	// must end it, and the source end must see it end.
	if _, err := io.ReadAll(c); err != nil && !isClosed(err) {
		t.Fatalf("read after close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cutting the streams took %s", d)
	}
}

func isClosed(err error) bool {
	return strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "closed")
}

// TestCloseCutsAStalledTLSStream: a target that stops reading (cut off,
// or its QEMU stuck) fills the TCP window; closing the source's end must
// still cut the stream at once, not after TLS's 5 s close_notify wait.
func TestCloseCutsAStalledTLSStream(t *testing.T) {
	dir := t.TempDir()
	stuck := filepath.Join(dir, "stuck.sock")
	ln, err := net.Listen("unix", stuck)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(time.Minute) // never reads
		}
	}()
	p := newTestPKI(t)
	l, err := Listen("127.0.0.1:0", loopback, p.config(t, "host2", "host1"), map[byte]string{Migration: stuck}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := Forward(filepath.Join(dir, "out.sock"), l.Addr(), Migration, p.config(t, "host1", "host2"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // every buffer on the way fills up
	start := time.Now()
	f.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("closing a stalled stream took %s", d)
	}
}

// TestForwardDirect: a Direct stream goes to a TLS server that is not a
// Listener (as QEMU's own TLS listener is): no kind byte precedes the
// data, both directions flow, and a server of the wrong peer is refused.
func TestForwardDirect(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	for _, c := range []struct {
		server string
		ok     bool
	}{{"host2", true}, {"host3", false}} {
		l, err := tls.Listen("tcp", "127.0.0.1:0", p.config(t, c.server, "host1"))
		if err != nil {
			t.Fatal(err)
		}
		serveEcho(t, l, c.server)
		f, err := Forward(filepath.Join(dir, c.server+".sock"), l.Addr().String(), Direct, p.config(t, "host1", "host2"), quiet())
		if err != nil {
			t.Fatal(err)
		}
		if c.ok {
			if got := roundTrip(t, f.Path(), "hello"); got != "host2:HELLO" {
				t.Errorf("through a Direct stream: %q, want %q", got, "host2:HELLO")
			}
		} else {
			q, err := net.Dial("unix", f.Path())
			if err != nil {
				t.Fatal(err)
			}
			q.SetDeadline(time.Now().Add(5 * time.Second))
			q.Write([]byte("hello"))
			if got, _ := io.ReadAll(q); len(got) > 0 {
				t.Errorf("a server that is not host2 answered: %q", got)
			}
			q.Close()
		}
		f.Close()
	}
}
