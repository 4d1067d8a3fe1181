package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/qemu"
)

// fetch GETs http://ip+path from inside the node's namespace.
func (l *testNode) fetch(ip, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ip+path, nil)
	resp, err := l.httpClient().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// waitDisks polls the guest's /disks until has says yes about it.
func (l *testNode) waitDisks(ip string, has func(string) bool) string {
	l.t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out, err = l.fetch(ip, "/disks"); err == nil && has(out) {
			return out
		}
	}
	l.t.Fatalf("the guest's disks never became as wanted: %q, %v", out, err)
	return ""
}

// TestIntegrationVolumeHotplug: a volume attached to a running VM
// appears in the guest, takes data, goes from the guest when detached,
// and a second running VM that it is then attached to reads the data;
// grown while in use, the guest sees its new size; a VM restarted with
// a volume opens it at its start.
func TestIntegrationVolumeHotplug(t *testing.T) {
	l := newLab(t)
	l.start()
	l.mustShoal("vm", "create", "a", "--image", "tiny", "--start")
	l.mustShoal("vm", "create", "b", "--image", "tiny", "--start")
	l.mustShoal("volume", "create", "data", "--size", "64M")
	a, b := l.vm("a"), l.vm("b")
	l.waitServing(a.IP, 90*time.Second)
	l.waitServing(b.IP, 90*time.Second)

	if out := l.mustShoal("vm", "attach", "a", "data"); !strings.Contains(out, "volume data attached to vm a") || strings.Contains(out, "next start") {
		t.Fatalf("attach to a running VM: %q", out)
	}
	var vol api.Volume
	for _, v := range l.volumes() {
		if v.Name == "data" {
			vol = v
		}
	}
	serial := qemu.VolumeSerial(vol.ID)
	disks := l.waitDisks(a.IP, func(s string) bool { return strings.Contains(s, serial+" 67108864") })
	if got := l.vm("a"); len(got.Disks) != 2 || !got.Disks[1].Open {
		t.Errorf("vm show after attach: %+v (guest: %q)", got.Disks, disks)
	}
	if out, err := l.fetch(a.IP, "/vol?serial="+serial+"&write=hello-from-a"); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("write to the volume: %q, %v", out, err)
	}
	if out := l.mustShoal("vm", "detach", "a", "data"); !strings.Contains(out, "volume data detached from vm a") {
		t.Fatalf("detach: %q", out)
	}
	l.waitDisks(a.IP, func(s string) bool { return !strings.Contains(s, serial) })

	l.mustShoal("vm", "attach", "b", "data")
	l.waitDisks(b.IP, func(s string) bool { return strings.Contains(s, serial) })
	if out, err := l.fetch(b.IP, "/vol?serial="+serial); err != nil || !strings.Contains(out, "hello-from-a") {
		t.Fatalf("b reads the volume: %q, %v", out, err)
	}
	// Grown while b runs: the guest sees the new size.
	if out := l.mustShoal("volume", "resize", "data", "--size", "96M"); !strings.Contains(out, "volume data is 96M") {
		t.Errorf("resize in use: %q", out)
	}
	l.waitDisks(b.IP, func(s string) bool { return strings.Contains(s, serial+" 100663296") })
	// The volume is b's at its next start too.
	l.mustShoal("vm", "restart", "b")
	l.waitServing(b.IP, 90*time.Second)
	l.waitDisks(b.IP, func(s string) bool { return strings.Contains(s, serial) })
	if r, err := l.get(a.IP); err != nil || r.Count == 0 {
		t.Errorf("vm a after the detach: %+v, %v", r, err)
	}
}

// volumes lists the volumes.
func (l *testNode) volumes() []api.Volume {
	l.t.Helper()
	var vs []api.Volume
	must(l.t.(*testing.T), json.Unmarshal([]byte(l.mustShoal("volume", "list", "-o", "json")), &vs))
	return vs
}
