package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoalvm/shoal/internal/agentapi"
	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/image"
	"github.com/shoalvm/shoal/internal/pki"
	"github.com/shoalvm/shoal/internal/store"
)

// Every replica keeps the whole image library. Each builds tiny itself;
// an image imported through one replica is copied by every other one
// from a replica that has it, so that an agent gets the image from
// whichever replica it reaches, and the library outlives the replica it
// was imported through. A copy is stamped with the image it is of
// (image.StampFile), so that a replica never serves, nor keeps, the
// files of a deleted image of the same name.

const (
	// imageSyncEvery is how often a replica compares its library with the
	// cluster's images (and at once when an agent asks for one it lacks).
	imageSyncEvery = 5 * time.Second
	// orphanAge is how old an image directory without a record must be
	// before it is removed: an import moves its directory into place just
	// before it records the image.
	orphanAge = time.Minute
)

// localImage is what a replica holds of an image.
type localImage struct {
	Name    string
	Stamp   string // image.ReadStamp; "" if none (an import older than stamps)
	Whole   bool   // the disk is there (it is written last)
	ModTime time.Time
}

// imagePlan is what a replica must do to hold the cluster's library.
type imagePlan struct {
	Pull   []api.Image // missing, partial or of an older image of the name
	Remove []string    // directories of images that no longer exist
}

// holds reports whether have is a whole copy of im.
func holds(have localImage, im api.Image) bool {
	return have.Whole && image.Matches(have.Stamp, im)
}

// planImages decides which images to copy here and which directories to
// remove. Images this replica builds itself are never copied.
func planImages(images []api.Image, local []localImage, now time.Time) imagePlan {
	var p imagePlan
	known := map[string]bool{}
	have := map[string]localImage{}
	for _, l := range local {
		have[l.Name] = l
	}
	for _, im := range images {
		known[im.Name] = true
		if strings.HasPrefix(im.Source, "built:") {
			continue
		}
		if l, ok := have[im.Name]; !ok || !holds(l, im) {
			p.Pull = append(p.Pull, im)
		}
	}
	for _, l := range local {
		if !known[l.Name] && now.Sub(l.ModTime) >= orphanAge {
			p.Remove = append(p.Remove, l.Name)
		}
	}
	return p
}

// imageLibrary is this replica's copy of the cluster's images.
type imageLibrary struct {
	dir    string
	self   string // this replica's name
	st     *store.Store
	client *http.Client // with this replica's certificate, to the others
	log    *slog.Logger
	wake   chan struct{}
}

func newImageLibrary(dir, self string, st *store.Store, peerTLS *tls.Config, log *slog.Logger) *imageLibrary {
	l := &imageLibrary{dir: dir, self: self, st: st, log: log, wake: make(chan struct{}, 1)}
	if peerTLS != nil {
		cfg := peerTLS.Clone()
		cfg.VerifyConnection = pki.RequireRole(pki.OUServer, "") // only another replica
		d := &net.Dialer{Timeout: 5 * time.Second}
		l.client = &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DialContext: d.DialContext,
			TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 30 * time.Second}}
	}
	return l
}

// run keeps the library in step with the cluster's images until ctx ends.
func (l *imageLibrary) run(ctx context.Context) {
	if l.dir == "" || l.client == nil {
		return
	}
	said := ""
	for {
		err := l.sync(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && err.Error() != said: // the same trouble is told once
			l.log.Warn("image library not in step with the cluster", "err", err)
			said = err.Error()
		case err == nil:
			said = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-time.After(imageSyncEvery):
		}
	}
}

// kick asks run for a pass now.
func (l *imageLibrary) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// sync makes one pass: copies what is missing, one image at a time, and
// removes what is gone.
func (l *imageLibrary) sync(ctx context.Context) error {
	images, err := l.st.ListImages(ctx)
	if err != nil {
		return err
	}
	local, err := l.scan()
	if err != nil {
		return err
	}
	p := planImages(images, local, time.Now())
	if len(p.Pull) == 0 && len(p.Remove) == 0 {
		return nil
	}
	var errs []error
	for _, im := range p.Pull {
		if err := l.pull(ctx, im); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range p.Remove {
		if err := os.RemoveAll(filepath.Join(l.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove image %q: %w", name, err))
			continue
		}
		l.log.Info("image removed: it was deleted", "name", name)
	}
	return errors.Join(errs...)
}

// scan lists the image directories here (not the hidden ones of uploads,
// imports and copies under way).
func (l *imageLibrary) scan() ([]localImage, error) {
	ents, err := os.ReadDir(l.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image library: %w", err)
	}
	var out []localImage
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		out = append(out, l.look(e.Name()))
	}
	return out, nil
}

// look tells what this replica holds of the image name.
func (l *imageLibrary) look(name string) localImage {
	d := filepath.Join(l.dir, name)
	li := localImage{Name: name}
	if fi, err := os.Stat(d); err == nil {
		li.ModTime = fi.ModTime()
	}
	if _, err := os.Stat(filepath.Join(d, "disk.qcow2")); err == nil {
		li.Whole = true
	}
	li.Stamp = image.ReadStamp(d)
	return li
}

// File returns the path of file of image im if this replica holds the
// image; if not, it has the library copy it and says to ask another
// replica meanwhile (an agent's client does so by itself). A replica
// asking (peer) gets no such copy started: it asks the next one.
func (l *imageLibrary) File(im api.Image, file string, peer bool) (string, error) {
	if holds(l.look(im.Name), im) {
		return filepath.Join(l.dir, im.Name, file), nil
	}
	if !peer && !strings.HasPrefix(im.Source, "built:") {
		l.kick()
	}
	return "", api.Errorf(api.ErrUnavailable, "image %q is not on server %s yet (it copies it from another server); ask another server", im.Name, l.self)
}

// pull copies im from the first other replica that has it.
func (l *imageLibrary) pull(ctx context.Context, im api.Image) error {
	peers, err := l.st.ListServers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range peers {
		if p.Name == l.self || p.URL == "" {
			continue
		}
		start := time.Now()
		n, err := l.pullFrom(ctx, p.URL, im)
		if err == nil {
			l.log.Info("image copied from another server", "name", im.Name, "from", p.Name, "bytes", n, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", p.Name, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("image %q: no other server to copy it from", im.Name)
	}
	return fmt.Errorf("image %q: %w", im.Name, errors.Join(errs...))
}

// pullFrom copies im's files from the replica at base into a hidden
// directory, then puts that in place of whatever was here.
func (l *imageLibrary) pullFrom(ctx context.Context, base string, im api.Image) (int64, error) {
	if err := os.MkdirAll(l.dir, 0o750); err != nil {
		return 0, fmt.Errorf("image dir: %w", err)
	}
	stage, err := os.MkdirTemp(l.dir, ".pull-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(stage)
	files := []string{"disk.qcow2"}
	if im.Kernel {
		files = []string{"vmlinuz", "initrd.img", "disk.qcow2"}
	}
	var total int64
	for _, f := range files {
		n, err := l.fetch(ctx, base+"/v1/agent/images/"+url.PathEscape(im.Name)+"/files/"+f, filepath.Join(stage, f))
		if err != nil {
			return total, err
		}
		total += n
	}
	if err := image.WriteStamp(stage, im); err != nil {
		return total, err
	}
	dst := filepath.Join(l.dir, im.Name)
	if err := os.RemoveAll(dst); err != nil {
		return total, err
	}
	return total, os.Rename(stage, dst)
}

// fetch downloads one file to dst.
func (l *imageLibrary) fetch(ctx context.Context, from, dst string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, from, nil)
	if err != nil {
		return 0, err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return agentapi.SaveBody(resp, dst)
}
