package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeDisks is a /sys/block and a /dev of files, for guest/disks.cgi run
// under the host's busybox sh.
type fakeDisks struct{ dir string }

func newFakeDisks(t *testing.T, disks map[string]string) fakeDisks {
	t.Helper()
	f := fakeDisks{t.TempDir()}
	for dev, serial := range disks {
		sys := filepath.Join(f.dir, "sys", dev)
		if err := os.MkdirAll(sys, 0o755); err != nil {
			t.Fatal(err)
		}
		// A fresh disk: blank, 2048 sectors; /sys has no newline after
		// the serial.
		for name, data := range map[string][]byte{
			filepath.Join(sys, "size"):       []byte("2048\n"),
			filepath.Join(sys, "serial"):     []byte(serial),
			filepath.Join(f.dir, "dev", dev): make([]byte, 2048*512),
		} {
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(name, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// get runs the CGI for uri and returns its status line and body.
func (f fakeDisks) get(t *testing.T, uri string) (string, string) {
	t.Helper()
	script, err := guestFS.ReadFile("guest/disks.cgi")
	if err != nil {
		t.Fatal(err)
	}
	_, query, _ := strings.Cut(uri, "?")
	cmd := exec.Command("busybox", "sh", "-c", string(script))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "REQUEST_METHOD=GET",
		"REQUEST_URI=" + uri, "QUERY_STRING=" + query,
		"SHOAL_SYS_BLOCK=" + filepath.Join(f.dir, "sys"), "SHOAL_DEV=" + filepath.Join(f.dir, "dev")}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", uri, err, out)
	}
	head, body, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok {
		t.Fatalf("%s: no header end in %q", uri, out)
	}
	status, _, _ := strings.Cut(head, "\r\n")
	if !strings.Contains(head, "Content-Length: "+strconv.Itoa(len(body))+"\r\n") {
		t.Errorf("%s: header %q does not give the body's length %d", uri, head, len(body))
	}
	return status, body
}

func TestGuestDisksCGI(t *testing.T) {
	requireIntegration(t, "busybox")
	f := newFakeDisks(t, map[string]string{"vda": "disk0", "vdb": "cidata", "vdc": "vab12cd34", "vdd": ""})

	if st, body := f.get(t, "/disks/"); st != "HTTP/1.0 200 OK" ||
		body != "vda disk0 1048576\nvdb cidata 1048576\nvdc vab12cd34 1048576\nvdd - 1048576\n" {
		t.Errorf("/disks/: %s %q", st, body)
	}
	if st, body := f.get(t, "/vol/?serial=vab12cd34"); st != "HTTP/1.0 200 OK" || body != "\n" {
		t.Errorf("read of a blank disk: %s %q", st, body)
	}
	if st, body := f.get(t, "/vol/?serial=vab12cd34&write=hello-1.2_X"); st != "HTTP/1.0 200 OK" || body != "ok\n" {
		t.Errorf("write: %s %q", st, body)
	}
	if st, body := f.get(t, "/vol/?serial=vab12cd34"); st != "HTTP/1.0 200 OK" || body != "hello-1.2_X\n" {
		t.Errorf("read back: %s %q", st, body)
	}
	// Sector 0 holds the text and a newline, then zeros; the rest of the
	// disk is untouched.
	data, err := os.ReadFile(filepath.Join(f.dir, "dev", "vdc"))
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte("hello-1.2_X\n"), make([]byte, 512-12)...); !bytes.Equal(data[:512], want) || len(data) != 2048*512 {
		t.Errorf("sector 0 = %q, disk %d bytes", data[:32], len(data))
	}
	long := strings.Repeat("x", 64)
	if st, _ := f.get(t, "/vol/?serial=vab12cd34&write="+long); st != "HTTP/1.0 200 OK" {
		t.Errorf("write of 64 characters: %s", st)
	}
	if _, body := f.get(t, "/vol/?serial=vab12cd34"); body != long+"\n" {
		t.Errorf("read of 64 characters: %q", body)
	}

	for _, uri := range []string{
		"/vol/",
		"/vol/?serial=",
		"/vol/?serial=vab12cd34&write=",
		"/vol/?serial=vab12cd34&write=" + long + "y",
		"/vol/?serial=vab12cd34&write=a%20b",
		"/vol/?serial=vab12cd34&write=a;reboot",
		"/vol/?serial=vab12cd34&write=*",
		"/vol/?serial=a*b",
		"/vol/?serial=vab12cd34&size=1",
		"/vol/?serial=" + strings.Repeat("s", 21),
		"/vol/?serial=disk0&write=x", // the counter's disk
	} {
		if st, body := f.get(t, uri); st != "HTTP/1.0 400 Bad Request" || strings.Count(body, "\n") != 1 {
			t.Errorf("%s: %s %q, want 400 and one line", uri, st, body)
		}
	}
	if st, _ := f.get(t, "/vol/?serial=nosuch"); st != "HTTP/1.0 404 Not Found" {
		t.Errorf("unknown serial: %s, want 404", st)
	}
	if _, body := f.get(t, "/vol/?serial=vab12cd34"); body != long+"\n" {
		t.Errorf("bad requests changed the disk: %q", body)
	}
	if st, _ := f.get(t, "/disks/x"); st != "HTTP/1.0 404 Not Found" {
		t.Errorf("/disks/x: %s, want 404", st)
	}
}
