// Command shoal is Shoal's single binary: the CLI, and the server, agent
// and all-in-one node.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", oneLine(err.Error()))
		os.Exit(1)
	}
}

// globals holds the flags every command shares.
type globals struct {
	server, token, output string
	made                  *madeClient // the client built from the settings file, if any
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "shoal",
		Short:         "Shoal runs virtual machines on a cluster of Linux hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("unknown output format %q: use table or json", g.output)
			}
			return nil
		},
		PersistentPostRun: func(cmd *cobra.Command, args []string) { g.rememberServers(cmd.Context()) },
	}
	root.PersistentFlags().StringVar(&g.server, "server", "", "API server: https://HOST:PORT or unix:///PATH, or several replicas comma-separated (env SHOAL_SERVER)")
	root.PersistentFlags().StringVar(&g.token, "token", "", "API token (env SHOAL_TOKEN)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(vmCmd(g), hostCmd(g), imageCmd(g), networkCmd(g), upCmd(), serverCmd(), agentCmd(), clusterCmd(g))
	root.AddCommand(labCmd(g))
	root.AddCommand(benchCmd(g))
	root.AddCommand(eventsCmd(g))
	root.AddCommand(userCmd(g), tokenCmd(g), auditCmd(g), projectCmd(g), volumeCmd(g), poolCmd(g))
	root.AddCommand(fenceWatchdogCmd(), storageServerCmd())
	return root
}
