package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/shoalvm/shoal/internal/client"
)

// client builds an API client from flags, environment and the settings
// file. It tries the file's servers (or those of --server / SHOAL_SERVER,
// comma-separated) in turn.
func (g *globals) client() (*client.Client, error) {
	cfg, err := client.LoadConfig(client.ConfigPath())
	if err != nil {
		return nil, err
	}
	fromFile := g.server == "" && os.Getenv("SHOAL_SERVER") == ""
	if g.server != "" {
		cfg.Server, cfg.Servers = g.server, nil
	}
	if g.token != "" {
		cfg.Token = g.token
	}
	c, err := client.NewReplicas(cfg.URLs(), cfg.Token, []byte(cfg.CA))
	if err != nil {
		return nil, err
	}
	if fromFile {
		g.made = &madeClient{c: c, cfg: cfg}
	}
	return c, nil
}

// print shows v as JSON with -o json, else calls table.
func (g *globals) print(v any, table func(w *tabwriter.Writer)) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table", "":
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		table(w)
		return w.Flush()
	}
	return fmt.Errorf("unknown output format %q: use table or json", g.output)
}

// signalContext is cancelled by Ctrl-C or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
