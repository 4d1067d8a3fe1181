package netguard

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestOnlyFrom(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := OnlyFrom(l, netip.MustParseAddr("127.0.0.2"), slog.New(slog.DiscardHandler))
	defer g.Close()
	got := make(chan string, 2)
	go func() {
		for {
			c, err := g.Accept()
			if err != nil {
				return
			}
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	dial := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// A stranger is cut off without being handed over.
	s := dial("127.0.0.1")
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("stranger's read: %v, want EOF", err)
	}
	s.Close()
	// The expected peer is.
	c := dial("127.0.0.2")
	defer c.Close()
	select {
	case ip := <-got:
		if ip != "127.0.0.2" {
			t.Fatalf("accepted %s", ip)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the expected peer was not accepted")
	}
	select {
	case ip := <-got:
		t.Fatalf("also accepted %s", ip)
	default:
	}
}

func TestFromInvalidAdmitsNoOne(t *testing.T) {
	if From(&net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1}, netip.Addr{}) {
		t.Error("an invalid address admitted a peer")
	}
	if !From(&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}, netip.MustParseAddr("10.0.0.1")) {
		t.Error("a v4-mapped address is not its IPv4 address")
	}
}
