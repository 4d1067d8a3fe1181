package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

const escapeKey = 0x1d // Ctrl-]

func vmConsoleCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to the VM's serial console (Ctrl-] to detach)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			conn, err := c.Console(ctx, args[0])
			if err != nil {
				return err
			}
			defer conn.Close()
			fd := int(os.Stdin.Fd())
			if !term.IsTerminal(fd) {
				return pipeConsole(conn)
			}
			old, err := term.MakeRaw(fd)
			if err != nil {
				return fmt.Errorf("terminal: %w", err)
			}
			defer term.Restore(fd, old)
			fmt.Fprintf(os.Stderr, "Connected to %s's serial console. Press Enter for a prompt, Ctrl-] to detach.\r\n", args[0])
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(os.Stdout, conn); done <- struct{}{} }()
			go func() {
				buf := make([]byte, 1024)
				for {
					n, err := os.Stdin.Read(buf)
					if i := bytes.IndexByte(buf[:n], escapeKey); i >= 0 {
						_, _ = conn.Write(buf[:i])
						break
					}
					if _, werr := conn.Write(buf[:n]); err != nil || werr != nil {
						break
					}
				}
				done <- struct{}{}
			}()
			<-done
			fmt.Fprint(os.Stderr, "\r\nDetached.\r\n")
			return nil
		},
	}
}

// pipeConsole serves scripts: it sends stdin to the console and prints
// what the VM answers until it has been quiet for a second after stdin
// ended.
func pipeConsole(conn io.ReadWriter) error {
	out := make(chan []byte, 64)
	go func() {
		defer close(out)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				out <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				return
			}
		}
	}()
	if _, err := io.Copy(conn, os.Stdin); err != nil {
		return err
	}
	for {
		select {
		case b, ok := <-out:
			if !ok {
				return nil
			}
			os.Stdout.Write(b)
		case <-time.After(time.Second):
			return nil
		}
	}
}
