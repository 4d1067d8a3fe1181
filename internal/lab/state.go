package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where a lab lives unless told otherwise.
const DefaultDir = "/var/lib/shoal-lab"

// MaxHosts is the most hosts a lab has: hosts take 10.57.0.2-9, VMs get
// 10.57.0.10 and up.
const MaxHosts = 8

// Names of the lab's fixed namespaces (the contract: ctl, host1..hostN,
// client, storage).
const (
	CtlNS    = "ctl"
	ClientNS = "client"
	// StorageNS runs the lab's storage server, which serves pool
	// StoragePool.
	StorageNS = "storage"
)

// StoragePool is the pool of the lab's storage server (an iSCSI SAN).
const StoragePool = "san"

// StoragePort is the iSCSI portal's port of the storage server.
const StoragePort = 3260

// Subnet is the lab's one L2 segment: the switch, the hosts' VM bridges,
// the VMs and the client all sit on it.
var Subnet = netip.MustParsePrefix("10.57.0.0/24")

// Ports of the server and the agents.
const (
	ServerPort = 7443
	AgentPort  = 7444
)

// HostName is the name (and namespace) of host k, counted from 1.
func HostName(k int) string { return "host" + strconv.Itoa(k) }

// hostRange names a lab's hosts for messages: "host1..host3".
func hostRange(n int) string {
	if n == 1 {
		return HostName(1)
	}
	return HostName(1) + ".." + HostName(n)
}

// HostIndex parses "hostK" (1 <= K <= MaxHosts); ok is false for anything
// else.
func HostIndex(name string) (k int, ok bool) {
	s, found := strings.CutPrefix(name, "host")
	if !found || s == "" || s[0] == '0' {
		return 0, false
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 || k > MaxHosts {
		return 0, false
	}
	return k, true
}

// Addr is the lab address plan: ctl (the switch, the first server) is
// .1, host k is .(1+k) (on its VM bridge), the storage server is .251,
// server replica k (namespace ctlK, k >= 2) is .(250+k), the client is
// .254; VMs get .10 to .250.
func Addr(member string) (netip.Addr, error) {
	base := Subnet.Addr().As4()
	switch member {
	case CtlNS:
		base[3] = 1
	case ClientNS:
		base[3] = 254
	case StorageNS:
		base[3] = 251
	default:
		if k, ok := replicaNS(member); ok {
			base[3] = byte(250 + k)
			break
		}
		k, ok := HostIndex(member)
		if !ok {
			return netip.Addr{}, fmt.Errorf("no lab member %q: use ctl, ctl2..ctl%d, client, storage or host1..host%d", member, MaxServers, MaxHosts)
		}
		base[3] = byte(1 + k)
	}
	return netip.AddrFrom4(base), nil
}

// mustAddr is Addr for names already validated.
func mustAddr(member string) netip.Addr {
	a, err := Addr(member)
	if err != nil {
		panic(err)
	}
	return a
}

// cidr is member's address with the subnet's prefix length, e.g. 10.57.0.2/24.
func cidr(member string) string {
	return netip.PrefixFrom(mustAddr(member), Subnet.Bits()).String()
}

// Layout names the files of a lab in its directory.
type Layout struct{ Dir string }

func (l Layout) State() string     { return filepath.Join(l.Dir, "state.json") }
func (l Layout) Lock() string      { return filepath.Join(l.Dir, "lock") }
func (l Layout) Config() string    { return filepath.Join(l.Dir, "config.json") }
func (l Layout) Ctl() string       { return filepath.Join(l.Dir, "ctl") }
func (l Layout) Socket() string    { return filepath.Join(l.Ctl(), "shoal.sock") }
func (l Layout) Host(k int) string { return filepath.Join(l.Dir, HostName(k)) }
func (l Layout) Shared() string    { return filepath.Join(l.Dir, "shared") }
func (l Layout) Logs() string      { return filepath.Join(l.Dir, "logs") }
func (l Layout) Storage() string   { return filepath.Join(l.Dir, "storage") } // the storage server's data dir
func (l Layout) SAN() string       { return filepath.Join(l.Dir, "san") }     // its volumes' files

// Log is the log file of the process called name.
func (l Layout) Log(name string) string { return filepath.Join(l.Logs(), name+".log") }

// ServerURL is the server's HTTPS address inside the lab.
func (l Layout) ServerURL() string {
	return "https://" + netip.AddrPortFrom(mustAddr(CtlNS), ServerPort).String()
}

// SocketURL is the server's unix socket as a CLI server setting.
func (l Layout) SocketURL() string { return "unix://" + l.Socket() }

// cleanDir makes dir absolute and refuses paths a lab must not use: the lab
// removes its directory on down, and passes it inside other flags.
func cleanDir(dir string) (string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("lab dir %q: %w", dir, err)
	}
	if abs == "/" {
		return "", errors.New("the lab dir cannot be /: choose a directory of its own, e.g. " + DefaultDir)
	}
	for _, r := range abs {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-", r)) {
			return "", fmt.Errorf("lab dir %q has %q in it: use only letters, digits and . _ - /", abs, r)
		}
	}
	return abs, nil
}

// State is what a lab made, kept in D/state.json. Up writes it before each
// step's effect, so Down can undo a half-made lab.
type State struct {
	Dir     string    `json:"dir"`
	Binary  string    `json:"binary"`
	Hosts   int       `json:"hosts"`
	Servers int       `json:"servers,omitempty"` // server replicas; 0 means 1
	Created time.Time `json:"created"`
	// Ready is set once every host is up.
	Ready bool `json:"ready"`
	// Namespaces the lab made (a name is recorded before 'ip netns add',
	// its inode after).
	Namespaces []Namespace `json:"namespaces"`
	// Procs are the lab's long-running processes: "server" (the first
	// server), "serverK" (replica k), "agent-hostK", "storage-server".
	Procs []Proc `json:"procs"`
	// UserConfig is where up copied the CLI settings; UserConfigBackup is
	// where it saved the file it replaced ("" if there was none).
	UserConfig       string `json:"user_config,omitempty"`
	UserConfigBackup string `json:"user_config_backup,omitempty"`
	// Failures maps a host to the failure 'lab fail' gave it.
	Failures map[string]Failure `json:"failures,omitempty"`
}

// Namespace is a network namespace the lab made. Dev and Ino identify it
// (zero if the lab stopped between making it and recording them).
type Namespace struct {
	Name string `json:"name"`
	Dev  uint64 `json:"dev,omitempty"`
	Ino  uint64 `json:"ino,omitempty"`
}

// Proc is one detached process of the lab.
type Proc struct {
	Name string   `json:"name"`
	NS   string   `json:"ns"`
	Argv []string `json:"argv"`
	Pid  int      `json:"pid"`
	Log  string   `json:"log"`
}

// Failure is what 'lab fail' did to a host.
type Failure struct {
	Power     bool `json:"power,omitempty"`
	Partition bool `json:"partition,omitempty"`
}

// Mode names a failure for people.
func (f Failure) Mode() string {
	switch {
	case f.Power && f.Partition:
		return "power+partition"
	case f.Power:
		return "power"
	case f.Partition:
		return "partition"
	}
	return ""
}

// Layout is the file layout of the state's lab.
func (s *State) Layout() Layout { return Layout{Dir: s.Dir} }

// Members are the lab's namespaces in the order they are made: ctl,
// ctl2..ctlM (the other server replicas, if any), client, storage,
// host1..hostN.
func (s *State) Members() []string {
	m := []string{CtlNS}
	for k := 2; k <= s.servers(); k++ {
		m = append(m, ServerNS(k))
	}
	m = append(m, ClientNS, StorageNS)
	for k := 1; k <= s.Hosts; k++ {
		m = append(m, HostName(k))
	}
	return m
}

// proc returns the recorded process called name, or nil.
func (s *State) proc(name string) *Proc {
	for i := range s.Procs {
		if s.Procs[i].Name == name {
			return &s.Procs[i]
		}
	}
	return nil
}

// setProc records p, replacing a process of the same name.
func (s *State) setProc(p Proc) {
	if old := s.proc(p.Name); old != nil {
		*old = p
		return
	}
	s.Procs = append(s.Procs, p)
}

// ErrNoLab means the directory holds no lab.
var ErrNoLab = errors.New("no lab")

// Load reads the state of the lab in dir.
func Load(dir string) (*State, error) {
	dir, err := cleanDir(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(Layout{dir}.State())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: start one with 'shoal lab up --dir %s'", ErrNoLab, dir, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w (remove the lab by hand: its namespaces are ctl, client, host1..)", Layout{dir}.State(), err)
	}
	s.Dir = dir // the directory may have been reached by another path
	return &s, nil
}

// save writes the state atomically, mode 0600 (agents' argv hold the join
// token).
func (s *State) save() error {
	path := s.Layout().State()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// lock takes the lab's lock so that two lab commands do not change the
// same lab at once. Closing the file releases it.
func lock(l Layout) (*os.File, error) {
	f, err := os.OpenFile(l.Lock(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another 'shoal lab' command is changing the lab in %s: wait for it to finish", l.Dir)
	}
	return f, nil
}
