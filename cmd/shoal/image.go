package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalvm/shoal/internal/api"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage the image library"}
	var name string
	imp := &cobra.Command{
		Use: "import FILE --name NAME", Short: "Import a disk (qcow2, raw, vmdk, vhdx, vdi) as an image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.ValidateName("image", name); err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			im, err := c.ImportImage(ctx, name, f)
			if err != nil {
				return err
			}
			return g.print(im, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "image %s imported (%s, %s)\n", im.Name, im.Source, api.FormatSize(im.SizeBytes))
			})
		},
	}
	imp.Flags().StringVar(&name, "name", "", "name of the new image")
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ims, err := c.ListImages(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ims, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tSIZE\tSOURCE")
				for _, im := range ims {
					fmt.Fprintf(w, "%s\t%s\t%s\n", im.Name, api.FormatSize(im.SizeBytes), im.Source)
				}
			})
		},
	}, &cobra.Command{
		Use: "build tiny", Short: "Build the tiny guest image from Debian packages", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			im, err := c.BuildImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(im, func(w *tabwriter.Writer) { fmt.Fprintf(w, "image %s built\n", im.Name) })
		},
	}, imp, &cobra.Command{
		Use: "delete NAME", Short: "Delete an image no VM uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteImage(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Printf("image %s deleted\n", args[0])
			return nil
		},
	})
	return cmd
}

func networkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Show virtual networks"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List networks", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			nets, err := c.ListNetworks(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(nets, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tBRIDGE\tSUBNET\tGATEWAY")
				for _, n := range nets {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n.Name, n.Bridge, n.Subnet, n.Gateway)
				}
			})
		},
	})
	return cmd
}
