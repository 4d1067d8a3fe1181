package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testQEMU is a QEMU started for one test: paused (-S), no guest, no
// devices, QMP on a unix socket. It is a direct child of the test process.
type testQEMU struct {
	cmd  *exec.Cmd
	sock string
}

func qemuBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 is required under CI: %v", err)
		}
		t.Skipf("qemu-system-x86_64 not installed: %v", err)
	}
	return bin
}

func startQEMU(t *testing.T) *testQEMU {
	t.Helper()
	bin := qemuBinary(t)
	dir, err := os.MkdirTemp("/tmp", "sq")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command(bin,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "tcg", "-m", "64", "-S",
		"-chardev", "socket,id=qmp,path="+sock+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	q := &testQEMU{cmd: cmd, sock: sock}
	t.Cleanup(func() {
		q.kill()
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatal("QEMU did not create its QMP socket within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (q *testQEMU) kill() {
	if q.cmd.ProcessState != nil {
		return
	}
	_ = q.cmd.Process.Signal(syscall.SIGCONT)
	_ = q.cmd.Process.Kill()
	_ = q.cmd.Wait()
}

func dial(t *testing.T, q *testQEMU) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, q.sock)
		// The socket file exists a moment before QEMU listens on it.
		if errors.Is(err, syscall.ECONNREFUSED) && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

type status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func queryStatus(t *testing.T, c *Client) status {
	t.Helper()
	var st status
	if err := c.Execute(context.Background(), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func waitEvent(t *testing.T, c *Client, name string) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				t.Fatalf("events closed while waiting for %s", name)
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within 5s", name)
		}
	}
}

func TestStatusStopContAndEvents(t *testing.T) {
	c := dial(t, startQEMU(t))
	ctx := context.Background()

	if st := queryStatus(t, c); st.Status != "prelaunch" && st.Status != "paused" || st.Running {
		t.Fatalf("status of a -S QEMU = %+v, want paused/prelaunch, not running", st)
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, c, "RESUME")
	if ev.Timestamp.IsZero() || time.Since(ev.Timestamp) > time.Minute {
		t.Errorf("RESUME timestamp = %v, want about now", ev.Timestamp)
	}
	if st := queryStatus(t, c); st.Status != "running" || !st.Running {
		t.Fatalf("after cont: %+v, want running", st)
	}
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, c, "STOP")
	if st := queryStatus(t, c); st.Status != "paused" {
		t.Fatalf("after stop: %+v, want paused", st)
	}
}

func TestErrorReplies(t *testing.T) {
	c := dial(t, startQEMU(t))
	ctx := context.Background()

	err := c.Execute(ctx, "no-such-command", nil, nil)
	var qerr *Error
	if !errors.As(err, &qerr) {
		t.Fatalf("bogus command: err = %v (%T), want *Error", err, err)
	}
	if qerr.Class != "CommandNotFound" || qerr.Command != "no-such-command" || qerr.Desc == "" {
		t.Errorf("bogus command: %+v", qerr)
	}
	if _, ok := err.(*Error); !ok {
		t.Errorf("error is %T, want *Error itself", err)
	}

	// Bad arguments: GenericError, and the connection stays usable.
	err = c.Execute(ctx, "query-status", map[string]any{"bogus": 1}, nil)
	if !errors.As(err, &qerr) || qerr.Class != "GenericError" {
		t.Fatalf("bad arguments: err = %v, want GenericError", err)
	}
	// Arguments as a struct.
	var ver struct {
		QEMU struct{ Major, Minor int } `json:"qemu"`
	}
	if err := c.Execute(ctx, "query-version", nil, &ver); err != nil || ver.QEMU.Major < 5 {
		t.Fatalf("query-version = %+v, %v", ver, err)
	}
	type humanArgs struct {
		Command string `json:"command-line"`
	}
	var out string
	if err := c.Execute(ctx, "human-monitor-command", humanArgs{"info status"}, &out); err != nil {
		t.Fatal(err)
	}
	if out == "" {
		t.Error("human-monitor-command returned nothing")
	}
}

func TestConcurrentExecute(t *testing.T) {
	c := dial(t, startQEMU(t))
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				var st status
				if err := c.Execute(context.Background(), "query-status", nil, &st); err != nil || st.Status == "" {
					errs <- fmt.Errorf("query-status: %+v, %v", st, err)
				}
				return
			}
			var names []struct{ Name string }
			if err := c.Execute(context.Background(), "query-commands", nil, &names); err != nil || len(names) < 10 {
				errs <- fmt.Errorf("query-commands: %d names, %v", len(names), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A call whose context ends is abandoned; its late reply must not be handed
// to the next caller.
func TestContextCancelAndLateReply(t *testing.T) {
	q := startQEMU(t)
	c := dial(t, q)
	if err := q.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "query-commands", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if err := q.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if st := queryStatus(t, c); st.Status == "" {
		t.Fatalf("status after late reply = %+v", st)
	}
}

func TestQEMUKilledFailsPendingAndClosesEvents(t *testing.T) {
	q := startQEMU(t)
	c := dial(t, q)
	// Freeze QEMU so the next call stays pending, then kill it.
	if err := q.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() { result <- c.Execute(context.Background(), "query-status", nil, nil) }()
	time.Sleep(100 * time.Millisecond)
	// SIGKILL ends a stopped process too; no SIGCONT, so no reply.
	_ = q.cmd.Process.Kill()
	_ = q.cmd.Wait()

	select {
	case err := <-result:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("pending call err = %v, want ErrClosed", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("pending call did not fail within 3s of QEMU's death")
	}
	select {
	case _, ok := <-c.Events():
		for ok {
			_, ok = <-c.Events()
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Events not closed")
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after death: err = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("close after death: %v", err)
	}
}

func TestCloseFailsCallsAndSecondClientWaits(t *testing.T) {
	q := startQEMU(t)
	c := dial(t, q)

	// QEMU serves one client at a time: a second Dial gets no greeting.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := Dial(ctx, q.sock)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Dial err = %v, want deadline exceeded", err)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
	if _, ok := <-c.Events(); ok {
		t.Fatal("Events open after Close")
	}
	// QEMU keeps running and takes a new client.
	c2 := dial(t, q)
	if st := queryStatus(t, c2); st.Status == "" {
		t.Fatal("no status from second client")
	}
}

// fakeQEMU speaks just enough QMP to test event buffering.
func TestEventsDropOldest(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "q.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const total = EventBuffer * 3
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		enc := json.NewEncoder(conn)
		dec := json.NewDecoder(conn)
		_ = enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{}}})
		var req map[string]any
		if err := dec.Decode(&req); err != nil {
			served <- err
			return
		}
		_ = enc.Encode(map[string]any{"return": map[string]any{}, "id": req["id"]})
		for i := range total {
			_ = enc.Encode(map[string]any{"event": "TICK", "data": map[string]int{"n": i},
				"timestamp": map[string]int64{"seconds": 1700000000, "microseconds": int64(i)}})
		}
		// Answer one more command so the test knows all events were read.
		if err := dec.Decode(&req); err != nil {
			served <- err
			return
		}
		_ = enc.Encode(map[string]any{"return": map[string]any{}, "id": req["id"]})
		served <- nil
		_ = dec.Decode(&req) // wait for the client to hang up
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(ctx, "sync", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if got := c.DroppedEvents(); got != total-EventBuffer {
		t.Errorf("dropped = %d, want %d", got, total-EventBuffer)
	}
	// LastEvent keeps the newest of each name, unread or dropped alike.
	if ev, ok := c.LastEvent("TICK"); !ok || string(ev.Data) != fmt.Sprintf(`{"n":%d}`, total-1) {
		t.Errorf("LastEvent(TICK) = %s, %v; want n=%d", ev.Data, ok, total-1)
	}
	if _, ok := c.LastEvent("SHUTDOWN"); ok {
		t.Error("LastEvent(SHUTDOWN) found one that was never sent")
	}
	var first, last int
	for i := range EventBuffer {
		ev := <-c.Events()
		var d struct{ N int }
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = d.N
		}
		last = d.N
	}
	if first != total-EventBuffer || last != total-1 {
		t.Errorf("kept events %d..%d, want the newest %d..%d", first, last, total-EventBuffer, total-1)
	}
}
