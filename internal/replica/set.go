// Package replica lets a client of the control plane spread over its
// replicas (several 'shoal server' processes sharing one etcd): an ordered
// set of base URLs that remembers the one that answered last, and the rule
// for when a failed call may be sent again to another replica.
package replica

import (
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/shoalvm/shoal/internal/api"
)

// Set is an ordered list of replica base URLs with a current one: calls
// start at the current one and go round the others. Safe for concurrent
// use.
type Set struct {
	mu   sync.Mutex
	urls []string
	cur  int
}

// NewSet returns a set of urls (duplicates and empty ones dropped), the
// first current.
func NewSet(urls []string) *Set {
	return &Set{urls: dedupe(urls)}
}

func dedupe(urls []string) []string {
	var out []string
	for _, u := range urls {
		u = strings.TrimSpace(u)
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// Order returns the URLs to try, the current one first.
func (s *Set) Order() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.urls))
	for i := range s.urls {
		out = append(out, s.urls[(s.cur+i)%len(s.urls)])
	}
	return out
}

// All returns the URLs in their stored order.
func (s *Set) All() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.urls)
}

// Current returns the URL calls start at.
func (s *Set) Current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.urls) == 0 {
		return ""
	}
	return s.urls[s.cur]
}

// Worked makes u (which answered) the current URL.
func (s *Set) Worked(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.urls, u); i >= 0 {
		s.cur = i
	}
}

// Failed moves on from u if it is the current URL, so that the next call
// (the caller's own retry, say) starts at the next replica.
func (s *Set) Failed(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.urls) > 0 && s.urls[s.cur] == u {
		s.cur = (s.cur + 1) % len(s.urls)
	}
}

// Replace makes urls the set, keeping keep (the replica that gave the
// list, known to work from here even if it advertises another address)
// and making it current. An empty list changes nothing. It reports
// whether the URLs changed.
func (s *Set) Replace(urls []string, keep string) bool {
	urls = dedupe(urls)
	if len(urls) == 0 {
		return false
	}
	if keep != "" && !slices.Contains(urls, keep) {
		urls = append([]string{keep}, urls...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := !slices.Equal(s.urls, urls)
	s.urls = urls
	s.cur = max(slices.Index(urls, keep), 0)
	return changed
}

// URLs returns the base URLs (https://HOST:PORT) of the replicas that a
// client elsewhere can dial, in the order given: a replica without a URL,
// or listening on the unspecified address (0.0.0.0, ::), is left out.
func URLs(servers []api.Server) []string {
	var out []string
	for _, sv := range servers {
		u, err := url.Parse(sv.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			continue
		}
		host, _, err := net.SplitHostPort(u.Host)
		if err != nil {
			host = u.Hostname()
		}
		if host == "" {
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
			continue
		}
		out = append(out, "https://"+u.Host)
	}
	return dedupe(out)
}
