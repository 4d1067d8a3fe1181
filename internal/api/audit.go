package api

import "time"

// AuditRecord is one entry of the audit trail (GET /v1/audit): who did
// what to which object, from where, when, and how it ended. Every call of
// the user API that changes something (and every console opened) is
// recorded, refused ones too.
type AuditRecord struct {
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
	User   string    `json:"user,omitempty"`
	Token  string    `json:"token,omitempty"`  // the id of the token used
	Host   string    `json:"host,omitempty"`   // a host that acted (no user)
	Remote string    `json:"remote,omitempty"` // the caller's address
	Action string    `json:"action"`           // e.g. vm.create, vm.stop, user.delete
	Object string    `json:"object"`           // e.g. vm/web1, user/alice
	Result string    `json:"result"`           // ok, denied or failed
	Error  string    `json:"error,omitempty"`  // why, unless ok
}

// Results of audited calls.
const (
	AuditOK     = "ok"
	AuditDenied = "denied" // the caller lacked the right (403)
	AuditFailed = "failed" // any other error
)
