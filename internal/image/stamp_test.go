package image

import (
	"testing"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// TestStamp: a copy stamped with one image is stale for another of the
// same name, and a copy without a stamp is taken as current.
func TestStamp(t *testing.T) {
	dir := t.TempDir()
	old := api.Image{Name: "win", CreatedAt: time.Date(2026, 11, 1, 9, 0, 0, 1, time.UTC)}
	now := api.Image{Name: "win", CreatedAt: old.CreatedAt.Add(time.Hour)}
	if Stale(dir, now) || ReadStamp(dir) != "" {
		t.Errorf("an unstamped copy: stale %v, stamp %q", Stale(dir, now), ReadStamp(dir))
	}
	if err := WriteStamp(dir, old); err != nil {
		t.Fatal(err)
	}
	if !Stale(dir, now) {
		t.Errorf("a copy of the deleted %s is not stale for the new one", Stamp(old))
	}
	if Stale(dir, old) {
		t.Errorf("a copy of %s is stale for itself", Stamp(old))
	}
	// The stamp does not depend on the time's zone.
	if got := Stamp(api.Image{CreatedAt: old.CreatedAt.In(time.FixedZone("x", 3600))}); got != Stamp(old) {
		t.Errorf("stamp in another zone %q, want %q", got, Stamp(old))
	}
}
