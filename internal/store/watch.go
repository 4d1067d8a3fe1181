package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shoalvm/shoal/internal/api"
)

// Change is one key of Shoal's keyspace as read or watched: Key is below
// Prefix (e.g. "vms/web1"), Value is nil for a deletion, Rev is the
// revision the key was last modified (or deleted) at.
type Change struct {
	Key   string
	Value []byte
	Rev   int64
}

// rangePage is how many keys Range reads per request.
const rangePage = 5000

// Range calls fn for every key under Prefix+sub (e.g. "vms/"), in key
// order, all read at one revision: rev, or the current one when rev is 0.
// It returns that revision. Large ranges are read in pages.
func (s *Store) Range(ctx context.Context, sub string, rev int64, fn func(Change)) (int64, error) {
	start, end := Prefix+sub, clientv3.GetPrefixRangeEnd(Prefix+sub)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(rangePage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.c.Get(ctx, start, opts...)
		if err != nil {
			return 0, fmt.Errorf("read %s: %w: %w", sub, api.ErrUnavailable, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			fn(Change{Key: string(kv.Key[len(Prefix):]), Value: kv.Value, Rev: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Revision returns the store's current revision, read linearizably: every
// write acknowledged before the call is at or below it.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.c.Get(ctx, Prefix+"revision", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read revision: %w: %w", api.ErrUnavailable, err)
	}
	return resp.Header.Revision, nil
}

// VMExists reports whether a VM of that name is recorded, and the store
// revision it was read at.
func (s *Store) VMExists(ctx context.Context, name string) (bool, int64, error) {
	resp, err := s.c.Get(ctx, vmKey(name), clientv3.WithCountOnly())
	if err != nil {
		return false, 0, fmt.Errorf("read %s: %w: %w", vmWhat(name), api.ErrUnavailable, err)
	}
	return resp.Count > 0, resp.Header.Revision, nil
}

// WatchAll follows every change under Prefix from revision from on. It
// calls fn with each batch of changes and the revision up to which the
// caller has now seen everything (the last change's, or that of a
// progress notification). A value sent on progress asks etcd for such a
// notification, so that a caller can learn that nothing it watches changed
// up to the current revision. WatchAll returns when ctx ends, fn fails or
// the watch breaks (e.g. the revision was compacted); the caller then
// reads afresh.
func (s *Store) WatchAll(ctx context.Context, from int64, progress <-chan struct{}, fn func(changes []Change, upTo int64) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.c.Watch(wctx, Prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	var batch []Change
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("watch: %w", ctx.Err())
		case <-progress:
			if err := s.c.RequestProgress(wctx); err != nil {
				return fmt.Errorf("watch progress: %w: %w", api.ErrUnavailable, err)
			}
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch closed: %w", api.ErrUnavailable)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch: %w: %w", api.ErrUnavailable, err)
			}
			if resp.IsProgressNotify() {
				if err := fn(nil, resp.Header.Revision); err != nil {
					return err
				}
				continue
			}
			if len(resp.Events) == 0 {
				continue
			}
			batch = batch[:0]
			for _, ev := range resp.Events {
				c := Change{Key: string(ev.Kv.Key[len(Prefix):]), Rev: ev.Kv.ModRevision}
				if ev.Type == clientv3.EventTypePut {
					c.Value = ev.Kv.Value
				}
				batch = append(batch, c)
			}
			if err := fn(batch, batch[len(batch)-1].Rev); err != nil {
				return err
			}
		}
	}
}

// ConnectTLS dials an etcd cluster: over TLS with tc (see ExternalTLS),
// or in clear text with nil.
func ConnectTLS(ctx context.Context, endpoints []string, tc *tls.Config) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Status(cctx, endpoints[0]); err != nil {
		c.Close()
		hint := ""
		if tc != nil {
			hint = " (over TLS: check that --etcd-cacert signed its certificate, and give --etcd-cert and --etcd-key if it requires client certificates)"
		}
		return nil, fmt.Errorf("etcd at %v does not answer%s: %w", endpoints, hint, err)
	}
	return c, nil
}
