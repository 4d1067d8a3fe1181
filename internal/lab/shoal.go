package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"
)

// Control gives the lab the command lines of its Shoal processes and tells
// when they are ready. Shoal is the real one; tests substitute fakes.
type Control interface {
	// ServerArgv is the server's command line (run inside ctl).
	ServerArgv(l Layout) []string
	// AgentArgv is host k's agent's command line (run inside hostK).
	AgentArgv(l Layout, k int, token string) []string
	// WaitServer returns once the server answers and has written
	// l.Config().
	WaitServer(ctx context.Context, l Layout) error
	// JoinToken returns a new (one-time) token an agent joins with.
	JoinToken(ctx context.Context, l Layout) (string, error)
	// WaitHosts returns once host1..hostN are all up.
	WaitHosts(ctx context.Context, l Layout, hosts int) error
	// StorageArgv is the storage server's command line (run inside
	// storage).
	StorageArgv(l Layout, token string) []string
	// StoragePool defines pool StoragePool on the storage server and
	// returns once the server serves it.
	StoragePool(ctx context.Context, l Layout) error
}

// Shoal is the real Control: the shoal binary's server and agent, and its
// CLI talking to the server over the unix socket in the lab dir.
type Shoal struct {
	Binary string // absolute path of the shoal binary
	Accel  string // the agents' --accel; "" means tcg
}

// ServerArgv implements Control.
func (s Shoal) ServerArgv(l Layout) []string {
	return []string{s.Binary, "server",
		"--data-dir", l.Ctl(),
		"--listen", fmt.Sprintf("%s:%d", mustAddr(CtlNS), ServerPort),
		"--advertise", l.ServerURL(),
		"--config", l.Config(),
		"-v",
	}
}

// AgentArgv implements Control.
func (s Shoal) AgentArgv(l Layout, k int, token string) []string {
	accel := s.Accel
	if accel == "" {
		accel = "tcg"
	}
	host := HostName(k)
	return []string{s.Binary, "agent",
		"--join", l.ServerURL(),
		"--token", token,
		"--host", host,
		"--data-dir", l.Host(k),
		"--listen", fmt.Sprintf("%s:%d", mustAddr(host), AgentPort),
		"--network-addr", cidr(host),
		"--uplink", "eth0",
		"--shared-pool", "shared=" + l.Shared(),
		"--accel", accel,
		"-v",
	}
}

// StorageArgv implements Control.
func (s Shoal) StorageArgv(l Layout, token string) []string {
	return []string{s.Binary, "storage-server",
		"--join", l.ServerURL(),
		"--token", token,
		"--name", StorageNS,
		"--data-dir", l.Storage(),
		"--dir", l.SAN(),
		"--listen", fmt.Sprintf("%s:%d", mustAddr(StorageNS), StoragePort),
		"-v",
	}
}

// StoragePool implements Control: 'pool create san --type iscsi
// --server storage' (again until the storage server has registered),
// then 'pool list' until it shows the pool served.
func (s Shoal) StoragePool(ctx context.Context, l Layout) error {
	create := s.cliArgv("pool", "create", StoragePool, "--type", "iscsi", "--server", StorageNS)
	err := poll(ctx, "pool "+StoragePool+" was not made", func() error {
		_, err := s.cli(ctx, l, create)
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil // made by an earlier try
		}
		return err
	})
	if err != nil {
		return err
	}
	return poll(ctx, "the storage server does not serve pool "+StoragePool, func() error {
		out, err := s.cli(ctx, l, s.cliArgv("pool", "list", "-o", "json"))
		if err != nil {
			return err
		}
		return poolServed(out, StoragePool, StorageNS)
	})
}

// poolServed checks 'pool list -o json' output: pool name must show the
// space of server.
func poolServed(listJSON, name, server string) error {
	var list []struct {
		Name  string
		Size  int64
		Hosts []string
	}
	if err := json.Unmarshal([]byte(listJSON), &list); err != nil {
		return fmt.Errorf("parse pool list: %w", err)
	}
	for _, p := range list {
		if p.Name == name && p.Size > 0 && slices.Contains(p.Hosts, server) {
			return nil
		}
	}
	return fmt.Errorf("pool %s is not served by %s yet", name, server)
}

// cliArgv is a CLI call of the lab's server; it runs with labEnv, which
// points SHOAL_CONFIG at the lab's settings.
func (s Shoal) cliArgv(args ...string) []string { return append([]string{s.Binary}, args...) }

func (s Shoal) tokenArgv() []string       { return s.cliArgv("cluster", "token") }
func (s Shoal) serverTokenArgv() []string { return s.cliArgv("cluster", "token", "--server") }
func (s Shoal) hostListArgv() []string    { return s.cliArgv("host", "list", "-o", "json") }

// cli runs one CLI call, for at most 15 s, and returns its stdout.
func (s Shoal) cli(ctx context.Context, l Layout, argv []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = labEnv(l)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(argv[1:], " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// poll calls try every 250 ms until it succeeds or ctx ends; the error
// then carries try's last error.
func poll(ctx context.Context, what string, try func() error) error {
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, context.Cause(ctx), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitServer implements Control.
func (s Shoal) WaitServer(ctx context.Context, l Layout) error {
	return poll(ctx, "the server did not come up", func() error {
		if _, err := os.Stat(l.Config()); err != nil {
			return fmt.Errorf("no %s yet", l.Config())
		}
		_, err := s.cli(ctx, l, s.hostListArgv())
		return err
	})
}

// JoinToken implements Control.
func (s Shoal) JoinToken(ctx context.Context, l Layout) (string, error) {
	return s.token(ctx, l, s.tokenArgv())
}

// token runs a 'shoal cluster token' command line and returns its token.
func (s Shoal) token(ctx context.Context, l Layout, argv []string) (string, error) {
	out, err := s.cli(ctx, l, argv)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(out)
	if tok == "" || strings.ContainsAny(tok, " \n") {
		return "", fmt.Errorf("'%s' printed %q, not one token", strings.Join(argv[1:], " "), out)
	}
	return tok, nil
}

// WaitHosts implements Control.
func (s Shoal) WaitHosts(ctx context.Context, l Layout, hosts int) error {
	return poll(ctx, "the hosts did not come up", func() error {
		out, err := s.cli(ctx, l, s.hostListArgv())
		if err != nil {
			return err
		}
		return hostsUp(out, hosts)
	})
}

// hostsUp checks 'host list -o json' output: host1..hostN must all be up.
func hostsUp(listJSON string, hosts int) error {
	var list []struct{ Name, State string }
	if err := json.Unmarshal([]byte(listJSON), &list); err != nil {
		return fmt.Errorf("parse host list: %w", err)
	}
	states := map[string]string{}
	for _, h := range list {
		states[h.Name] = h.State
	}
	var bad []string
	for k := 1; k <= hosts; k++ {
		name := HostName(k)
		st, ok := states[name]
		switch {
		case !ok:
			bad = append(bad, name+" (not joined)")
		case st != "up":
			bad = append(bad, name+" ("+st+")")
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return errors.New("not up: " + strings.Join(bad, ", "))
	}
	return nil
}

// storageProc is the name (and log name) of the storage server's process.
const storageProc = "storage-server"

// hostProc is the name (and log name) of host k's agent process.
func hostProc(k int) string { return "agent-" + HostName(k) }
