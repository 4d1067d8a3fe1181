package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/shoalvm/shoal/internal/api"
)

// The audit trail lives under a prefix of its own (audit/), which
// placement and failover never read: the servers' placement cache loads
// other prefixes only, and its watch of the keyspace passes over these
// keys. (Outside Prefix, that watch would not see the revisions they
// make, and a create would wait for a progress notification to learn
// that it is current: 20 ms.) Each record is one key auditPrefix+ID (ids
// sort by time, see NewEventID) under a lease shared by the records of
// an hour: etcd drops a record AuditTTL after it was written (give or
// take the hour), and TrimAudit keeps the last AuditKept.
const (
	auditPrefix = Prefix + "audit/"
	// AuditTTL is how long the audit trail is kept.
	AuditTTL = 30 * 24 * time.Hour
	// AuditKept is how many records are kept at most; a record's fields
	// are bounded (see audit.Bound), so this bounds its size too.
	AuditKept       = 20000
	auditLeaseReuse = time.Hour
)

// AppendAudit records audit records (their ids and times set) in one
// transaction.
func (s *Store) AppendAudit(ctx context.Context, recs []api.AuditRecord) error {
	puts := make([]leasedPut, 0, len(recs))
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode audit record: %w", err)
		}
		puts = append(puts, leasedPut{l: &s.audit, ttl: AuditTTL, reuse: auditLeaseReuse, key: auditPrefix + r.ID, value: string(b)})
	}
	if len(puts) == 0 {
		return nil
	}
	if err := s.putLeased(ctx, time.Now(), puts...); err != nil {
		return fmt.Errorf("record the audit trail: %w", err)
	}
	return nil
}

// AuditFilter selects audit records: without After, the newest Limit
// (0: all) at or after Since that match; with After (a record's id), the
// oldest Limit newer than it.
type AuditFilter struct {
	Since time.Time
	After string
	Limit int
	Match func(api.AuditRecord) bool // nil: all
}

// ListAudit returns the audit records that match f, oldest first.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]api.AuditRecord, error) {
	match := f.Match
	if match == nil {
		match = func(api.AuditRecord) bool { return true }
	}
	return listTimed(ctx, s.c, auditPrefix, f.Since, f.After, f.Limit, match)
}

// TrimAudit deletes the oldest audit records beyond the last keep.
func (s *Store) TrimAudit(ctx context.Context, keep int) (int, error) {
	return trimOldest(ctx, s.c, auditPrefix, keep)
}
