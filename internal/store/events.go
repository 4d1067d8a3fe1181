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

// NewEventID returns an event id for time t: ids sort by time.
func NewEventID(t time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%020d-%s", t.UnixNano(), hex.EncodeToString(b))
}

// sharedLease is a lease that the records appended for a while share
// (events, audit records), so that appending one costs one Put, not a
// Grant as well.
type sharedLease struct {
	mu      sync.Mutex
	id      clientv3.LeaseID
	granted time.Time
}

// get returns the lease to attach to a record of lifetime ttl appended
// now, granting a fresh one when the current one is older than reuse (or
// when renew says it is lost).
func (l *sharedLease) get(ctx context.Context, c *clientv3.Client, ttl, reuse time.Duration, now time.Time, renew bool) (clientv3.LeaseID, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != 0 && !renew && now.Sub(l.granted) < reuse {
		return l.id, nil
	}
	g, err := c.Grant(ctx, int64((ttl+reuse)/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w: %w", api.ErrUnavailable, err)
	}
	l.id, l.granted = g.ID, now
	return g.ID, nil
}

// leasedPut is a put of a record under a shared lease.
type leasedPut struct {
	l          *sharedLease
	ttl, reuse time.Duration
	key, value string
}

// putLeased writes puts, each under its shared lease, in one
// transaction, retrying once with fresh leases if one is gone (revoked,
// or a restored cluster).
func (s *Store) putLeased(ctx context.Context, now time.Time, puts ...leasedPut) error {
	for try := 0; ; try++ {
		ops := make([]clientv3.Op, 0, len(puts))
		for _, p := range puts {
			lease, err := p.l.get(ctx, s.c, p.ttl, p.reuse, now, try > 0)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(p.key, p.value, clientv3.WithLease(lease)))
		}
		var err error
		if len(ops) == 1 {
			_, err = s.c.Do(ctx, ops[0])
		} else {
			_, err = s.c.Txn(ctx).Then(ops...).Commit()
		}
		if err == nil {
			return nil
		}
		if try > 0 || ctx.Err() != nil {
			return fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
	}
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
	if err := s.putLeased(ctx, now, leasedPut{l: &s.ev, ttl: EventTTL, reuse: eventLeaseReuse, key: eventKey(e.ID), value: string(b)}); err != nil {
		return e, fmt.Errorf("record event: %w", err)
	}
	return e, nil
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
	return listTimed(ctx, s.c, eventsPrefix, f.Since, f.After, f.Limit, f.match)
}

// listTimed reads the records under prefix, whose keys are
// prefix+NewEventID, that match: without after, the newest limit of those
// at or after since; with after, the oldest limit newer than it. It
// returns them oldest first; 0 is no limit.
func listTimed[T any](ctx context.Context, c *clientv3.Client, prefix string, since time.Time, after string, limit int, match func(T) bool) ([]T, error) {
	start, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	if !since.IsZero() {
		start = prefix + fmt.Sprintf("%020d", since.UnixNano())
	}
	if after != "" {
		start = max(start, prefix+after+"\x00")
	}
	forward := after != ""
	out := []T{}
	for start < end {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(eventPage)}
		if !forward {
			opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		}
		resp, err := c.Get(ctx, start, opts...)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w: %w", prefix, api.ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			var e T
			if json.Unmarshal(kv.Value, &e) != nil || !match(e) {
				continue // a corrupt record must not hide the others
			}
			out = append(out, e)
			if limit > 0 && len(out) == limit {
				break
			}
		}
		if !resp.More || len(resp.Kvs) == 0 || (limit > 0 && len(out) == limit) {
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
	return trimOldest(ctx, s.c, eventsPrefix, keep)
}

// trimOldest deletes the first keys under prefix (the oldest, for keys
// that sort by time) beyond the last keep, and returns how many.
func trimOldest(ctx context.Context, c *clientv3.Client, prefix string, keep int) (int, error) {
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w: %w", prefix, api.ErrUnavailable, err)
	}
	extra := resp.Count - int64(max(keep, 0))
	if extra <= 0 {
		return 0, nil
	}
	old, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(extra))
	if err != nil {
		return 0, fmt.Errorf("list old %s: %w: %w", prefix, api.ErrUnavailable, err)
	}
	if len(old.Kvs) == 0 {
		return 0, nil
	}
	first, last := string(old.Kvs[0].Key), string(old.Kvs[len(old.Kvs)-1].Key)
	del, err := c.Delete(ctx, first, clientv3.WithRange(last+"\x00"))
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w: %w", prefix, api.ErrUnavailable, err)
	}
	return int(del.Deleted), nil
}
