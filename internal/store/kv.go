package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shoalvm/shoal/internal/api"
)

// Prefix is the root of every key Shoal writes.
const Prefix = "/shoal/v1/"

func key(parts ...string) string { return Prefix + strings.Join(parts, "/") }

// get reads one JSON value; a missing key is api.ErrNotFound.
func get[T any](ctx context.Context, c *clientv3.Client, k, what string) (T, int64, error) {
	var v T
	resp, err := c.Get(ctx, k)
	if err != nil {
		return v, 0, fmt.Errorf("read %s: %w: %w", what, api.ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return v, 0, api.Errorf(api.ErrNotFound, "%s not found", what)
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		return v, 0, fmt.Errorf("decode %s: %w", what, err)
	}
	setRev(&v, resp.Kvs[0].ModRevision)
	return v, resp.Kvs[0].ModRevision, nil
}

// list reads every JSON value under a prefix, in key order.
func list[T any](ctx context.Context, c *clientv3.Client, prefix string) ([]T, int64, error) {
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w: %w", prefix, api.ErrUnavailable, err)
	}
	out := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			continue // one corrupt record must not hide all the others
		}
		setRev(&v, kv.ModRevision)
		out = append(out, v)
	}
	return out, resp.Header.Revision, nil
}

func put(ctx context.Context, c *clientv3.Client, k string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", k, err)
	}
	if _, err := c.Put(ctx, k, string(b)); err != nil {
		return fmt.Errorf("write %s: %w: %w", k, api.ErrUnavailable, err)
	}
	return nil
}

// create writes v at k only if k does not exist; otherwise api.ErrConflict.
func create(ctx context.Context, c *clientv3.Client, k, what string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("create %s: %w: %w", what, api.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return api.Errorf(api.ErrConflict, "%s already exists", what)
	}
	return nil
}

// setRev tells a value that records its revision (api.VMSpec) what it is.
func setRev(v any, rev int64) {
	if r, ok := v.(interface{ SetRev(int64) }); ok {
		r.SetRev(rev)
	}
}

// update applies fn to the value at k and writes it back if nobody changed
// it meanwhile, retrying on contention. fn may return an error to abort.
func update[T any](ctx context.Context, c *clientv3.Client, k, what string, fn func(*T) error) (T, error) {
	for {
		v, rev, err := get[T](ctx, c, k, what)
		if err != nil {
			return v, err
		}
		if err := fn(&v); err != nil {
			return v, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return v, fmt.Errorf("encode %s: %w", what, err)
		}
		resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
			Then(clientv3.OpPut(k, string(b))).Commit()
		if err != nil {
			return v, fmt.Errorf("update %s: %w: %w", what, api.ErrUnavailable, err)
		}
		if resp.Succeeded {
			setRev(&v, resp.Header.Revision)
			return v, nil
		}
		if err := ctx.Err(); err != nil {
			return v, fmt.Errorf("update %s: %w", what, err)
		}
	}
}
