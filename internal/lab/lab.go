// Package lab builds a multi-host Shoal lab on one machine: each host is a
// network namespace (host1..hostN) running its own agent, cabled to a
// "physical switch" bridge in namespace ctl, where the server runs; a
// client namespace sits on the same switch, a shared directory stands
// in for NFS, and a storage server in namespace storage serves the iSCSI
// pool san. Nothing is made in the root network namespace.
//
// Everything the lab makes is recorded in DIR/state.json before it is
// made, so Down removes a half-made lab as well as a whole one. Processes
// are only ever ended when they are provably the lab's: a recorded pid
// whose command line still names the lab dir, a QEMU whose command line
// names it, or a process inside a namespace the lab made.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Options says what lab Up builds.
type Options struct {
	Dir     string // default DefaultDir
	Hosts   int    // 1..MaxHosts
	Servers int    // server replicas, 1..MaxServers (0 means 1); more than 1 needs a ReplicaControl
	Binary  string // the shoal binary (for the default Control)
	Accel   string // the agents' accelerator; "" means tcg
	// UserConfig is where the CLI settings for the lab are copied (any
	// file there is kept as UserConfig+".pre-lab" and put back by Down);
	// "" copies nothing.
	UserConfig string
	// Control starts the Shoal processes; nil means Shoal{Binary, Accel}.
	Control Control
	// ReadyTimeout bounds each wait: the server, then the hosts (default
	// 60 s).
	ReadyTimeout time.Duration

	failAt string // tests: fail Up at this step
}

// backupSuffix names the saved CLI settings while a lab runs.
const backupSuffix = ".pre-lab"

// Up builds a lab. On failure the returned state says what was made; Down
// removes it.
func Up(ctx context.Context, log *slog.Logger, o Options) (*State, error) {
	dir, err := cleanDir(o.Dir)
	if err != nil {
		return nil, err
	}
	if o.Hosts < 1 || o.Hosts > MaxHosts {
		return nil, fmt.Errorf("a lab has 1 to %d hosts, not %d", MaxHosts, o.Hosts)
	}
	if o.Servers < 0 || o.Servers > MaxServers {
		return nil, fmt.Errorf("a lab has 1 to %d servers, not %d", MaxServers, o.Servers)
	}
	control := o.Control
	if control == nil {
		if o.Binary == "" {
			return nil, errors.New("lab up: no shoal binary given")
		}
		control = Shoal{Binary: o.Binary, Accel: o.Accel}
	}
	if _, ok := control.(ReplicaControl); o.Servers > 1 && !ok {
		return nil, errors.New("lab up: this control runs one server only")
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	l := Layout{dir}
	if err := checkFree(l, o); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab dir: %w", err)
	}
	lk, err := lock(l)
	if err != nil {
		return nil, err
	}
	defer lk.Close()
	if _, err := os.Stat(l.State()); err == nil { // another up won the race
		return nil, fmt.Errorf("a lab already runs in %s: shoal lab down --dir %s first", dir, dir)
	}
	s := &State{Dir: dir, Binary: o.Binary, Hosts: o.Hosts, Created: time.Now().UTC()}
	if o.Servers > 1 {
		s.Servers = o.Servers
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	if err := build(ctx, log, s, control, o); err != nil {
		return s, fmt.Errorf("lab up: %w; logs are in %s; remove what was made with 'shoal lab down --dir %s'", err, l.Logs(), dir)
	}
	return s, nil
}

// checkFree refuses to build over anything: a lab in the dir, a dir with
// files, namespaces of the lab's names, a saved CLI settings file.
func checkFree(l Layout, o Options) error {
	if _, err := os.Stat(l.State()); err == nil {
		return fmt.Errorf("a lab already runs in %s: shoal lab down --dir %s first", l.Dir, l.Dir)
	}
	entries, err := os.ReadDir(l.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab dir: %w", err)
	}
	for _, e := range entries {
		if e.Name() != filepath.Base(l.Lock()) {
			return fmt.Errorf("%s is not empty and holds no lab: give 'shoal lab up' a new or empty --dir (down removes it)", l.Dir)
		}
	}
	names := (&State{Hosts: o.Hosts, Servers: o.Servers}).Members()
	for _, n := range names {
		if nsExists(n) {
			return fmt.Errorf("network namespace %s already exists: another lab runs (remove it with 'shoal lab down --dir ITS_DIR'), or something else uses the name; this lab needs the namespaces %s", n, strings.Join(names, ", "))
		}
	}
	if o.UserConfig != "" {
		if _, err := os.Stat(o.UserConfig + backupSuffix); err == nil {
			return fmt.Errorf("%s exists (saved by an earlier lab?): put it back as %s or remove it, then retry", o.UserConfig+backupSuffix, o.UserConfig)
		}
	}
	return nil
}

// build makes the lab step by step, recording each step's effect first.
func build(ctx context.Context, log *slog.Logger, s *State, control Control, o Options) error {
	l := s.Layout()
	step := func(name string) error {
		if o.failAt == name {
			return fmt.Errorf("simulated failure at step %s", name)
		}
		return ctx.Err()
	}
	dirs := []string{l.Ctl(), l.Shared(), l.Logs(), l.Storage(), l.SAN()}
	for k := 2; k <= s.servers(); k++ {
		dirs = append(dirs, l.ServerDir(k))
	}
	for k := 1; k <= s.Hosts; k++ {
		dirs = append(dirs, l.Host(k))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	log.Info("lab: making namespaces and the switch", "hosts", s.Hosts)
	for _, m := range s.Members() {
		if err := step("ns:" + m); err != nil {
			return err
		}
		if err := addNS(ctx, s, m); err != nil {
			return err
		}
	}
	if err := step("switch"); err != nil {
		return err
	}
	if err := makeSwitch(ctx); err != nil {
		return err
	}
	for _, m := range s.Members()[1:] {
		if err := step("cable:" + m); err != nil {
			return err
		}
		addr := ""
		if _, replica := replicaNS(m); m == ClientNS || m == StorageNS || replica {
			addr = cidr(m)
		}
		if err := cable(ctx, m, addr); err != nil {
			return err
		}
	}

	log.Info("lab: starting the server", "ns", CtlNS, "log", l.Log("server"))
	if err := step("server"); err != nil {
		return err
	}
	argv := control.ServerArgv(l)
	if s.servers() > 1 {
		argv = control.(ReplicaControl).ReplicaArgv(l, 1, "")
	}
	server, err := startProc(s, "server", CtlNS, argv)
	if err != nil {
		return err
	}
	wctx, cancel := watch(ctx, o.ReadyTimeout, []Proc{server})
	err = control.WaitServer(wctx, l)
	cancel()
	if err != nil {
		return err
	}
	if err := step("config"); err != nil {
		return err
	}
	if err := installUserConfig(s, o.UserConfig); err != nil {
		return err
	}

	replicas, err := startReplicas(ctx, log, s, control, o, step)
	if err != nil {
		return err
	}

	log.Info("lab: starting the agents")
	procs := append([]Proc{server}, replicas...)
	for k := 1; k <= s.Hosts; k++ {
		if err := step("agent:" + HostName(k)); err != nil {
			return err
		}
		token, err := control.JoinToken(ctx, l) // one-time: one per host
		if err != nil {
			return fmt.Errorf("join token for %s: %w", HostName(k), err)
		}
		p, err := startProc(s, hostProc(k), HostName(k), control.AgentArgv(l, k, token))
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	log.Info("lab: starting the storage server", "ns", StorageNS)
	if err := step("storage"); err != nil {
		return err
	}
	token, err := control.JoinToken(ctx, l)
	if err != nil {
		return fmt.Errorf("join token for the storage server: %w", err)
	}
	p, err := startProc(s, storageProc, StorageNS, control.StorageArgv(l, token))
	if err != nil {
		return err
	}
	procs = append(procs, p)
	log.Info("lab: waiting for the hosts to join")
	if err := step("hosts"); err != nil {
		return err
	}
	wctx, cancel = watch(ctx, o.ReadyTimeout, procs)
	err = control.WaitHosts(wctx, l, s.Hosts)
	cancel()
	if err != nil {
		return err
	}
	log.Info("lab: registering the storage server's pool", "pool", StoragePool)
	if err := step("pool"); err != nil {
		return err
	}
	started := time.Now()
	wctx, cancel = watch(ctx, o.ReadyTimeout, procs)
	err = control.StoragePool(wctx, l)
	cancel()
	if err != nil {
		return err
	}
	log.Info("lab: the storage server serves its pool", "pool", StoragePool, "took", time.Since(started).Round(time.Millisecond))
	s.Ready = true
	return s.save()
}

// startProc records and starts one of the lab's processes.
func startProc(s *State, name, ns string, argv []string) (Proc, error) {
	p := Proc{Name: name, NS: ns, Argv: argv, Log: s.Layout().Log(name)}
	s.setProc(p)
	if err := s.save(); err != nil {
		return p, err
	}
	pid, err := startDetached(ns, argv, p.Log, labEnv(s.Layout()))
	if err != nil {
		return p, err
	}
	p.Pid = pid
	s.setProc(p)
	return p, s.save()
}

// watch bounds a wait by d and ends it early, saying why, if one of procs
// exits.
func watch(ctx context.Context, d time.Duration, procs []Proc) (context.Context, context.CancelFunc) {
	tctx, cancelT := context.WithTimeoutCause(ctx, d, fmt.Errorf("not ready after %s", d))
	wctx, cancel := context.WithCancelCause(tctx)
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				for _, p := range procs {
					if !alive(p.Pid) {
						cancel(fmt.Errorf("%s exited (%s says: %s)", p.Name, p.Log, logTail(p.Log)))
						return
					}
				}
			}
		}
	}()
	return wctx, func() { cancel(nil); cancelT() }
}

// installUserConfig copies the lab's CLI settings to path, keeping the
// file it replaces.
func installUserConfig(s *State, path string) error {
	l := s.Layout()
	if path == "" || filepath.Clean(path) == l.Config() {
		return nil
	}
	b, err := os.ReadFile(l.Config())
	if err != nil {
		return fmt.Errorf("the server wrote no CLI settings: %w", err)
	}
	s.UserConfig = path
	if _, err := os.Stat(path); err == nil {
		s.UserConfigBackup = path + backupSuffix
	}
	if err := s.save(); err != nil {
		return err
	}
	if s.UserConfigBackup != "" {
		if err := os.Rename(path, s.UserConfigBackup); err != nil {
			return fmt.Errorf("save the CLI settings: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("CLI settings: %w", err)
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("CLI settings: %w", err)
	}
	return os.Rename(tmp, path)
}

// restoreUserConfig undoes installUserConfig, unless the user has changed
// the settings since.
func restoreUserConfig(log *slog.Logger, s *State) error {
	if s.UserConfig == "" {
		return nil
	}
	cur, err := os.ReadFile(s.UserConfig)
	missing := errors.Is(err, os.ErrNotExist)
	var c struct{ Server string }
	isLab := err == nil && json.Unmarshal(cur, &c) == nil && c.Server == s.Layout().SocketURL()
	if s.UserConfigBackup != "" {
		if _, err := os.Stat(s.UserConfigBackup); err != nil {
			return nil // never moved away: the user's file is still in place
		}
		if !isLab && !missing {
			log.Warn("lab: the CLI settings changed since lab up; left as they are", "file", s.UserConfig, "earlier", s.UserConfigBackup)
			return nil
		}
		return os.Rename(s.UserConfigBackup, s.UserConfig)
	}
	if isLab {
		return os.Remove(s.UserConfig)
	}
	return nil
}

// Down removes the lab in dir: its processes, VMs, namespaces (and with
// them every link), the CLI settings it installed, and dir. No lab is fine.
func Down(ctx context.Context, log *slog.Logger, dir string) error {
	dir, err := cleanDir(dir)
	if err != nil {
		return err
	}
	l := Layout{dir}
	if _, err := os.Stat(l.State()); errors.Is(err, os.ErrNotExist) {
		removeIfBare(l)
		log.Info("lab: no lab here; nothing to do", "dir", dir)
		return nil
	}
	lk, err := lock(l)
	if err != nil {
		return err
	}
	defer lk.Close()
	s, err := Load(dir)
	if errors.Is(err, ErrNoLab) {
		return nil
	}
	if err != nil {
		return err
	}
	log.Info("lab: stopping processes and VMs")
	errs := []error{stopAll(log, s)}
	log.Info("lab: deleting namespaces")
	for i := len(s.Namespaces) - 1; i >= 0; i-- {
		errs = append(errs, delNS(ctx, log, s.Namespaces[i]))
	}
	errs = append(errs, restoreUserConfig(log, s))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab down: %w; the lab's record stays in %s: fix that and run 'shoal lab down --dir %s' again", err, l.State(), dir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("lab down: remove %s: %w", dir, err)
	}
	return nil
}

// removeIfBare removes a lab dir that holds nothing but the lock (an up
// that stopped before writing its state).
func removeIfBare(l Layout) {
	entries, err := os.ReadDir(l.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() != filepath.Base(l.Lock()) {
			return
		}
	}
	_ = os.Remove(l.Lock())
	_ = os.Remove(l.Dir)
}

// stopAll ends every process of the lab: SIGTERM, SIGKILL after 5 s. It
// looks again after each round, in case a dying agent started something.
func stopAll(log *slog.Logger, s *State) error {
	match := labMatcher(s)
	for round := 0; round < 3; round++ {
		vs := find(match)
		if len(vs) == 0 {
			return nil
		}
		err := terminate(log, vs, 5*time.Second)
		release(vs)
		if err != nil {
			return err
		}
	}
	if vs := find(match); len(vs) > 0 {
		release(vs)
		return errors.New("the lab's processes keep coming back")
	}
	return nil
}

// labMatcher claims the recorded processes still naming the lab dir, the
// QEMUs naming it, and whatever runs in the lab's namespaces.
func labMatcher(s *State) matcher {
	recorded := map[int]string{}
	for _, p := range s.Procs {
		if p.Pid > 0 {
			recorded[p.Pid] = p.Name
		}
	}
	nss := nsSet(s.Namespaces)
	return func(p procInfo) string {
		if name, ok := recorded[p.pid]; ok && mentions(p.argv, s.Dir) {
			return "the lab's " + name
		}
		if isQEMU(p.argv) && mentions(p.argv, s.Dir) {
			return "a VM of the lab"
		}
		if name, ok := nss[[2]uint64{p.dev, p.ino}]; ok {
			return "runs in the lab's namespace " + name
		}
		return ""
	}
}

// nsSet maps the identity of each namespace that is still the lab's to its
// name.
func nsSet(nss []Namespace) map[[2]uint64]string {
	m := map[[2]uint64]string{}
	for _, ns := range nss {
		if !ours(ns) {
			continue
		}
		if dev, ino, err := nsID(ns.Name); err == nil {
			m[[2]uint64{dev, ino}] = ns.Name
		}
	}
	return m
}
