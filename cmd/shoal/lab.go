package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/client"
	"github.com/shoalvm/shoal/internal/lab"
)

// labLog prints the lab's progress on stderr, without time stamps.
func labLog(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	}))
}

func labCmd(g *globals) *cobra.Command {
	var dir string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A multi-host lab on this machine: hosts in network namespaces on one switch, shared storage, a client",
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", lab.DefaultDir, "the lab's directory (down removes it)")
	cmd.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log more")

	var hosts, servers int
	var accel string
	up := &cobra.Command{
		Use: "up", Short: "Build the lab: a server in namespace ctl, an agent in each of host1..hostN, a storage server (pool san) in namespace storage", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the shoal binary: %w", err)
			}
			if bin, err = filepath.EvalSymlinks(bin); err != nil {
				return fmt.Errorf("find the shoal binary: %w", err)
			}
			ctx, cancel := signalContext()
			defer cancel()
			o := lab.Options{Dir: dir, Hosts: hosts, Servers: servers, Binary: bin, Accel: accel, UserConfig: client.ConfigPath()}
			s, err := lab.Up(ctx, labLog(verbose), o)
			if err != nil {
				return err
			}
			printLabWelcome(s)
			return nil
		},
	}
	up.Flags().IntVar(&hosts, "hosts", 3, fmt.Sprintf("how many hosts (1 to %d)", lab.MaxHosts))
	up.Flags().IntVar(&servers, "servers", 1, fmt.Sprintf("how many server replicas (1 to %d): the first in ctl, the others in ctl2.. joining it", lab.MaxServers))
	up.Flags().StringVar(&accel, "accel", "tcg", "the hosts' accelerator: tcg, kvm or auto")

	down := &cobra.Command{
		Use: "down", Short: "Remove the lab: its processes, VMs, namespaces and directory", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lab.Down(cmd.Context(), labLog(verbose), dir); err != nil {
				return err
			}
			fmt.Println("The lab is gone.")
			return nil
		},
	}

	exec := &cobra.Command{
		Use:   "exec HOST -- COMMAND [ARGS...]",
		Short: "Run a command inside a lab namespace (ctl, client, storage or hostN)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			member, argv := args[0], args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			code, err := lab.Exec(cmd.Context(), dir, member, argv, lab.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
			if err != nil {
				return err
			}
			if code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
	exec.Flags().SetInterspersed(false) // COMMAND's flags are its own

	var power, partition bool
	fail := &cobra.Command{
		Use: "fail HOST --power|--partition", Short: "Make a host fail: cut its power, or unplug it from the switch", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if power == partition {
				return errors.New("say how the host fails: --power or --partition")
			}
			mode := lab.Partition
			if power {
				mode = lab.Power
			}
			if err := lab.Fail(cmd.Context(), labLog(verbose), dir, args[0], mode); err != nil {
				return err
			}
			fmt.Printf("%s failed (%s). 'shoal lab heal %s' brings it back.\n", args[0], mode, args[0])
			return nil
		},
	}
	fail.Flags().BoolVar(&power, "power", false, "cut the power: the agent and the VMs die at once, the cable goes dead")
	fail.Flags().BoolVar(&partition, "partition", false, "unplug the host from the switch; everything keeps running")

	heal := &cobra.Command{
		Use: "heal HOST", Short: "Undo 'lab fail': plug the host back in and start its agent again", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lab.Heal(cmd.Context(), labLog(verbose), dir, args[0]); err != nil {
				return err
			}
			fmt.Printf("%s is back.\n", args[0])
			return nil
		},
	}

	status := &cobra.Command{
		Use: "status", Short: "Show the lab's namespaces, cables and processes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.GetStatus(cmd.Context(), dir)
			if err != nil {
				return err
			}
			return g.print(st, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Lab in %s, server %s, ready: %v\n\n", st.Dir, st.Server, st.Ready)
				fmt.Fprintln(w, "NAME\tADDRESS\tNAMESPACE\tCABLE\tPROCESS\tPID\tRUNNING\tFAILURE")
				for _, m := range st.Members {
					ns := "missing"
					if m.Namespace {
						ns = "ok"
					}
					running := "-"
					if m.Process != "" {
						running = fmt.Sprint(m.Running)
					}
					pid := "-"
					if m.Pid > 0 {
						pid = fmt.Sprint(m.Pid)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Address, ns, dash(m.Cable), dash(m.Process), pid, running, dash(m.Failure))
				}
				fmt.Fprintln(w)
				if st.ServersError != "" {
					fmt.Fprintf(w, "Server replicas: unknown (%s)\n", st.ServersError)
					return
				}
				fmt.Fprintln(w, "SERVER\tURL\tLEADER")
				for _, r := range st.Servers {
					fmt.Fprintf(w, "%s\t%s\t%s\n", r.Name, r.URL, map[bool]string{true: "yes", false: ""}[r.Leader])
				}
			})
		},
	}
	kill := &cobra.Command{
		Use: "kill server|serverN|HOST|storage", Short: "Kill a server of the lab ('server' is the first), a host's agent (its VMs keep running), or the storage server (its tgtd dies with it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lab.Kill(cmd.Context(), labLog(verbose), dir, args[0]); err != nil {
				return err
			}
			fmt.Printf("killed the %s process. 'shoal lab revive %s' starts it again.\n", args[0], args[0])
			return nil
		},
	}
	revive := &cobra.Command{
		Use: "revive server|serverN|HOST|storage", Short: "Start a server of the lab, a host's agent or the storage server again after 'lab kill'", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lab.Revive(cmd.Context(), labLog(verbose), dir, args[0]); err != nil {
				return err
			}
			fmt.Printf("%s is running.\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(up, down, exec, fail, heal, status, kill, revive, labPollCmd(g))
	return cmd
}

func printLabWelcome(s *lab.State) {
	l := s.Layout()
	d := ""
	if s.Dir != lab.DefaultDir {
		d = " --dir " + s.Dir
	}
	fmt.Printf("\nThe lab is up in %s: %d hosts (host1..host%d) on one switch.\n", s.Dir, s.Hosts, s.Hosts)
	fmt.Printf("  Server:       %s, in namespace ctl (and %s)\n", l.ServerURL(), l.SocketURL())
	for k := 2; k <= s.Servers; k++ {
		fmt.Printf("  Replica:      %s %s, in namespace %s (and %s)\n", lab.ServerName(k), l.ReplicaURL(k), lab.ServerNS(k), l.ServerSocket(k))
	}
	if a, err := lab.Addr(lab.StorageNS); err == nil {
		fmt.Printf("  Storage:      storage server %s (iSCSI %s:%d), in namespace %s, serving pool %s (volumes in %s)\n",
			lab.StorageNS, a, lab.StoragePort, lab.StorageNS, lab.StoragePool, l.SAN())
	}
	if s.UserConfig != "" {
		fmt.Printf("  CLI settings: %s", s.UserConfig)
		if s.UserConfigBackup != "" {
			fmt.Printf(" (yours are kept in %s until 'lab down')", s.UserConfigBackup)
		}
		fmt.Println()
	}
	fmt.Printf("  Logs:         %s\n", l.Logs())
	fmt.Println("\nTry:")
	fmt.Println("  shoal host list")
	fmt.Println("  shoal vm create web1 --image tiny --memory 256M --disk 1G --pool shared --start")
	fmt.Println("  shoal volume create data1 --size 1G --pool san")
	fmt.Println("  shoal lab exec" + d + " client -- wget -qO- http://$(shoal vm show web1 -o json | sed -n 's/.*\"ip\": \"\\(.*\\)\".*/\\1/p')/")
	fmt.Printf("  shoal lab fail%s host1 --power   (or --partition); shoal lab heal%s host1\n", d, d)
	fmt.Printf("  shoal lab status%s\n", d)
	fmt.Printf("  shoal lab down%s                 removes everything the lab made\n", d)
}

// labPollCmd is a VM's client as a user sees it: a request every few ms,
// counting failures and the longest wait (e.g. across a migration).
func labPollCmd(g *globals) *cobra.Command {
	var every, dur, slow time.Duration
	var from string
	cmd := &cobra.Command{
		Use:   "poll IP",
		Short: "From the lab's client, ask a tiny VM for / every few ms; show failures and the longest stall",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			if dur > 0 {
				var c2 context.CancelFunc
				ctx, c2 = context.WithTimeout(ctx, dur)
				defer c2()
			}
			p, err := lab.StartPoller(ctx, from, args[0], every)
			if err != nil {
				return err
			}
			<-ctx.Done()
			r := p.Stop()
			if err := g.print(r, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, r.String())
				for i, l := range r.Latencies {
					if slow > 0 && l >= slow {
						fmt.Fprintf(w, "  slow: %s took %s (connect %s)\n", r.Starts[i].Format("15:04:05.000"), l.Round(time.Millisecond), r.Connects[i].Round(time.Millisecond))
					}
				}
			}); err != nil {
				return err
			}
			if r.Failed > 0 {
				return fmt.Errorf("%d of %d requests failed: %s", r.Failed, r.Requests, strings.Join(r.Errors, "; "))
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&every, "interval", 10*time.Millisecond, "time between requests")
	cmd.Flags().DurationVar(&dur, "for", 0, "stop after this long (default: until Ctrl-C)")
	cmd.Flags().StringVar(&from, "from", "client", "lab namespace the requests come from")
	cmd.Flags().DurationVar(&slow, "show-slow", 0, "list the requests that took at least this long (0 = none)")
	return cmd
}
