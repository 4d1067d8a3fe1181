package replica

import (
	"net/http"
	"slices"
	"testing"

	"github.com/shoalvm/shoal/internal/api"
)

func TestSetOrder(t *testing.T) {
	s := NewSet([]string{"https://a:1", " https://b:1", "https://a:1", "", "https://c:1"})
	if got := s.Order(); !slices.Equal(got, []string{"https://a:1", "https://b:1", "https://c:1"}) {
		t.Fatalf("Order() = %v", got)
	}
	s.Failed("https://b:1") // not the current one: no move
	if s.Current() != "https://a:1" {
		t.Fatalf("current %s after another replica failed", s.Current())
	}
	s.Failed("https://a:1")
	if got := s.Order(); !slices.Equal(got, []string{"https://b:1", "https://c:1", "https://a:1"}) {
		t.Fatalf("Order() after a failure = %v", got)
	}
	s.Worked("https://c:1")
	if got := s.Order(); !slices.Equal(got, []string{"https://c:1", "https://a:1", "https://b:1"}) {
		t.Fatalf("Order() after c worked = %v", got)
	}
	s.Worked("https://unknown:1")
	if s.Current() != "https://c:1" {
		t.Fatal("an unknown URL became current")
	}
	if got := s.All(); !slices.Equal(got, []string{"https://a:1", "https://b:1", "https://c:1"}) {
		t.Fatalf("All() = %v", got)
	}
}

func TestSetReplace(t *testing.T) {
	s := NewSet([]string{"https://join:1"})
	if s.Replace(nil, "https://join:1") {
		t.Fatal("an empty list replaced the set")
	}
	if !s.Replace([]string{"https://a:1", "https://b:1"}, "https://join:1") {
		t.Fatal("no change reported")
	}
	if got := s.Order(); !slices.Equal(got, []string{"https://join:1", "https://a:1", "https://b:1"}) {
		t.Fatalf("Order() = %v: the replica that answered must stay, first", got)
	}
	if !s.Replace([]string{"https://a:1", "https://b:1"}, "https://b:1") || s.Current() != "https://b:1" {
		t.Fatalf("after replace from b: %v current %s", s.All(), s.Current())
	}
	if s.Replace([]string{"https://a:1", "https://b:1"}, "https://b:1") {
		t.Fatal("the same list reported as a change")
	}
}

func TestURLs(t *testing.T) {
	got := URLs([]api.Server{
		{Name: "a", URL: "https://10.0.0.1:7443/"},
		{Name: "b", URL: "https://0.0.0.0:7443"},
		{Name: "c", URL: "https://[::]:7443"},
		{Name: "d", URL: ""},
		{Name: "e", URL: "http://10.0.0.5:7443"},
		{Name: "f", URL: "https://srv.example:7443", Leader: true},
		{Name: "g", URL: "https://10.0.0.1:7443"},
		{Name: "h", URL: "https://[fd00::2]:7443"},
	})
	want := []string{"https://10.0.0.1:7443", "https://srv.example:7443", "https://[fd00::2]:7443"}
	if !slices.Equal(got, want) {
		t.Fatalf("URLs = %v, want %v", got, want)
	}
}

func TestRetryRules(t *testing.T) {
	for _, tc := range []struct {
		method string
		sent   bool
		want   bool
	}{
		{"GET", false, true}, {"GET", true, true},
		{"POST", false, true}, {"POST", true, false},
		{"PUT", true, false}, {"DELETE", true, false}, {"PATCH", false, true},
	} {
		if got := MayRetry(t.Context(), tc.method, tc.sent); got != tc.want {
			t.Errorf("MayRetry(%s, sent=%v) = %v", tc.method, tc.sent, got)
		}
	}
	if !RetryStatus("GET", http.StatusServiceUnavailable) || RetryStatus("POST", http.StatusServiceUnavailable) ||
		RetryStatus("GET", http.StatusInsufficientStorage) || RetryStatus("GET", http.StatusNotFound) {
		t.Error("RetryStatus: only reads that met a failing replica go on")
	}
}
