// Command tollgate is an xDS control plane for plain Envoy that enforces per-user token quotas
// on LLM traffic. See `tollgate help`.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; otherwise the module
// version from the build info is used.
var version = ""

// command is one subcommand: how its line in the usage reads and what runs it.
type command struct {
	name    string
	args    string
	summary []string // one entry per usage line
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands in the order the usage shows them.
func commands() []command {
	return []command{
		{"init", "--backend-url URL --models a,b", []string{"write a commented starter policy.yaml for your models"}, initCommand},
		{"run", "-f policy.yaml", []string{"run everything on one machine: control plane, ext_proc,", "ratelimit service (embedded Redis unless --redis) and Envoy"}, runCommand},
		{"serve", "-f policy.yaml", []string{"run the control plane (ADS) and the ext_proc server"}, serveCommand},
		{"extproc", "-f policy.yaml", []string{`run the ext_proc server on its own (with serve --extproc "")`}, extProcCommand},
		{"ratelimit", "", []string{"run the ratelimit service, configured over xDS by tollgate"}, ratelimitCommand},
		{"validate", "-f policy.yaml", []string{"check a policy; print every error as file:line: path: message"}, validateCommand},
		{"render", "-f policy.yaml", []string{"print the Envoy resources and ratelimit config as YAML"}, renderCommand},
		{"bootstrap", "", []string{"print an Envoy bootstrap that connects to tollgate over ADS"}, bootstrapCommand},
		{"hash-key", "[--user ID]", []string{"print the SHA-256 of an API key (read from stdin) for identity.apiKeys"}, func(args []string, stdout, stderr io.Writer) int {
			return hashKeyCommand(args, os.Stdin, stdout, stderr)
		}},
		{"quota", "--user ID", []string{"show a user's quota windows: limit, used, remaining, reset;",
			"quota reset|set|grant --user ID --quota NAME [--amount N] changes one for this window"}, quotaCommand},
		{"status", "", []string{"show what a running tollgate serves and who is connected"}, statusCommand},
		{"version", "", []string{"print the version"}, func(_ []string, stdout, _ io.Writer) int {
			_, _ = fmt.Fprintf(stdout, "tollgate %s\n", buildVersion())
			return 0
		}},
	}
}

// usage is the text of `tollgate help`: one block per command, the summary in a column of its
// own, on a line of its own when the arguments are too wide for theirs.
func usage() string {
	const argsWidth, summaryColumn = 16, 38
	var b strings.Builder
	b.WriteString("tollgate: per-user token quotas for LLM traffic on plain Envoy\n\nUsage:\n")
	for _, c := range commands() {
		head := fmt.Sprintf("  tollgate %-9s %s", c.name, c.args)
		if len(c.args) > argsWidth {
			b.WriteString(head + "\n")
			head = ""
		}
		for _, line := range c.summary {
			fmt.Fprintf(&b, "%-*s%s\n", summaryColumn, head, line)
			head = ""
		}
	}
	b.WriteString("\nRun 'tollgate <command> -h' for a command's flags.\n")
	return b.String()
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		_, _ = fmt.Fprint(stderr, usage())
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "--version":
		name = "version"
	case "help", "-h", "--help":
		_, _ = fmt.Fprint(stdout, usage())
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(rest, stdout, stderr)
		}
	}
	_, _ = fmt.Fprintf(stderr, "tollgate: unknown command %q\n\n%s", name, usage())
	return 2
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return "dev"
}
