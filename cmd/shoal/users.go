package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoalvm/shoal/internal/api"
	"github.com/shoalvm/shoal/internal/client"
)

func userCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage the users who may call the API, and their roles"}
	var req api.CreateUserRequest
	var pwStdin bool
	create := &cobra.Command{
		Use:   "create NAME --role admin|operator|viewer [--project P] [--password-stdin]",
		Short: "Make a user",
		Long: `Make a user. Roles: admin (everything), operator (VMs: create, power,
console, migrate, change, delete; drain and resume hosts; read the rest),
viewer (read-only; no consoles, no console logs). Give the user a token with
'shoal token create --user NAME'; a password (--password-stdin, or later
'shoal user passwd NAME') is for the web console.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if pwStdin {
				pw, err := readPassword(cmd.InOrStdin(), false)
				if err != nil {
					return err
				}
				req.Password = pw
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			u, err := c.CreateUser(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(u, func(w *tabwriter.Writer) { fmt.Fprintf(w, "user %s created (%s)\n", u.Name, u.Role) })
		},
	}
	create.Flags().StringVar(&req.Role, "role", "", "admin, operator or viewer")
	create.Flags().StringVar(&req.Project, "project", "", "confine the user to this project's VMs")
	create.Flags().BoolVar(&pwStdin, "password-stdin", false, "read a password from standard input")
	_ = create.MarkFlagRequired("role")
	cmd.AddCommand(create, &cobra.Command{
		Use: "list", Short: "List users", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			users, err := c.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(users, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tROLE\tPROJECT\tPASSWORD\tCREATED")
				for _, u := range users {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.Role, dash(u.Project), yesNo(u.HasPassword), ago(u.CreatedAt))
				}
			})
		},
	}, &cobra.Command{
		Use: "show NAME", Short: "Show one user", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			u, err := c.GetUser(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(u, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Name:\t%s\nRole:\t%s\nProject:\t%s\nPassword:\t%s\nCreated:\t%s\n",
					u.Name, u.Role, dash(u.Project), yesNo(u.HasPassword), u.CreatedAt.Format(time.RFC3339))
			})
		},
	}, &cobra.Command{
		Use: "delete NAME", Short: "Delete a user and revoke its tokens", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteUser(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "user %s deleted, and its tokens revoked\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use: "passwd NAME", Short: "Set a user's password (read from standard input, or asked for on a terminal)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pw, err := readPassword(cmd.InOrStdin(), true)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.SetPassword(cmd.Context(), args[0], pw); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "password of user %s set\n", args[0])
			return nil
		},
	})
	return cmd
}

// readPassword reads a password: asked for twice on a terminal (when
// prompt and standard input is one), else the first line of in.
func readPassword(in io.Reader, prompt bool) (string, error) {
	if f, ok := in.(*os.File); ok && prompt && term.IsTerminal(int(f.Fd())) {
		ask := func(p string) (string, error) {
			fmt.Fprint(os.Stderr, p)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(os.Stderr)
			return string(b), err
		}
		pw, err := ask("New password: ")
		if err != nil {
			return "", err
		}
		again, err := ask("Again: ")
		if err != nil {
			return "", err
		}
		if pw != again {
			return "", errors.New("the two passwords differ")
		}
		return pw, nil
	}
	line, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("no password on standard input")
	}
	return pw, nil
}

func tokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Make, list and revoke API tokens"}
	var req api.CreateTokenRequest
	create := &cobra.Command{
		Use:   "create [--user U] [--role R] [--expires 30d] [--name N]",
		Short: "Make an API token and print it (once: it is not stored)",
		Long: `Make an API token and print its secret: it is shown this once only. Without
--user it is your own; only an admin makes tokens for others. A token never
has more rights than its user: --role may lower it, never raise it, and a
user's later loss of rights or deletion applies to its tokens at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(t, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, t.Token)
				fmt.Fprintf(os.Stderr, "token %s of user %s (%s), expires %s: keep it, it is not shown again\n", t.ID, t.User, t.Role, expires(t.Expires))
			})
		},
	}
	create.Flags().StringVar(&req.User, "user", "", "the user whose token it is (default: you)")
	create.Flags().StringVar(&req.Role, "role", "", "a lower role than the user's (admin, operator, viewer)")
	create.Flags().StringVar(&req.Expires, "expires", "", "lifetime, e.g. 30d, 12h (default: never)")
	create.Flags().StringVar(&req.Name, "name", "", "a name to tell it by")
	var user string
	list := &cobra.Command{
		Use: "list [--user U]", Short: "List tokens (your own; an admin's: everyone's), never their secrets", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			tokens, err := c.ListTokens(cmd.Context(), user)
			if err != nil {
				return err
			}
			return g.print(tokens, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tUSER\tROLE\tEXPIRES\tCREATED")
				for _, t := range tokens {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, dash(t.Name), t.User, t.Role, expires(t.Expires), ago(t.CreatedAt))
				}
			})
		},
	}
	list.Flags().StringVar(&user, "user", "", "only this user's tokens")
	cmd.AddCommand(create, list, &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token: it stops working at once", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "token %s revoked\n", args[0])
			return nil
		},
	})
	return cmd
}

func expires(t *time.Time) string {
	if t == nil {
		return "never"
	}
	if time.Now().After(*t) {
		return "expired " + t.UTC().Format(time.RFC3339)
	}
	return t.UTC().Format(time.RFC3339)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func auditCmd(g *globals) *cobra.Command {
	var q client.AuditQuery
	cmd := &cobra.Command{
		Use:   "audit [--since 1h] [--user U] [--vm V] [--limit N]",
		Short: "Show the audit trail: who changed what, from where, and how it ended",
		Long: `Show the audit trail, oldest first: every call that changed something (and
every console opened), refused ones too, with the user and token, the
caller's address, the action, its object and the result. Records are kept
for 30 days (the last 20,000 at most). Admins only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if q.Since != "" {
				if err := checkSince(q.Since); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			recs, err := c.Audit(cmd.Context(), q)
			if err != nil {
				return err
			}
			return g.print(recs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TIME\tUSER\tTOKEN\tFROM\tACTION\tOBJECT\tRESULT")
				for _, r := range recs {
					result := r.Result
					if r.Error != "" {
						result += ": " + oneLine(r.Error)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", eventTime(r.Time), dash(r.User+r.Host), dash(r.Token), dash(r.Remote), r.Action, dash(r.Object), result)
				}
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.Since, "since", "", "only records since then: a duration back from now (1h) or a time (2025-01-02T15:04:05Z)")
	f.StringVar(&q.User, "user", "", "only this user's calls")
	f.StringVar(&q.VM, "vm", "", "only calls on this VM")
	f.IntVar(&q.Limit, "limit", 100, "show at most the newest N records")
	return cmd
}
