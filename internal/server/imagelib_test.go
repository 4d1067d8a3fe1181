package server

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/image"
)

func stamp(created time.Time) string { return image.Stamp(api.Image{CreatedAt: created}) }

func TestPlanImages(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	created := now.Add(-time.Hour)
	tiny := api.Image{Name: "tiny", Source: "built: tiny", CreatedAt: created}
	win := api.Image{Name: "win", Source: "imported: vhdx", CreatedAt: created}
	deb := api.Image{Name: "deb", Source: "imported: qcow2", CreatedAt: created}
	old := now.Add(-2 * orphanAge)
	cases := []struct {
		name   string
		images []api.Image
		local  []localImage
		want   imagePlan
	}{
		{"in step", []api.Image{tiny, win},
			[]localImage{{Name: "tiny", Whole: true, ModTime: old}, {Name: "win", Whole: true, Stamp: stamp(created), ModTime: old}},
			imagePlan{}},
		{"an import copied nowhere yet", []api.Image{tiny, win, deb},
			[]localImage{{Name: "tiny", Whole: true}, {Name: "win", Whole: true, Stamp: stamp(created)}},
			imagePlan{Pull: []api.Image{deb}}},
		{"a built image is never copied", []api.Image{tiny}, nil, imagePlan{}},
		{"a copy without its disk is partial", []api.Image{win},
			[]localImage{{Name: "win", Stamp: stamp(created), ModTime: old}},
			imagePlan{Pull: []api.Image{win}}},
		{"a copy of an older image of the name", []api.Image{win},
			[]localImage{{Name: "win", Whole: true, Stamp: stamp(created.Add(-time.Minute)), ModTime: old}},
			imagePlan{Pull: []api.Image{win}}},
		{"an import from before stamps is kept", []api.Image{win},
			[]localImage{{Name: "win", Whole: true, ModTime: old}},
			imagePlan{}},
		{"a deleted image goes", []api.Image{tiny},
			[]localImage{{Name: "tiny", Whole: true, ModTime: old}, {Name: "win", Whole: true, ModTime: old}},
			imagePlan{Remove: []string{"win"}}},
		{"an import not yet recorded stays", []api.Image{tiny},
			[]localImage{{Name: "tiny", Whole: true, ModTime: old}, {Name: "new", Whole: true, ModTime: now.Add(-time.Second)}},
			imagePlan{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := planImages(c.images, c.local, now); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestImageLibraryFile: a replica serves only a whole copy of the image
// asked for; otherwise it says to ask another replica and, for an agent
// (not another replica), starts copying the image.
func TestImageLibraryFile(t *testing.T) {
	dir := t.TempDir()
	l := newImageLibrary(dir, "server2", nil, nil, slog.New(slog.DiscardHandler))
	created := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	win := api.Image{Name: "win", Source: "imported: vhdx", CreatedAt: created}
	woken := func() bool {
		select {
		case <-l.wake:
			return true
		default:
			return false
		}
	}

	_, err := l.File(win, "disk.qcow2", true)
	if w := woken(); !errors.Is(err, api.ErrUnavailable) || w {
		t.Errorf("missing image asked by a replica: %v, copy started: %v; want unavailable, no copy", err, w)
	}
	_, err = l.File(win, "disk.qcow2", false)
	if w := woken(); !errors.Is(err, api.ErrUnavailable) || !w {
		t.Errorf("missing image asked by an agent: %v, copy started: %v; want unavailable and a copy", err, w)
	}

	d := filepath.Join(dir, "win")
	if err := os.MkdirAll(d, 0o750); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(d, name), []byte(text), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("disk.qcow2", "disk")
	write(image.StampFile, stamp(created.Add(-time.Hour)))
	if _, err := l.File(win, "disk.qcow2", false); !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("copy of an older image of the name: %v; want unavailable", err)
	}
	write(image.StampFile, stamp(created))
	if p, err := l.File(win, "disk.qcow2", true); err != nil || p != filepath.Join(d, "disk.qcow2") {
		t.Errorf("whole copy: %q, %v", p, err)
	}
}
