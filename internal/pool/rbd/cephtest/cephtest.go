// Package cephtest starts a small real Ceph cluster from Debian's packages
// (ceph-mon, ceph-mgr, ceph-osd, ceph-common) for tests and the lab: one
// monitor, one manager and one OSD (bluestore on a sparse file), one
// replica, cephx on, inside a network namespace it makes and a directory
// it owns. It gives back what a client needs: the monitors, an RBD pool,
// a client user limited to that pool with its key, and the admin's
// keyring (for fencing). Stop ends exactly the processes it started and
// removes the namespaces and the directory.
//
// A cluster takes seconds to start, so a package's tests share one,
// started in TestMain.
package cephtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say where and how a cluster runs; the zero value is fine.
type Options struct {
	// Dir is the cluster's own directory, made by Start and removed by
	// Stop; it must not exist. "" = a new directory under os.TempDir.
	Dir string
	// Addr is the daemons' public address. "" = 127.0.0.1, reachable
	// only inside the namespace. Any other address goes on a bridge
	// (Addr/24) in the namespace, and AddHost plugs client namespaces
	// into it.
	Addr string
	// OSDBytes is the size of the OSD's sparse file; 0 = 8 GiB.
	OSDBytes int64
	Log      *slog.Logger
}

// Cluster is a running cluster.
type Cluster struct {
	Netns    string   // the namespace the daemons run in
	Dir      string   // the cluster's directory
	Addr     string   // the monitor's (and every daemon's) address
	Monitors []string // "ADDR:3300" (msgr2), what a client is given
	Pool     string   // an RBD pool, one replica
	User     string   // a client user ("shoal" = client.shoal) with the rbd profile on Pool
	Key      string   // its cephx key (base64)
	// UserKeyring and UserConf are the user's keyring (0600) and a
	// ceph.conf that names the monitors and that keyring.
	UserKeyring, UserConf string
	// Conf and AdminKeyring are the cluster's ceph.conf and the
	// keyring of client.admin (0600): what fencing needs.
	Conf, AdminKeyring string
	// Started is how long Start took, until the cluster was healthy.
	Started time.Duration

	log   *slog.Logger
	mu    sync.Mutex
	procs []*proc
	hosts []string // client namespaces made by AddHost
}

// proc is a daemon the cluster started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// Start makes and starts a cluster and returns once it is healthy
// (HEALTH_OK: the pool's placement groups are active and clean). On
// failure, everything it made is removed again.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	t0 := time.Now()
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1"
	}
	if net.ParseIP(o.Addr).To4() == nil {
		return nil, fmt.Errorf("cephtest: %q is not an IPv4 address", o.Addr)
	}
	if o.OSDBytes == 0 {
		o.OSDBytes = 8 << 30
	}
	for _, bin := range []string{"ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "monmaptool", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("cephtest: %s not found: 'make deps' installs Debian's ceph-mon, ceph-mgr, ceph-osd and ceph-common", bin)
		}
	}
	tag, err := randomHex(4)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Netns: "ceph-" + tag, Addr: o.Addr, Pool: Pool, User: User, log: o.Log,
		Monitors: []string{fmt.Sprintf("%s:%d", o.Addr, monPort)}}
	if o.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "cephtest-"); err != nil {
			return nil, err
		}
	} else {
		if err := os.Mkdir(o.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("cephtest: %w", err)
		}
		c.Dir = o.Dir
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("cephtest: %w%s", err, c.logTail()), c.Stop(context.WithoutCancel(ctx)))
			c = nil
		}
	}()
	if err := c.makeNetns(ctx); err != nil {
		return c, err
	}
	osdUUID, err := c.prepare(o)
	if err != nil {
		return c, err
	}
	// The OSD's file system is made while the monitor starts.
	osdMkfs := make(chan error, 1)
	go func() {
		osdMkfs <- c.run(ctx, "ceph-osd", "-c", c.Conf, "--no-mon-config", "-i", osdID, "--mkfs", "--osd-uuid", osdUUID)
	}()
	if err := c.startMon(ctx); err != nil {
		<-osdMkfs
		return c, err
	}
	c.log.Debug("cephtest: monitor started", "after", time.Since(t0))
	if err := c.start("mgr", "ceph-mgr", "-f", "-c", c.Conf, "-i", mgrID); err != nil {
		<-osdMkfs
		return c, err
	}
	// The OSD joins while the pool is made (each ceph command is about
	// half a second of Python).
	osdUp := make(chan error, 1)
	go func() {
		_, err := c.Admin(ctx, "osd", "new", osdUUID, osdID)
		if mkfsErr := <-osdMkfs; err == nil {
			err = mkfsErr
		}
		if err == nil {
			err = c.start("osd", "ceph-osd", "-f", "-c", c.Conf, "-i", osdID)
			c.log.Debug("cephtest: OSD started", "after", time.Since(t0))
		}
		osdUp <- err
	}()
	err = c.admin(ctx,
		[]string{"health", "mute", "MGR_MODULE_ERROR", "--sticky"}, // the always-on modules left out
		[]string{"osd", "pool", "create", Pool, "8", "8", "replicated", "--autoscale-mode=off"},
		[]string{"osd", "pool", "application", "enable", Pool, "rbd"})
	c.log.Debug("cephtest: pool made", "after", time.Since(t0))
	if osdErr := <-osdUp; err == nil {
		err = osdErr
	}
	if err != nil {
		return c, err
	}
	if err := c.waitHealthy(ctx); err != nil {
		return c, err
	}
	c.Started = time.Since(t0)
	c.log.Info("cephtest: cluster ready", "ns", c.Netns, "dir", c.Dir, "took", c.Started)
	return c, nil
}

// prepare writes the configuration and the keyrings, and returns the
// OSD's uuid.
func (c *Cluster) prepare(o Options) (string, error) {
	for _, d := range []string{"run", "log", "crash", "mon", "mgr", "osd/data"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return "", err
		}
	}
	fsid, err := uuid()
	if err != nil {
		return "", err
	}
	osdUUID, err := uuid()
	if err != nil {
		return "", err
	}
	keys := map[string]string{}
	for _, n := range []string{"mon.", "client.admin", "mgr." + mgrID, "osd." + osdID, "client." + User} {
		if keys[n], err = newKey(); err != nil {
			return "", err
		}
	}
	c.Key = keys["client."+User]
	all := "allow *"
	admin := entity{"client.admin", keys["client.admin"], [][2]string{{"mon", all}, {"osd", all}, {"mgr", all}, {"mds", all}}}
	mgr := entity{"mgr." + mgrID, keys["mgr."+mgrID], [][2]string{{"mon", "allow profile mgr"}, {"osd", all}, {"mds", all}}}
	osd := entity{"osd." + osdID, keys["osd."+osdID], [][2]string{{"mon", "allow profile osd"}, {"mgr", "allow profile osd"}, {"osd", all}}}
	user := entity{"client." + User, c.Key, [][2]string{{"mon", "profile rbd"}, {"osd", "profile rbd pool=" + Pool}, {"mgr", "profile rbd pool=" + Pool}}}
	c.Conf = filepath.Join(c.Dir, "ceph.conf")
	c.AdminKeyring = filepath.Join(c.Dir, "client.admin.keyring")
	c.UserKeyring = filepath.Join(c.Dir, "client."+User+".keyring")
	c.UserConf = filepath.Join(c.Dir, "client."+User+".conf")
	// The monitor's keyring seeds its key database with every entity.
	files := map[string]string{
		filepath.Join(c.Dir, "mon."+monID+".keyring"): keyring(entity{"mon.", keys["mon."], [][2]string{{"mon", all}}}, admin, mgr, osd, user),
		c.AdminKeyring: keyring(admin),
		filepath.Join(c.Dir, "mgr."+mgrID+".keyring"): keyring(mgr),
		filepath.Join(c.Dir, "osd."+osdID+".keyring"): keyring(osd),
		c.UserKeyring: keyring(user),
		c.Conf:        config(c.Dir, fsid, c.Addr, o.OSDBytes),
		c.UserConf:    clientConfig(c.Addr, c.UserKeyring),
	}
	for path, data := range files {
		if err := writeSecret(path, data); err != nil {
			return "", err
		}
	}
	return osdUUID, nil
}

// startMon makes the monitor's store and starts it.
func (c *Cluster) startMon(ctx context.Context) error {
	monmap := filepath.Join(c.Dir, "monmap")
	addrs := fmt.Sprintf("[v2:%s:%d,v1:%s:6789]", c.Addr, monPort, c.Addr)
	fsid, err := confValue(c.Conf, "fsid")
	if err != nil {
		return err
	}
	if err := c.run(ctx, "monmaptool", "--create", "--addv", monID, addrs, "--fsid", fsid, monmap); err != nil {
		return err
	}
	if err := c.run(ctx, "ceph-mon", "-c", c.Conf, "--mkfs", "-i", monID, "--monmap", monmap,
		"--keyring", filepath.Join(c.Dir, "mon."+monID+".keyring")); err != nil {
		return err
	}
	return c.start("mon", "ceph-mon", "-f", "-c", c.Conf, "-i", monID)
}

// confValue reads "key = value" from a ceph.conf.
func confValue(path, key string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s: no %s", path, key)
}

// Command is a command run in the cluster's namespace.
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.Netns, name}, args...)...)
}

// run runs a command in the namespace, its output in the error.
func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	out, err := c.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Admin runs the ceph command as client.admin and returns its output.
func (c *Cluster) Admin(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"-c", c.Conf, "-n", "client.admin", "--keyring", c.AdminKeyring, "--connect-timeout", "60"}, args...)
	var stdout, stderr bytes.Buffer
	cmd := c.Command(ctx, "ceph", full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ceph %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// admin runs ceph commands as the admin, one after the other.
func (c *Cluster) admin(ctx context.Context, cmds ...[]string) error {
	for _, args := range cmds {
		if _, err := c.Admin(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// start starts a daemon in the foreground in the namespace ('ip netns
// exec' execs it: its pid is the one recorded), its output in log/.
func (c *Cluster) start(name, bin string, args ...string) error {
	out, err := os.OpenFile(filepath.Join(c.Dir, "log", name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := c.Command(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not killed by a terminal's ^C before Stop
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	c.log.Debug("cephtest: started", "daemon", name, "pid", cmd.Process.Pid)
	return nil
}

// waitHealthy polls the health until HEALTH_OK and the pool is reported;
// a daemon that exits
// meanwhile is an error at once.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	last := ""
	for {
		if err := c.exited(); err != nil {
			return err
		}
		out, err := c.Admin(ctx, "health")
		if err == nil {
			last = strings.TrimSpace(string(out))
			// The manager reports the pool's space a moment later.
			if strings.HasPrefix(last, "HEALTH_OK") && c.poolReported(ctx) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy (%s): %w", last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// poolReported tells whether 'ceph df' shows the pool (space is what a
// pool driver asks first).
func (c *Cluster) poolReported(ctx context.Context) bool {
	out, err := c.Admin(ctx, "df", "--format", "json")
	if err != nil {
		return false
	}
	var df struct {
		Pools []struct {
			Name string `json:"name"`
		} `json:"pools"`
	}
	if json.Unmarshal(out, &df) != nil {
		return false
	}
	for _, p := range df.Pools {
		if p.Name == Pool {
			return true
		}
	}
	return false
}

// exited reports a daemon that is no longer running.
func (c *Cluster) exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.cmd.ProcessState)
		default:
		}
	}
	return nil
}

// Pids are the pids of the daemons it started.
func (c *Cluster) Pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, p := range c.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// RSS is the resident memory of its daemons, in bytes.
func (c *Cluster) RSS() (int64, error) {
	var total int64
	for _, pid := range c.Pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(string(b), "\n") {
			var kb int64
			if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
				total += kb << 10
			}
		}
	}
	return total, nil
}

// Stop kills the daemons it started (their data goes with the directory,
// so nothing is worth a clean shutdown), and removes the client
// namespaces, its namespace and its directory.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	procs, hosts := c.procs, c.hosts
	c.procs, c.hosts = nil, nil
	c.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Kill()
	}
	for _, p := range procs {
		<-p.done
	}
	var errs []error
	for _, ns := range append(hosts, c.Netns) {
		if err := delNetns(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Dir != "" {
		errs = append(errs, os.RemoveAll(c.Dir))
	}
	return errors.Join(errs...)
}

// logTail is the end of each daemon's log, for an error message.
func (c *Cluster) logTail() string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "log", "*.out"))
	for _, f := range logs {
		data, err := os.ReadFile(f)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		if len(data) > 1500 {
			data = data[len(data)-1500:]
		}
		fmt.Fprintf(&b, "\n--- %s:\n%s", filepath.Base(f), bytes.TrimSpace(data))
	}
	return b.String()
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", b), nil
}

func uuid() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}
