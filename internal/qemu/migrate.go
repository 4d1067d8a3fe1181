package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Live migration. The target is launched with Config.Incoming and the same
// devices as the source; then, in order:
//
//	target.MigrateIncoming(ctx, "tcp:0.0.0.0:4444")  // or "unix:/path"
//	source.Migrate(ctx, "tcp:target:4444", opts)
//	source.WaitMigration(ctx, time.Second / 5)       // or QueryMigrate
//
// On success the source ends "postmigrate" (CPUs stopped, to be killed) and
// the target runs, unless it was launched Paused. QEMU also reports
// progress as MIGRATION ({"status": ...}) and MIGRATION_PASS events on
// Process.QMP().Events(); Migrate turns them on.

// UnlimitedBandwidth, as MigrateOptions.BandwidthBytes, lets a migration
// go as fast as the link and the CPUs allow (1 TiB/s: no cap in effect).
const UnlimitedBandwidth = 1 << 40

// maxDowntimeLimit is QEMU's bound on downtime-limit (2000 s).
const maxDowntimeLimit = 2000 * time.Second

// MigrateOptions tune an outgoing migration. Zero values leave QEMU's
// current setting (by default 300 ms downtime, 128 MiB/s bandwidth).
type MigrateOptions struct {
	// DowntimeLimit is the longest the guest may be stopped for the final
	// copy; rounded down to milliseconds.
	DowntimeLimit time.Duration
	// BandwidthBytes caps the transfer, in bytes per second;
	// UnlimitedBandwidth lifts QEMU's default cap of 128 MiB/s.
	BandwidthBytes int64
	// AutoConverge throttles the guest's CPUs when it dirties memory
	// faster than it can be sent.
	AutoConverge bool
	// PostCopy enables the postcopy-ram capability, so the caller may
	// switch to postcopy with StartPostcopy. The target must enable it
	// too, before MigrateIncoming:
	// target.SetMigrationCapabilities(ctx, map[string]bool{"postcopy-ram": true}).
	PostCopy bool
	// TLSCreds names a tls-creds-x509 object (AddTLSCreds, client
	// endpoint) to encrypt the migration stream with; the target must
	// listen with TLS too (IncomingOptions.TLSCreds). Empty means
	// plain TCP. Unlike the other fields, it is always set, so a
	// migration without TLS after one with it is plain again.
	TLSCreds string
	// TLSHostname is the name the target's certificate must carry;
	// empty means the host of the migration URI (an IP address
	// matches the certificate's IP SANs). Only with TLSCreds.
	TLSHostname string
	// PauseBeforeSwitchover makes the migration stop in state
	// "pre-switchover" once the guest is paused for the final copy,
	// until MigrateContinue: the moment to complete disk mirrors
	// (CompleteMirror), so that the target's disks are exact copies
	// before it takes over.
	PauseBeforeSwitchover bool
}

// MigrationStatus is what query-migrate reports.
type MigrationStatus struct {
	// Status is QEMU's MigrationStatus: "none" (no migration yet),
	// "setup", "active", "postcopy-active", "pre-switchover", "device",
	// "completed", "failed", "cancelling", "cancelled", ...
	Status string

	TotalBytes       int64 // guest RAM to send
	TransferredBytes int64
	RemainingBytes   int64
	DirtyRate        int64   // bytes per second the guest dirties (dirty pages/s × page size)
	Mbps             float64 // current throughput, megabits per second
	DirtySyncCount   int64   // passes over RAM so far

	TotalTime        time.Duration // so far, or of the whole migration once completed
	Downtime         time.Duration // actual downtime; set once completed
	ExpectedDowntime time.Duration // estimate while active
	SetupTime        time.Duration

	CPUThrottlePercent int    // auto-converge's current throttle
	Error              string // QEMU's error-desc when Status is "failed"
}

// Done reports whether the migration has ended: completed, failed or
// cancelled, or none ever started.
func (s MigrationStatus) Done() bool {
	switch s.Status {
	case "none", "completed", "failed", "cancelled":
		return true
	}
	return false
}

// ErrMigrationFailed is wrapped by WaitMigration's error when the
// migration ends other than "completed".
var ErrMigrationFailed = errors.New("migration did not complete")

// MigrateIncoming makes a target launched with Config.Incoming listen on
// uri ("tcp:HOST:PORT", "unix:/path", ...) for the incoming migration.
func (p *Process) MigrateIncoming(ctx context.Context, uri string) error {
	if uri == "" {
		return fmt.Errorf("qemu %s: migrate-incoming: empty uri", p.Dir)
	}
	if err := p.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// SetMigrationCapabilities sets migration capabilities by QEMU name
// ("auto-converge", "postcopy-ram", "events", "xbzrle", ...). They can only
// be changed while no migration runs.
func (p *Process) SetMigrationCapabilities(ctx context.Context, caps map[string]bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	list := make([]capability, 0, len(caps))
	for name, on := range caps {
		list = append(list, capability{name, on})
	}
	if err := p.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// Migrate sets the capabilities and parameters of o and starts migrating
// to uri, where a target waits (MigrateIncoming). It returns once the
// migration has started; follow it with QueryMigrate or WaitMigration.
func (p *Process) Migrate(ctx context.Context, uri string, o MigrateOptions) error {
	if uri == "" {
		return fmt.Errorf("qemu %s: migrate: empty uri", p.Dir)
	}
	if o.DowntimeLimit < 0 || o.DowntimeLimit > maxDowntimeLimit {
		return fmt.Errorf("qemu %s: migrate: downtime limit %s: want 0 to %s", p.Dir, o.DowntimeLimit, maxDowntimeLimit)
	}
	if o.BandwidthBytes < 0 {
		return fmt.Errorf("qemu %s: migrate: bandwidth %d: want 0 or more", p.Dir, o.BandwidthBytes)
	}
	if o.TLSHostname != "" && o.TLSCreds == "" {
		return fmt.Errorf("qemu %s: migrate: tls hostname %q without tls creds", p.Dir, o.TLSHostname)
	}
	if err := p.SetMigrationCapabilities(ctx, map[string]bool{
		"events":                  true,
		"auto-converge":           o.AutoConverge,
		"postcopy-ram":            o.PostCopy,
		"pause-before-switchover": o.PauseBeforeSwitchover,
	}); err != nil {
		return err
	}
	params := map[string]any{"tls-creds": o.TLSCreds, "tls-hostname": o.TLSHostname}
	if o.DowntimeLimit > 0 {
		params["downtime-limit"] = max(o.DowntimeLimit.Milliseconds(), 1)
	}
	if o.BandwidthBytes > 0 {
		params["max-bandwidth"] = o.BandwidthBytes
	}
	if err := p.qmp.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	if err := p.qmp.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	p.log.Info("qemu migration started", "pid", p.Pid, "dir", p.Dir, "uri", uri)
	return nil
}

// StartPostcopy switches a running migration started with
// MigrateOptions.PostCopy to postcopy: the target runs from then on and
// pulls the remaining pages from the source.
func (p *Process) StartPostcopy(ctx context.Context) error {
	return p.simple(ctx, "migrate-start-postcopy")
}

// CancelMigration cancels the outgoing migration; the source keeps (or
// resumes) running. Without a migration in progress it does nothing.
func (p *Process) CancelMigration(ctx context.Context) error {
	return p.simple(ctx, "migrate_cancel")
}

type queryMigrate struct {
	Status           string `json:"status"`
	TotalTime        int64  `json:"total-time"`
	Downtime         int64  `json:"downtime"`
	ExpectedDowntime int64  `json:"expected-downtime"`
	SetupTime        int64  `json:"setup-time"`
	CPUThrottle      int    `json:"cpu-throttle-percentage"`
	ErrorDesc        string `json:"error-desc"`
	RAM              *struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		DirtyPagesRate int64   `json:"dirty-pages-rate"`
		PageSize       int64   `json:"page-size"`
		Mbps           float64 `json:"mbps"`
		DirtySyncCount int64   `json:"dirty-sync-count"`
	} `json:"ram"`
}

// QueryMigrate returns the state of this QEMU's migration (outgoing on a
// source; a target reports little beyond Status).
func (p *Process) QueryMigrate(ctx context.Context) (MigrationStatus, error) {
	var q queryMigrate
	if err := p.qmp.Execute(ctx, "query-migrate", nil, &q); err != nil {
		return MigrationStatus{}, fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	s := MigrationStatus{
		Status:             q.Status,
		TotalTime:          ms(q.TotalTime),
		Downtime:           ms(q.Downtime),
		ExpectedDowntime:   ms(q.ExpectedDowntime),
		SetupTime:          ms(q.SetupTime),
		CPUThrottlePercent: q.CPUThrottle,
		Error:              q.ErrorDesc,
	}
	if s.Status == "" {
		s.Status = "none" // QEMU returns {} before any migration
	}
	if r := q.RAM; r != nil {
		s.TotalBytes = r.Total
		s.TransferredBytes = r.Transferred
		s.RemainingBytes = r.Remaining
		s.DirtyRate = r.DirtyPagesRate * r.PageSize
		s.Mbps = r.Mbps
		s.DirtySyncCount = r.DirtySyncCount
	}
	return s, nil
}

// WaitMigration polls QueryMigrate every interval until the migration has
// ended (MigrationStatus.Done) and returns the last status. The error
// wraps ErrMigrationFailed if it ended other than "completed", and is
// ctx's error if ctx ends first.
func (p *Process) WaitMigration(ctx context.Context, interval time.Duration) (MigrationStatus, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s, err := p.QueryMigrate(ctx)
		if err != nil {
			return s, err
		}
		if s.Done() {
			if s.Status != "completed" {
				err = fmt.Errorf("qemu %s: %w: %s", p.Dir, ErrMigrationFailed, s.Status)
				if s.Error != "" {
					err = fmt.Errorf("%w: %s", err, s.Error)
				}
			}
			return s, err
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("qemu %s: wait for migration (%s): %w", p.Dir, s.Status, ctx.Err())
		case <-t.C:
		case <-p.h.exited:
			return s, fmt.Errorf("qemu %s: wait for migration: %w: pid %d exited", p.Dir, ErrNotRunning, p.Pid)
		}
	}
}

// StatePreSwitchover is the migration status in which a migration started
// with MigrateOptions.PauseBeforeSwitchover waits for MigrateContinue.
const StatePreSwitchover = "pre-switchover"

// IncomingOptions set up a migration target before it listens.
type IncomingOptions struct {
	// TLSCreds names a tls-creds-x509 object (AddTLSCreds, server
	// endpoint): the target then accepts only a TLS stream from a
	// source whose certificate chains to its CA. Empty means plain.
	TLSCreds string
	// TLSAuthz names an authz object (AddAuthz) the source's certificate
	// must satisfy, beyond chaining to the CA; only with TLSCreds. A
	// target launched for one migration needs no way to unset it.
	TLSAuthz string
	// PostCopy enables postcopy-ram, for a source that migrates with
	// MigrateOptions.PostCopy.
	PostCopy bool
	// LateBlockActivate keeps the disks inactive until the guest is
	// resumed (Resume), rather than once the stream is in: another
	// process (ServeNBD) may write them until then.
	LateBlockActivate bool
}

// PrepareIncoming sets the capabilities and parameters of o on a target
// launched with Config.Incoming, then makes it listen on uri, like
// MigrateIncoming. It returns the URI to give the source's Migrate: for
// "tcp:HOST:0" QEMU picks a free port, read back from query-migrate, and
// the result is "tcp:HOST:PORT" with the host QEMU reports (so a wildcard
// such as 0.0.0.0 stays a wildcard: the caller substitutes its address).
// Other URIs are returned as given.
func (p *Process) PrepareIncoming(ctx context.Context, uri string, o IncomingOptions) (string, error) {
	if uri == "" {
		return "", fmt.Errorf("qemu %s: migrate-incoming: empty uri", p.Dir)
	}
	if err := p.setIncoming(ctx, o); err != nil {
		return "", err
	}
	if err := p.MigrateIncoming(ctx, uri); err != nil {
		return "", err
	}
	if !strings.HasPrefix(uri, "tcp:") {
		return uri, nil
	}
	return p.listenURI(ctx, uri)
}

// setIncoming sets the capabilities and parameters of o on a target.
func (p *Process) setIncoming(ctx context.Context, o IncomingOptions) error {
	if o.TLSAuthz != "" && o.TLSCreds == "" {
		return fmt.Errorf("qemu %s: migrate-incoming: tls authz %q without tls creds", p.Dir, o.TLSAuthz)
	}
	if err := p.SetMigrationCapabilities(ctx, map[string]bool{
		"events":              true,
		"postcopy-ram":        o.PostCopy,
		"late-block-activate": o.LateBlockActivate,
	}); err != nil {
		return err
	}
	params := map[string]any{"tls-creds": o.TLSCreds}
	if o.TLSAuthz != "" {
		// Only then: QEMU 7.2 takes an empty tls-authz for the name of an
		// authz object, and turns every source away.
		params["tls-authz"] = o.TLSAuthz
	}
	if err := p.qmp.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// listenURI reads back the address an incoming tcp migration listens on.
// QEMU 7.2 reports it before any source connects as
// {"socket-address": [{"type": "inet", "host": ..., "port": "41234"}]}.
func (p *Process) listenURI(ctx context.Context, uri string) (string, error) {
	var q struct {
		SocketAddress []struct {
			Type string `json:"type"`
			Host string `json:"host"`
			Port string `json:"port"`
		} `json:"socket-address"`
	}
	if err := p.qmp.Execute(ctx, "query-migrate", nil, &q); err != nil {
		return "", fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	wantHost, _, _ := net.SplitHostPort(strings.TrimPrefix(uri, "tcp:"))
	got := ""
	for _, a := range q.SocketAddress {
		if a.Type != "inet" || a.Port == "" || a.Port == "0" {
			continue
		}
		u := "tcp:" + net.JoinHostPort(a.Host, a.Port)
		if got == "" || a.Host == wantHost {
			got = u
		}
		if a.Host == wantHost {
			break
		}
	}
	if got == "" {
		return "", fmt.Errorf("qemu %s: migrate-incoming %s: query-migrate reports no listening tcp address", p.Dir, uri)
	}
	return got, nil
}

// MigrateContinue lets a migration paused in state (StatePreSwitchover,
// see MigrateOptions.PauseBeforeSwitchover) go on to switch over.
func (p *Process) MigrateContinue(ctx context.Context, state string) error {
	if state == "" {
		return fmt.Errorf("qemu %s: migrate-continue: empty state", p.Dir)
	}
	if err := p.qmp.Execute(ctx, "migrate-continue", map[string]any{"state": state}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// AnnounceSelf makes QEMU announce the guest's NICs (a broadcast RARP
// from each MAC, plus, for virtio-net guests that support it, a request
// to the guest to announce itself) so that switches learn the MACs' new
// port. QEMU sends the first round during the command itself; "initial"
// is only the delay before the second, so the five rounds go out at 0,
// 50, 150, 250 and 350 ms. Use it on the target once the guest runs.
func (p *Process) AnnounceSelf(ctx context.Context) error {
	if err := p.qmp.Execute(ctx, "announce-self", map[string]any{
		"initial": 50, "max": 100, "rounds": 5, "step": 50,
	}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}

// maxAnnounceInitial is QEMU's bound on announce-initial (100 s).
const maxAnnounceInitial = 100 * time.Second

// SetAnnounce sets the delay between the first and second rounds of the
// announcement QEMU makes by itself when an incoming migration completes
// (QEMU's default is 50 ms; the first round goes out at once, even if the
// target stays paused); rounded down to milliseconds. Set it on the
// target before PrepareIncoming.
func (p *Process) SetAnnounce(ctx context.Context, initial time.Duration) error {
	if initial < 0 || initial > maxAnnounceInitial {
		return fmt.Errorf("qemu %s: announce initial %s: want 0 to %s", p.Dir, initial, maxAnnounceInitial)
	}
	if err := p.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{
		"announce-initial": initial.Milliseconds(),
	}, nil); err != nil {
		return fmt.Errorf("qemu %s: %w", p.Dir, err)
	}
	return nil
}
