package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Server replicas ('lab up --servers N'). Server 1 runs in ctl at
// 10.57.0.1 as in a lab of one server (its process is still called
// "server"); server k >= 2 runs in namespace ctlK, cabled to the switch
// like the client, at 10.57.0.(250+k), and joins server 1 with a join
// token. Each embeds an etcd member; the three form one etcd cluster.

// MaxServers is the most server replicas a lab has (.252 and .253 are
// theirs; the VMs' range ends at .250).
const MaxServers = 3

// EtcdPeerPort is where the replicas' embedded etcd members reach each
// other.
const EtcdPeerPort = 7380

// ServerNS is the namespace of server k (counted from 1): ctl, ctl2, ctl3.
func ServerNS(k int) string {
	if k == 1 {
		return CtlNS
	}
	return CtlNS + strconv.Itoa(k)
}

// replicaNS parses "ctlK" for 2 <= K <= MaxServers.
func replicaNS(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, CtlNS)
	if !ok || s == "" || s[0] == '0' {
		return 0, false
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 2 || k > MaxServers {
		return 0, false
	}
	return k, true
}

// ServerIndex parses a server's name: "server" or "ctl" (server 1),
// "serverK" or "ctlK" (1 <= K <= MaxServers).
func ServerIndex(name string) (int, bool) {
	if name == "server" || name == CtlNS {
		return 1, true
	}
	if k, ok := replicaNS(name); ok {
		return k, true
	}
	s, ok := strings.CutPrefix(name, "server")
	if !ok || s == "" || s[0] == '0' {
		return 0, false
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 || k > MaxServers {
		return 0, false
	}
	return k, true
}

// ServerName is server k's name as a replica ('shoal cluster servers'),
// and its name for the lab's commands.
func ServerName(k int) string { return "server" + strconv.Itoa(k) }

// serverProc is the name (and log name) of server k's process: "server"
// for the first, as in a lab of one server.
func serverProc(k int) string {
	if k == 1 {
		return "server"
	}
	return ServerName(k)
}

// servers is the number of server replicas.
func (s *State) servers() int { return max(s.Servers, 1) }

// ServerDir is server k's data dir.
func (l Layout) ServerDir(k int) string {
	if k == 1 {
		return l.Ctl()
	}
	return filepath.Join(l.Dir, ServerNS(k))
}

// ServerSocket is server k's unix socket as a CLI server setting
// (reachable from the root namespace).
func (l Layout) ServerSocket(k int) string {
	return "unix://" + filepath.Join(l.ServerDir(k), "shoal.sock")
}

// ReplicaURL is server k's HTTPS address inside the lab.
func (l Layout) ReplicaURL(k int) string {
	return "https://" + netip.AddrPortFrom(mustAddr(ServerNS(k)), ServerPort).String()
}

// ReplicaControl is a Control that also runs several server replicas.
type ReplicaControl interface {
	// ReplicaArgv is server k's command line (run inside ServerNS(k)) in
	// a lab of several servers. Server 1 founds the cluster; the others
	// join it with token.
	ReplicaArgv(l Layout, k int, token string) []string
	// WaitReplicas returns once server k answers and lists k replicas.
	WaitReplicas(ctx context.Context, l Layout, k int) error
	// ServerJoinToken returns a new (one-time) token a server replica
	// joins with.
	ServerJoinToken(ctx context.Context, l Layout) (string, error)
}

// ServerJoinToken implements ReplicaControl.
func (s Shoal) ServerJoinToken(ctx context.Context, l Layout) (string, error) {
	return s.token(ctx, l, s.serverTokenArgv())
}

// ReplicaArgv implements ReplicaControl.
func (s Shoal) ReplicaArgv(l Layout, k int, token string) []string {
	addr := mustAddr(ServerNS(k))
	config := l.Config()
	if k > 1 {
		config = filepath.Join(l.ServerDir(k), "config.json")
	}
	argv := []string{s.Binary, "server",
		"--data-dir", l.ServerDir(k),
		"--listen", netip.AddrPortFrom(addr, ServerPort).String(),
		"--advertise", l.ReplicaURL(k),
		"--config", config,
		"--name", ServerName(k),
		"--etcd-peer-url", "https://" + netip.AddrPortFrom(addr, EtcdPeerPort).String(),
	}
	if k > 1 {
		argv = append(argv, "--join", l.ServerURL(), "--token", token)
	}
	return append(argv, "-v")
}

// serversArgv lists the replicas as server k sees them.
func (s Shoal) serversArgv(l Layout, k int) []string {
	return s.cliArgv("--server", l.ServerSocket(k), "cluster", "servers", "-o", "json")
}

// WaitReplicas implements ReplicaControl.
func (s Shoal) WaitReplicas(ctx context.Context, l Layout, k int) error {
	return poll(ctx, fmt.Sprintf("server %d did not come up", k), func() error {
		out, err := s.cli(ctx, l, s.serversArgv(l, k))
		if err != nil {
			return err
		}
		rs, err := parseReplicas(out)
		if err != nil {
			return err
		}
		if len(rs) < k {
			return fmt.Errorf("%d of %d servers listed", len(rs), k)
		}
		return nil
	})
}

// startReplicas starts servers 2..N one after the other (etcd takes in
// one new member at a time), each joining server 1.
func startReplicas(ctx context.Context, log *slog.Logger, s *State, control Control, o Options, step func(string) error) ([]Proc, error) {
	if s.servers() < 2 {
		return nil, nil
	}
	rc := control.(ReplicaControl) // checked by Up
	l := s.Layout()
	var procs []Proc
	for k := 2; k <= s.servers(); k++ {
		if err := step("server:" + ServerName(k)); err != nil {
			return procs, err
		}
		token, err := rc.ServerJoinToken(ctx, l)
		if err != nil {
			return procs, fmt.Errorf("join token for %s: %w", ServerName(k), err)
		}
		log.Info("lab: starting a server replica", "name", ServerName(k), "ns", ServerNS(k), "log", l.Log(serverProc(k)))
		p, err := startProc(s, serverProc(k), ServerNS(k), rc.ReplicaArgv(l, k, token))
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
		wctx, cancel := watch(ctx, o.ReadyTimeout, []Proc{p})
		err = rc.WaitReplicas(wctx, l, k)
		cancel()
		if err != nil {
			return procs, err
		}
	}
	return procs, nil
}

// Replica is a server replica as 'lab status' shows it.
type Replica struct {
	Name   string `json:"name"`
	URL    string `json:"url"`
	Leader bool   `json:"leader,omitempty"`
}

func parseReplicas(listJSON string) ([]Replica, error) {
	var rs []Replica
	if err := json.Unmarshal([]byte(listJSON), &rs); err != nil {
		return nil, fmt.Errorf("parse the server list: %w", err)
	}
	return rs, nil
}

// replicas asks the first running server that answers for the list of
// replicas (GET /v1/cluster/servers).
func replicas(ctx context.Context, s *State) ([]Replica, error) {
	if s.Binary == "" {
		return nil, errors.New("the lab records no shoal binary")
	}
	sh, l := Shoal{Binary: s.Binary}, s.Layout()
	var errs []error
	for k := 1; k <= s.servers(); k++ {
		p := s.proc(serverProc(k))
		if p == nil || !alive(p.Pid) || !mentions(cmdline(p.Pid), s.Dir) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := sh.cli(cctx, l, sh.serversArgv(l, k))
		cancel()
		if err == nil {
			return parseReplicas(out)
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("no server runs")
	}
	return nil, errors.Join(errs...)
}
