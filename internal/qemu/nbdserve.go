package qemu

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// NBDServe is a qemu-nbd process serving one disk image over NBD, as the
// receiving end of a disk mirror on a migration target. Unlike an export
// of the target's own QEMU (ExportDisk), it leaves that QEMU a plain
// incoming target whose disk stays inactive, like a disk on shared
// storage, until the guest resumes (IncomingOptions.LateBlockActivate):
// qemu-nbd writes the image, then exits, and QEMU reads it afresh.
type NBDServe struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *slog.Logger
}

// ServeNBD starts qemu-nbd serving the qcow2 image at path, writable,
// under export name export, on the unix socket sock if addr is "", else
// on TCP addr (IP:PORT). It returns once the server accepts
// connections. qemu-nbd ends with this process (parent-death signal).
func ServeNBD(log *slog.Logger, path, export, sock, addr string) (*NBDServe, error) {
	args := []string{"--format=qcow2", "--export-name=" + export, "--persistent", "--cache=writeback"}
	if addr == "" {
		_ = os.Remove(sock)
		args = append(args, "--socket="+sock)
	} else {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("qemu-nbd: address %q: %w", addr, err)
		}
		if _, err := strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("qemu-nbd: port %q: %w", port, err)
		}
		args = append(args, "--bind="+host, "--port="+port)
	}
	args = append(args, path)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(sockOr(sock, path)), "qemu-nbd.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o640)
	if err != nil {
		return nil, fmt.Errorf("qemu-nbd: log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("qemu-nbd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-nbd: %w", err)
	}
	s := &NBDServe{cmd: cmd, done: make(chan struct{}), log: log}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	network, target := "unix", sock
	if addr != "" {
		network, target = "tcp", addr
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if greeted(network, target) {
			log.Info("qemu-nbd serving", "image", path, "on", target, "pid", cmd.Process.Pid)
			return s, nil
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("qemu-nbd exited: %v: %s", s.err, b)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("qemu-nbd did not listen on %s within 10s", target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// greeted reports whether an NBD server at target sends its greeting: a
// listening socket alone does not tell, as qemu-nbd listens before it
// opens the image (and exits if it cannot).
func greeted(network, target string) bool {
	c, err := net.DialTimeout(network, target, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 8)
	_, err = io.ReadFull(c, b)
	return err == nil && string(b) == "NBDMAGIC"
}

// sockOr picks the dir for qemu-nbd's log: the socket's, else the image's.
func sockOr(sock, path string) string {
	if sock != "" {
		return sock
	}
	return path
}

// Stop ends qemu-nbd, which writes out what it holds first, and waits
// for it (SIGKILL after 5 s). It is safe to call more than once.
func (s *NBDServe) Stop() error {
	if s == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("qemu-nbd did not stop within 5s; killed")
	}
	return nil
}
