package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
)

// Failure modes of Fail.
const (
	Power     = "power"     // the host loses power: its agent and VMs die at once, its cable goes dead
	Partition = "partition" // the host's cable is unplugged at the switch; everything keeps running
)

// openHost loads and locks the lab in dir and checks that host is one of
// its hosts. The caller closes the lock.
func openHost(dir, host string) (*State, int, *os.File, error) {
	s, err := Load(dir)
	if err != nil {
		return nil, 0, nil, err
	}
	k, ok := HostIndex(host)
	if !ok || k > s.Hosts {
		return nil, 0, nil, fmt.Errorf("no host %q in the lab: its hosts are %s", host, hostRange(s.Hosts))
	}
	lk, err := lock(s.Layout())
	if err != nil {
		return nil, 0, nil, err
	}
	return s, k, lk, nil
}

// Fail makes host fail: mode Power or Partition.
func Fail(ctx context.Context, log *slog.Logger, dir, host, mode string) error {
	if mode != Power && mode != Partition {
		return fmt.Errorf("unknown failure %q: use %s or %s", mode, Power, Partition)
	}
	s, k, lk, err := openHost(dir, host)
	if err != nil {
		return err
	}
	defer lk.Close()
	if s.Failures == nil {
		s.Failures = map[string]Failure{}
	}
	f := s.Failures[host]
	if mode == Power {
		f.Power = true
	} else {
		f.Partition = true
	}
	s.Failures[host] = f
	if err := s.save(); err != nil {
		return err
	}
	if mode == Power {
		if err := powerOff(log, s, k); err != nil {
			return err
		}
	}
	log.Info("lab: unplugging the host's cable", "host", host)
	return setCable(ctx, host, false)
}

// powerOff SIGKILLs, all at once, host k's agent, its VMs and whatever
// else runs in its namespace.
func powerOff(log *slog.Logger, s *State, k int) error {
	host, hostDir := HostName(k), s.Layout().Host(k)
	agentPid := -1
	if p := s.proc(hostProc(k)); p != nil && p.Pid > 0 {
		agentPid = p.Pid
	}
	var nss []Namespace
	for _, ns := range s.Namespaces {
		if ns.Name == host {
			nss = append(nss, ns)
		}
	}
	inHost := nsSet(nss)
	vs := find(func(p procInfo) string {
		switch {
		case p.pid == agentPid && mentions(p.argv, hostDir):
			return "the agent of " + host
		case isQEMU(p.argv) && mentions(p.argv, hostDir):
			return "a VM of " + host
		}
		if _, ok := inHost[[2]uint64{p.dev, p.ino}]; ok {
			return "runs in " + host
		}
		return ""
	})
	defer release(vs)
	log.Info("lab: cutting the power", "host", host, "processes", len(vs))
	return terminate(log, vs, 0)
}

// Heal undoes Fail: the host's cable is plugged back in, and its agent is
// started again (with its recorded command line) if it does not run.
func Heal(ctx context.Context, log *slog.Logger, dir, host string) error {
	s, k, lk, err := openHost(dir, host)
	if err != nil {
		return err
	}
	defer lk.Close()
	if err := setCable(ctx, host, true); err != nil {
		return err
	}
	l := s.Layout()
	if p := s.proc(hostProc(k)); p != nil && !(alive(p.Pid) && mentions(cmdline(p.Pid), l.Host(k))) {
		log.Info("lab: starting the agent again", "host", host, "log", p.Log)
		pid, err := startDetached(p.NS, p.Argv, p.Log, labEnv(l))
		if err != nil {
			return err
		}
		p.Pid = pid
	}
	delete(s.Failures, host)
	return s.save()
}

// Stdio is where an Exec'd command reads and writes.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

// Exec runs argv inside a namespace of the lab (ctl, client or hostK) and
// returns its exit status (128+N if killed by signal N).
func Exec(ctx context.Context, dir, member string, argv []string, stdio Stdio) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("nothing to run: shoal lab exec HOST -- COMMAND [ARGS...]")
	}
	s, err := Load(dir)
	if err != nil {
		return 0, err
	}
	if !slices.Contains(s.Members(), member) {
		return 0, fmt.Errorf("no %q in the lab: use one of %s", member, strings.Join(s.Members(), ", "))
	}
	if !nsExists(member) {
		return 0, fmt.Errorf("the lab's namespace %s is gone: rebuild the lab (shoal lab down, then up)", member)
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", member}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run in %s: %w", member, err)
	}
	return 0, nil
}

// Status is what 'shoal lab status' shows.
type Status struct {
	Dir     string   `json:"dir"`
	Ready   bool     `json:"ready"`
	Server  string   `json:"server"`
	Members []Member `json:"members"`
	// Servers are the control plane's replicas, as a running server
	// lists them (none if no server answers: ServersError says why).
	Servers      []Replica `json:"servers,omitempty"`
	ServersError string    `json:"servers_error,omitempty"`
}

// Member is one namespace of the lab.
type Member struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Namespace bool   `json:"namespace"` // it exists
	Cable     string `json:"cable"`     // up, down, or "" (ctl: the switch itself)
	Process   string `json:"process,omitempty"`
	Pid       int    `json:"pid,omitempty"`
	Running   bool   `json:"running"`
	Failure   string `json:"failure,omitempty"`
	Log       string `json:"log,omitempty"`
}

// GetStatus reports on the lab in dir.
func GetStatus(ctx context.Context, dir string) (*Status, error) {
	s, err := Load(dir)
	if err != nil {
		return nil, err
	}
	st := &Status{Dir: s.Dir, Ready: s.Ready, Server: s.Layout().ServerURL()}
	for _, m := range s.Members() {
		mem := Member{Name: m, Address: mustAddr(m).String(), Namespace: nsExists(m), Failure: s.Failures[m].Mode()}
		if m != CtlNS && mem.Namespace && nsExists(CtlNS) {
			if up, ok := cableUp(ctx, m); ok {
				mem.Cable = map[bool]string{true: "up", false: "down"}[up]
			}
		}
		var p *Proc
		if k, ok := ServerIndex(m); ok {
			p = s.proc(serverProc(k))
		} else if k, ok := HostIndex(m); ok {
			p = s.proc(hostProc(k))
		} else if m == StorageNS {
			p = s.proc(storageProc)
		}
		if p != nil {
			mem.Process, mem.Pid, mem.Log = p.Name, p.Pid, p.Log
			mem.Running = alive(p.Pid) && mentions(cmdline(p.Pid), s.Dir)
		}
		st.Members = append(st.Members, mem)
	}
	if st.Servers, err = replicas(ctx, s); err != nil {
		st.ServersError = err.Error()
	}
	return st, nil
}

// procFor names the lab process of a member: a server ("server" or ctl
// for the first, serverK or ctlK for replica k), or a host's agent.
func procFor(s *State, member string) (string, error) {
	if k, ok := ServerIndex(member); ok && k <= s.servers() {
		return serverProc(k), nil
	}
	if k, ok := HostIndex(member); ok && k <= s.Hosts {
		return hostProc(k), nil
	}
	if member == StorageNS && s.proc(storageProc) != nil {
		return storageProc, nil
	}
	servers := "the server (server or ctl)"
	if s.servers() > 1 {
		servers = fmt.Sprintf("a server (server or server1..server%d)", s.servers())
	}
	return "", fmt.Errorf("no %q in the lab: name %s, a host (%s) or the storage server (storage)", member, servers, hostRange(s.Hosts))
}

// Kill ends one process of the lab at once (SIGKILL): a server (member
// "server" or "ctl" for the first, "serverK" for replica k) or a host's
// agent. Unlike a power cut, the host's VMs keep running and its cable
// stays plugged in. Revive (or Heal, for a host) starts it again.
func Kill(ctx context.Context, log *slog.Logger, dir, member string) error {
	s, err := Load(dir)
	if err != nil {
		return err
	}
	name, err := procFor(s, member)
	if err != nil {
		return err
	}
	lk, err := lock(s.Layout())
	if err != nil {
		return err
	}
	defer lk.Close()
	p := s.proc(name)
	if p == nil || p.Pid <= 0 {
		return fmt.Errorf("the lab has no %s process", name)
	}
	pid, want := p.Pid, s.Dir
	vs := find(func(pi procInfo) string {
		if pi.pid == pid && mentions(pi.argv, want) {
			return name
		}
		return ""
	})
	defer release(vs)
	if len(vs) == 0 {
		return nil // not running: nothing to do
	}
	log.Info("lab: killing", "process", name, "pid", pid)
	return terminate(log, vs, 0)
}

// Revive starts a lab process (a server, or a host's agent) again with
// its recorded command line, if it is not running.
func Revive(ctx context.Context, log *slog.Logger, dir, member string) error {
	s, err := Load(dir)
	if err != nil {
		return err
	}
	name, err := procFor(s, member)
	if err != nil {
		return err
	}
	lk, err := lock(s.Layout())
	if err != nil {
		return err
	}
	defer lk.Close()
	p := s.proc(name)
	if p == nil {
		return fmt.Errorf("the lab has no %s process", name)
	}
	if alive(p.Pid) && mentions(cmdline(p.Pid), s.Dir) {
		return nil
	}
	log.Info("lab: starting again", "process", name, "log", p.Log)
	pid, err := startDetached(p.NS, p.Argv, p.Log, labEnv(s.Layout()))
	if err != nil {
		return err
	}
	p.Pid = pid
	return s.save()
}
