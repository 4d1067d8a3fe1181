package qemu

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pki"
)

// testPKI makes a cluster CA in a new dir and returns its dir and PEM
// with the server certificate and key pki.Ensure made for 127.0.0.1.
func testPKI(t *testing.T) (dir string, caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	dir = t.TempDir()
	_, caPEM, err := pki.Ensure(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return dir, caPEM, readFile(t, filepath.Join(dir, pki.ServerCert)), readFile(t, filepath.Join(dir, pki.ServerKey))
}

// agentCert returns an agent certificate and key for 127.0.0.1 signed by
// the CA in caDir, as a joining host gets them.
func agentCert(t *testing.T, caDir string) (certPEM, keyPEM []byte) {
	t.Helper()
	dir := t.TempDir()
	csr, err := pki.NewCSR(dir, "h1", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if certPEM, err = pki.SignAgent(caDir, csr, "h1", []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	return certPEM, readFile(t, filepath.Join(dir, pki.AgentKey))
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteTLSDir(t *testing.T) {
	_, caPEM, certPEM, keyPEM := testPKI(t)
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteTLSDir(dir, caPEM, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v, %v; want mode 0700", st.Mode(), err)
	}
	for _, name := range []string{TLSCACert, TLSServerCert, TLSServerKey, TLSClientCert, TLSClientKey, TLSDHParams} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", name, st.Mode(), err)
		}
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, TLSCACert)), caPEM) ||
		!bytes.Equal(readFile(t, filepath.Join(dir, TLSClientCert)), certPEM) {
		t.Error("certificates not written as given")
	}
	// pki writes SEC1 "EC PRIVATE KEY"; the dir gets PKCS#8.
	blk, _ := pem.Decode(readFile(t, filepath.Join(dir, TLSServerKey)))
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("server key is not a PKCS#8 PEM block: %v", blk)
	}
	if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 6 {
		t.Errorf("dir holds %d files; want 6", len(entries))
	}

	_, _, _, otherKey := testPKI(t)
	if err := WriteTLSDir(dir, caPEM, certPEM, otherKey); err == nil {
		t.Error("key of another certificate accepted")
	}
	if err := WriteTLSDir(dir, []byte("junk"), certPEM, keyPEM); err == nil {
		t.Error("CA without certificate accepted")
	}
}

func TestMigrateTLS(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	caDir, caPEM, serverCert, serverKey := testPKI(t)
	srcTLS, dstTLS := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "tls")
	cert, key := agentCert(t, caDir)
	if err := WriteTLSDir(srcTLS, caPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	if err := WriteTLSDir(dstTLS, caPEM, serverCert, serverKey); err != nil {
		t.Fatal(err)
	}

	srcImg, dstImg := mirrorImages(t, sockDir(t))
	src := launch(t, diskConfig(t, srcImg, false))
	dst := launch(t, diskConfig(t, dstImg, true))
	for range 2 { // the second time finds them there
		if err := src.AddTLSCreds(ctx, "tls0", srcTLS, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.AddTLSCreds(ctx, "tls0", srcTLS, true); err == nil {
		t.Error("creds re-added with another endpoint")
	}
	if err := dst.AddTLSCreds(ctx, "tls0", dstTLS, true); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if err := dst.StartNBDServer(ctx, "127.0.0.1", port, "tls0"); err != nil {
		t.Fatal(err)
	}
	if err := dst.ExportDisk(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	// The server wants TLS: a plain client is turned away.
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, "", 0); err == nil {
		t.Fatal("plain NBD client accepted by a TLS server")
	} else {
		t.Logf("plain client refused: %v", err)
	}
	mirrorAndMigrate(t, ctx, src, dst, port, "tls0")
	checkCopy(t, src, dst, srcImg, dstImg)
}

func TestMigrateTLSWrongCA(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	caDir, caPEM, _, _ := testPKI(t)
	_, otherCA, otherCert, otherKey := testPKI(t)
	srcTLS, dstTLS := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "tls")
	cert, key := agentCert(t, caDir)
	if err := WriteTLSDir(srcTLS, caPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	if err := WriteTLSDir(dstTLS, otherCA, otherCert, otherKey); err != nil {
		t.Fatal(err)
	}

	srcImg, dstImg := mirrorImages(t, sockDir(t))
	src := launch(t, diskConfig(t, srcImg, false))
	dst := launch(t, diskConfig(t, dstImg, true))
	if err := src.AddTLSCreds(ctx, "tls0", srcTLS, false); err != nil {
		t.Fatal(err)
	}
	if err := dst.AddTLSCreds(ctx, "tls0", dstTLS, true); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if err := dst.StartNBDServer(ctx, "127.0.0.1", port, "tls0"); err != nil {
		t.Fatal(err)
	}
	if err := dst.ExportDisk(ctx, "disk0"); err != nil {
		t.Fatal(err)
	}
	if err := src.MirrorToNBD(ctx, "disk0", "127.0.0.1", port, "tls0", 0); err == nil {
		t.Fatal("mirror to a target of another CA started")
	} else {
		t.Logf("mirror refused: %v", err)
	}
	if ok, err := src.nodeExists(ctx, mirrorName("disk0")); err != nil || ok {
		t.Fatalf("nbd node left: %t, %v", ok, err)
	}

	uri, err := dst.PrepareIncoming(ctx, "tcp:127.0.0.1:0", IncomingOptions{TLSCreds: "tls0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Migrate(ctx, uri, MigrateOptions{TLSCreds: "tls0"}); err != nil {
		t.Logf("migrate refused at once: %v", err)
	} else {
		s, err := src.WaitMigration(ctx, 10*time.Millisecond)
		if !errors.Is(err, ErrMigrationFailed) || s.Status != "failed" {
			t.Fatalf("migration to a target of another CA: %+v, %v; want failed", s, err)
		}
		t.Logf("failed as expected: %v", err)
	}
	if st, err := src.Status(ctx); err != nil || st != "running" {
		t.Errorf("source after the failed migration: %q, %v; want running", st, err)
	}
	select {
	case <-dst.Exited():
		t.Log("target exited")
	default:
		st, err := dst.Status(ctx)
		t.Logf("target status after the failed migration: %q, %v", st, err)
	}
}

// TestMigrateTLSAuthz: a target with an authz object takes the stream of
// the one source it names (by pki.AgentDN), and turns any other away.
// Whether it took the stream is judged on the target: the source's
// status cannot tell a refused stream from a delivered one.
func TestMigrateTLSAuthz(t *testing.T) {
	qemuBinary(t)
	ctx := migrationCtx(t)
	caDir, caPEM, serverCert, serverKey := testPKI(t)
	srcTLS, dstTLS := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "tls")
	cert, key := agentCert(t, caDir) // host "h1"
	if err := WriteTLSDir(srcTLS, caPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	if err := WriteTLSDir(dstTLS, caPEM, serverCert, serverKey); err != nil {
		t.Fatal(err)
	}
	src := launch(t, testConfig(testDir(t), false))
	if err := src.AddTLSCreds(ctx, "tls0", srcTLS, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		admits string
		ok     bool
	}{{"h2", false}, {"h1", true}} {
		cfg := testConfig(testDir(t), false)
		cfg.Incoming = true
		dst := launch(t, cfg)
		if err := dst.AddTLSCreds(ctx, "tls0", dstTLS, true); err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second time finds it there
			if err := dst.AddAuthz(ctx, "authz0", pki.AgentDN(c.admits)...); err != nil {
				t.Fatal(err)
			}
		}
		if err := dst.AddAuthz(ctx, "authz0", pki.AgentDN("other")...); err == nil {
			t.Error("authz re-added for another identity")
		}
		// The stream comes through the target's own listener, as
		// Shoal's agents take it: QEMU's TLS works on the socket it is
		// handed (migrate-incoming fd:).
		il, err := ListenIncoming(ctx, testLog(t), "127.0.0.1:0", netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		if err := il.Attach(ctx, dst, IncomingOptions{TLSCreds: "tls0", TLSAuthz: "authz0"}); err != nil {
			il.Close()
			t.Fatal(err)
		}
		defer il.Close()
		if err := src.Migrate(ctx, "tcp:"+il.Addr(), MigrateOptions{TLSCreds: "tls0"}); err != nil {
			t.Fatal(err)
		}
		s, err := src.WaitMigration(ctx, 10*time.Millisecond)
		logPath := filepath.Join(cfg.Dir, "qemu.log")
		if c.ok {
			if err != nil {
				t.Logf("target log: %s", readFile(t, logPath))
				t.Fatalf("target admitting %s (%s): %v (%+v)", c.admits, pki.AgentDN(c.admits), err, s)
			}
			waitStatus(t, ctx, dst, "running")
		} else {
			// Only the target knows: the source's TLS 1.3 handshake ends
			// before the target checks its certificate, and a stream as
			// small as this guest's can be all in the sockets' buffers
			// by then, so the source may well say "completed".
			if err != nil && !errors.Is(err, ErrMigrationFailed) {
				t.Fatal(err)
			}
			waitFile(t, logPath, "is denied", 10*time.Second)
			if b := readFile(t, logPath); !bytes.Contains(b, []byte("CN=h1")) {
				t.Errorf("target log does not name h1 as the one denied: %s", b)
			}
			q, qerr := dst.QueryMigrate(ctx)
			st, serr := dst.Status(ctx)
			if qerr != nil || serr != nil || q.Status == "completed" || st != "inmigrate" {
				t.Fatalf("target admitting only %s after refusing h1: migration %+v, %v, status %q, %v; want it still waiting",
					c.admits, q, qerr, st, serr)
			}
			// The source keeps the guest, as Shoal's agent resumes it when
			// the migration is called off.
			if s.Status == "completed" {
				if err := src.Resume(ctx); err != nil {
					t.Fatal(err)
				}
			}
			waitStatus(t, ctx, src, "running")
		}
		t.Logf("target admitting %s: source %s %s", pki.AgentDN(c.admits), s.Status, s.Error)
	}
}
