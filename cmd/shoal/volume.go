package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func volumeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Manage volumes: disks in storage pools that VMs attach"}
	var req api.CreateVolumeRequest
	create := &cobra.Command{
		Use:   "create NAME --size SIZE [--pool P] [--host H] [--from-image I] [--project P]",
		Short: "Make a volume",
		Long: `Make a volume in a storage pool: blank, or starting with an image's
contents (--from-image; its size is the default). A volume of a shared
pool can be attached to a VM on any host that reaches the pool; one of
pool local lives on one host (--host). A volume that does not fit in
the pool's free space is refused, and nothing is made. Its size counts
in its project's max-disk.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.CreateVolume(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s created: %s in pool %s\n", v.Name, api.FormatSize(v.SizeBytes), v.Pool)
			})
		},
	}
	create.Flags().StringVar(&req.Size, "size", "", "its size, e.g. 10G (with --from-image: default the image's)")
	create.Flags().StringVar(&req.Pool, "pool", "", "the storage pool (default shared)")
	create.Flags().StringVar(&req.Host, "host", "", "the host of a volume of a host's own pool (local)")
	create.Flags().StringVar(&req.Image, "from-image", "", "start with this image's contents")
	create.Flags().StringVar(&req.Project, "project", "", "its project (default: yours, or default)")
	var pool string
	list := &cobra.Command{
		Use: "list [--pool P]", Short: "List volumes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vs, err := c.ListVolumes(cmd.Context(), pool)
			if err != nil {
				return err
			}
			return g.print(vs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tPOOL\tSIZE\tSTATE\tVM\tHOST\tPROJECT")
				for _, v := range vs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Pool, api.FormatSize(v.SizeBytes), v.State,
						dash(v.VM), dash(v.Host), api.ProjectOf(v.Project))
				}
			})
		},
	}
	list.Flags().StringVar(&pool, "pool", "", "only this pool's volumes")
	var size string
	resize := &cobra.Command{
		Use: "resize NAME --size SIZE", Short: "Grow a volume (a volume never shrinks)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.ResizeVolume(cmd.Context(), args[0], size)
			if err != nil {
				return err
			}
			return g.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s is %s\n", v.Name, api.FormatSize(v.SizeBytes))
			})
		},
	}
	resize.Flags().StringVar(&size, "size", "", "the new size, e.g. 20G")
	_ = resize.MarkFlagRequired("size")
	cmd.AddCommand(create, list, resize, &cobra.Command{
		Use: "show NAME", Short: "Show one volume", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.GetVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Name:\t%s\nID:\t%s\nPool:\t%s\nSize:\t%s\nState:\t%s\nVM:\t%s\nHost:\t%s\nProject:\t%s\nImage:\t%s\nCreated:\t%s\n",
					v.Name, v.ID, v.Pool, api.FormatSize(v.SizeBytes), v.State, dash(v.VM), dash(v.Host),
					api.ProjectOf(v.Project), dash(v.Image), v.CreatedAt.Local().Format("2006-01-02 15:04:05"))
				if v.Error != "" {
					fmt.Fprintf(w, "Error:\t%s\n", v.Error)
				}
			})
		},
	}, &cobra.Command{
		Use: "delete NAME", Short: "Delete a volume and its data (refused while a VM uses it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.print(map[string]string{"deleted": args[0]}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s deleted\n", args[0])
			})
		},
	})
	return cmd
}

func poolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Define and show storage pools"}
	cmd.AddCommand(poolCreateCmd(g), &cobra.Command{
		Use: "delete NAME", Short: "Remove an iSCSI or RBD pool's definition (refused while it holds volumes)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeletePool(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.print(map[string]string{"deleted": args[0]}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "pool %s deleted\n", args[0])
			})
		},
	})
	row := func(w *tabwriter.Writer, p api.Pool) {
		kind := p.Type
		if p.Shared {
			kind += ", shared"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Name, kind, api.FormatSize(p.SizeBytes), api.FormatSize(p.UsedBytes),
			api.FormatSize(p.FreeBytes), p.Volumes, strings.Join(p.Hosts, ","))
	}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List the storage pools, their space and the hosts that reach them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.ListPools(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ps, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tTYPE\tSIZE\tUSED\tFREE\tVOLUMES\tHOSTS")
				for _, p := range ps {
					row(w, p)
				}
			})
		},
	}, &cobra.Command{
		Use: "show NAME", Short: "Show one storage pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.GetPool(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(p, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tTYPE\tSIZE\tUSED\tFREE\tVOLUMES\tHOSTS")
				row(w, p)
			})
		},
	})
	return cmd
}

// vmAttachCmd is 'vm attach' or 'vm detach'.
func vmAttachCmd(g *globals, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use: verb + " VM VOLUME", Short: short, Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			call, done := c.AttachVolume, "attached to"
			if verb == "detach" {
				call, done = c.DetachVolume, "detached from"
			}
			v, err := call(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return g.print(v, func(w *tabwriter.Writer) {
				when := ""
				if verb == "attach" && !slices.ContainsFunc(v.Disks, func(d api.Disk) bool { return d.Name == args[1] && d.Open }) {
					when = " (it opens it at its next start)"
				}
				fmt.Fprintf(w, "volume %s %s vm %s%s\n", args[1], done, v.Name, when)
			})
		},
	}
}

func poolCreateCmd(g *globals) *cobra.Command {
	var cfg api.PoolConfig
	var secretFile, keyring, monitors string
	create := &cobra.Command{
		Use:   "create NAME --type iscsi|rbd ...",
		Short: "Define a storage pool on an iSCSI target or a Ceph cluster (admins)",
		Long: `Define a pool that every host reaches over the network:

  --type iscsi --server NAME      the SAN of Shoal's storage server NAME
                                  (see 'shoal storage-server'); Shoal makes a
                                  target per volume and the CHAP account
  --type iscsi --portal IP:PORT --target IQN [--chap-user U --chap-secret-file F]
                                  an existing target: its LUNs are volumes
  --type rbd --monitors A,B --rbd-pool P --user U --keyring F
                                  a Ceph RBD pool: each volume is an image

Directory pools (local, shared) are given to hosts when they start.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Name = args[0]
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("--chap-secret-file: %w", err)
				}
				cfg.CHAPSecret = strings.TrimSpace(string(b))
			}
			if keyring != "" {
				key, err := keyringKey(keyring)
				if err != nil {
					return err
				}
				cfg.Key = key
			}
			if monitors != "" {
				cfg.Monitors = strings.Split(monitors, ",")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.CreatePool(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return g.print(p, func(w *tabwriter.Writer) { fmt.Fprintf(w, "pool %s created (%s)\n", p.Name, p.Type) })
		},
	}
	f := create.Flags()
	f.StringVar(&cfg.Type, "type", "", "iscsi or rbd")
	f.StringVar(&cfg.Server, "server", "", "iscsi: the storage server that serves the pool")
	f.StringVar(&cfg.Portal, "portal", "", "iscsi: an existing target's portal, IP:PORT")
	f.StringVar(&cfg.Target, "target", "", "iscsi: an existing target's IQN")
	f.StringVar(&cfg.CHAPUser, "chap-user", "", "iscsi: the CHAP user")
	f.StringVar(&secretFile, "chap-secret-file", "", "iscsi: a file holding the CHAP secret")
	f.StringVar(&monitors, "monitors", "", "rbd: the Ceph monitors, IP:PORT,...")
	f.StringVar(&cfg.RBDPool, "rbd-pool", "", "rbd: the Ceph pool of the images")
	f.StringVar(&cfg.User, "user", "", "rbd: the Ceph user (without client.)")
	f.StringVar(&keyring, "keyring", "", "rbd: the Ceph keyring file of the user")
	return create
}

// keyringKey reads the key out of a Ceph keyring file ("key = ...").
func keyringKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--keyring: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("--keyring %s: no 'key = ...' line", path)
}
