package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Bounds of the event log: etcd drops an event EventTTL after it was
// recorded (give or take eventLeaseReuse), and TrimEvents keeps the last
// EventsKept.
const (
	EventTTL        = 7 * 24 * time.Hour
	EventsKept      = 1000
	eventLeaseReuse = time.Hour // one lease serves the events of this long
	eventPage       = 500
)

// eventsPrefix holds one key per event; the key's last part is the
// event's id: the unix time in nanoseconds, zero-padded, and a random
// suffix, so that keys sort by time.
var eventsPrefix = key("events") + "/"

func eventKey(id string) string { return eventsPrefix + id }

// eventLease is the lease the events recorded lately share, so that
// appending one costs one Put, not a Grant as well.
type eventLease struct {
	mu      sync.Mutex
	id      clientv3.LeaseID
	granted time.Time
}

// NewEventID returns an event id for time t: ids sort by time.
func NewEventID(t time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%020d-%s", t.UnixNano(), hex.EncodeToString(b))
}

// lease returns the lease to attach to an event recorded now, granting a
// fresh one when the current one is older than eventLeaseReuse (or when
// renew says it is lost).
func (s *Store) eventLease(ctx context.Context, now time.Time, renew bool) (clientv3.LeaseID, error) {
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if s.ev.id != 0 && !renew && now.Sub(s.ev.granted) < eventLeaseReuse {
		return s.ev.id, nil
	}
	ttl := (EventTTL + eventLeaseReuse) / time.Second
	l, err := s.c.Grant(ctx, int64(ttl))
	if err != nil {
		return 0, fmt.Errorf("grant event lease: %w: %w", api.ErrUnavailable, err)
	}
	s.ev.id, s.ev.granted = l.ID, now
	return l.ID, nil
}

// AppendEvent records an event (one Put) and returns it as recorded. It
// fills in the id and time when they are empty; the event expires after
// EventTTL.
func (s *Store) AppendEvent(ctx context.Context, e api.Event) (api.Event, error) {
	now := time.Now().UTC()
	if e.Time.IsZero() {
		e.Time = now
	}
	if e.ID == "" {
		e.ID = NewEventID(e.Time)
	}
	b, err := json.Marshal(e)
	if err != nil {
		return e, fmt.Errorf("encode event: %w", err)
	}
	for try := 0; ; try++ {
		lease, err := s.eventLease(ctx, now, try > 0)
		if err != nil {
			return e, err
		}
		_, err = s.c.Put(ctx, eventKey(e.ID), string(b), clientv3.WithLease(lease))
		if err == nil {
			return e, nil
		}
		if try > 0 || ctx.Err() != nil {
			return e, fmt.Errorf("record event: %w: %w", api.ErrUnavailable, err)
		}
		// The lease may be gone (revoked, or a restored cluster): retry
		// once with a fresh one.
	}
}

// EventFilter selects events. Without After, ListEvents returns the
// newest Limit events that match; with After, the oldest Limit newer
// than it (to page forward, as a follower does).
type EventFilter struct {
	Since time.Time // at or after this time
	After string    // newer than the event with this id
	VM    string    // about this VM
	Host  string    // about this host (as source or target)
	Limit int       // at most this many; 0 = no limit
}

func (f EventFilter) match(e api.Event) bool {
	return (f.VM == "" || e.VM == f.VM) && (f.Host == "" || e.Involves(f.Host))
}

// ListEvents returns the events that match f, oldest first.
func (s *Store) ListEvents(ctx context.Context, f EventFilter) ([]api.Event, error) {
	start, end := eventsPrefix, clientv3.GetPrefixRangeEnd(eventsPrefix)
	if !f.Since.IsZero() {
		start = eventKey(fmt.Sprintf("%020d", f.Since.UnixNano()))
	}
	if f.After != "" {
		start = max(start, eventKey(f.After)+"\x00")
	}
	forward := f.After != ""
	out := []api.Event{}
	for start < end {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(eventPage)}
		if !forward {
			opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		}
		resp, err := s.c.Get(ctx, start, opts...)
		if err != nil {
			return nil, fmt.Errorf("list events: %w: %w", api.ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			var e api.Event
			if json.Unmarshal(kv.Value, &e) != nil || !f.match(e) {
				continue // a corrupt record must not hide the others
			}
			out = append(out, e)
			if f.Limit > 0 && len(out) == f.Limit {
				break
			}
		}
		if !resp.More || len(resp.Kvs) == 0 || (f.Limit > 0 && len(out) == f.Limit) {
			break
		}
		last := string(resp.Kvs[len(resp.Kvs)-1].Key)
		if forward {
			start = last + "\x00"
		} else {
			end = last // the range end is exclusive
		}
	}
	if !forward {
		slices.Reverse(out)
	}
	return out, nil
}

// TrimEvents deletes the oldest events beyond the last keep and returns
// how many it deleted.
func (s *Store) TrimEvents(ctx context.Context, keep int) (int, error) {
	resp, err := s.c.Get(ctx, eventsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count events: %w: %w", api.ErrUnavailable, err)
	}
	extra := resp.Count - int64(max(keep, 0))
	if extra <= 0 {
		return 0, nil
	}
	old, err := s.c.Get(ctx, eventsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(extra))
	if err != nil {
		return 0, fmt.Errorf("list old events: %w: %w", api.ErrUnavailable, err)
	}
	if len(old.Kvs) == 0 {
		return 0, nil
	}
	first, last := string(old.Kvs[0].Key), string(old.Kvs[len(old.Kvs)-1].Key)
	del, err := s.c.Delete(ctx, first, clientv3.WithRange(last+"\x00"))
	if err != nil {
		return 0, fmt.Errorf("trim events: %w: %w", api.ErrUnavailable, err)
	}
	return int(del.Deleted), nil
}
