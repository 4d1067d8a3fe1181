package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkTunnel measures the throughput of one migration stream through
// the tunnel (unix socket → source end → TCP, TLS or not → target end →
// unix socket), as QEMU's memory stream goes. Rerun:
// go test -run '^$' -bench Tunnel ./internal/tunnel/
func BenchmarkTunnel(b *testing.B) {
	for _, secure := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "tls"}[secure], func(b *testing.B) {
			dir := b.TempDir()
			sink := filepath.Join(dir, "sink.sock")
			ln, err := net.Listen("unix", sink)
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			got := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- n
			}()
			var srvCfg, cliCfg *tls.Config
			if secure {
				p := newTestPKI(b)
				srvCfg, cliCfg = p.config(b, "host2", "host1"), p.config(b, "host1", "host2")
			}
			l, err := Listen("127.0.0.1:0", loopback, srvCfg, map[byte]string{Migration: sink}, quiet())
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			f, err := Forward(filepath.Join(dir, "out.sock"), l.Addr(), Migration, cliCfg, quiet())
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			c, err := net.Dial("unix", f.Path())
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(*net.UnixConn).CloseWrite()
			if n := <-got; n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("%d bytes arrived, want %d", n, int64(b.N)*int64(len(buf)))
			}
		})
	}
}
