package netdev

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"
)

// testCutTCP runs inside the test namespace: a connection to a peer that
// stays silent is cut at once, and its owner sees the reset; connections
// to other peers stay.
func testCutTCP(t *testing.T) {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	cut, err := net.Dial("tcp", l1.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	kept, err := net.Dial("tcp", l2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()

	n, err := CutTCP(netip.MustParseAddrPort(l1.Addr().String()))
	if err != nil || n != 1 {
		t.Fatalf("CutTCP = %d, %v; want 1 connection cut", n, err)
	}
	_ = cut.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := cut.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
		t.Fatalf("read on the cut connection: %v; want it reset", err)
	}
	_ = kept.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := kept.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("read on the other connection: %v; want it still open (a timeout)", err)
	}
	if n, err := CutTCP(netip.MustParseAddrPort("[::1]:80")); err == nil {
		t.Fatalf("CutTCP of an IPv6 peer = %d, nil; want an error", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
