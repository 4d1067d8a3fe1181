// Package storetest starts throwaway embedded etcd members for tests.
package storetest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"

	"github.com/shoalvm/shoal/internal/store"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// New starts an embedded etcd in a temp dir for a test and stops
// it when the test ends.
func New(t testing.TB) *store.Store { return NewQuota(t, 0) }

// NewQuota is New with a backend quota of quota bytes (0: etcd's default).
func NewQuota(t testing.TB, quota int64) *store.Store {
	t.Helper()
	e, err := store.StartEmbedded(context.Background(), slog.New(slog.DiscardHandler), store.EmbedOptions{
		Dir:        t.TempDir(),
		ClientURL:  fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		PeerURL:    fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		QuotaBytes: quota,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e.Store()
}
