package rbd

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/pool/rbd/cephtest"
)

// The package's tests share one real cluster (it takes seconds to
// start), reachable on a bridge from two client hosts, each in its own
// namespace with its own address, as hosts of a Shoal cluster are.
var (
	cluster  *cephtest.Cluster
	hostNS   = map[string]string{} // host name -> its namespace
	adminKey string
)

// hostAddrs are the client hosts' addresses.
var hostAddrs = map[string]string{"ha": "10.213.0.11", "hb": "10.213.0.12"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "rbd tests need root (network namespaces, a Ceph cluster)")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := cephtest.Start(ctx, cephtest.Options{Addr: "10.213.0.1"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := c.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "stop:", err)
		}
	}()
	rss, _ := c.RSS()
	fmt.Printf("ceph cluster healthy in %v, daemons' RSS %d MiB\n", c.Started.Round(10*time.Millisecond), rss>>20)
	for h, a := range hostAddrs {
		ns, err := c.AddHost(ctx, h, a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		hostNS[h] = ns
	}
	cluster = c
	if adminKey, err = keyOf(c.AdminKeyring, "client.admin"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if rss, err := c.RSS(); err == nil {
		fmt.Printf("daemons' RSS after the tests %d MiB\n", rss>>20)
	}
	return code
}

// newDriver is a driver of the shared cluster's pool, run in the
// cluster's namespace, fencing as the admin.
func newDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{
		Monitors: cluster.Monitors, Pool: cluster.Pool, User: cluster.User, Keyring: cluster.UserKeyring,
		FenceUser: "admin", FenceKeyring: cluster.AdminKeyring,
		Hosts: hostAddrs, Dir: filepath.Join(t.TempDir(), "rbd"),
		Prefix: []string{"ip", "netns", "exec", cluster.Netns},
	})
	if err != nil {
		t.Fatal(err)
	}
	// No key is ever on a command line.
	d.ran = func(argv []string) {
		line := strings.Join(argv, " ")
		if strings.Contains(line, cluster.Key) || strings.Contains(line, adminKey) {
			t.Errorf("a key on a command line: %v", argv)
		}
	}
	return d
}

// testID is a fresh volume id.
func testID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}
