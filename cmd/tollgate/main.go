// Command tollgate is an xDS control plane for plain Envoy that enforces per-user token quotas
// on LLM traffic. See `tollgate help`.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"; otherwise the module
// version from the build info is used.
var version = ""

const usage = `tollgate: per-user token quotas for LLM traffic on plain Envoy

Usage:
  tollgate init      --backend-url URL --models a,b
                                      write a commented starter policy.yaml for your models
  tollgate run       -f policy.yaml   run everything on one machine: control plane, ext_proc,
                                      ratelimit service (embedded Redis unless --redis) and Envoy
  tollgate serve     -f policy.yaml   run the control plane (ADS) and the ext_proc server
  tollgate extproc   -f policy.yaml   run the ext_proc server on its own (with serve --extproc "")
  tollgate ratelimit                  run the ratelimit service, configured over xDS by tollgate
  tollgate validate  -f policy.yaml   check a policy; print every error as file:line: path: message
  tollgate render    -f policy.yaml   print the Envoy resources and ratelimit config as YAML
  tollgate bootstrap                  print an Envoy bootstrap that connects to tollgate over ADS
  tollgate hash-key  [--user ID]      print the SHA-256 of an API key (read from stdin) for identity.apiKeys
  tollgate quota     --user ID        show a user's quota windows: limit, used, remaining, reset
  tollgate status                     show what a running tollgate serves and who is connected
  tollgate version                    print the version

Run 'tollgate <command> -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		_, _ = fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCommand(rest, stdout, stderr)
	case "run":
		return runCommand(rest, stdout, stderr)
	case "extproc":
		return extProcCommand(rest, stdout, stderr)
	case "ratelimit":
		return ratelimitCommand(rest, stdout, stderr)
	case "init":
		return initCommand(rest, stdout, stderr)
	case "validate":
		return validateCommand(rest, stdout, stderr)
	case "hash-key":
		return hashKeyCommand(rest, os.Stdin, stdout, stderr)
	case "render":
		return renderCommand(rest, stdout, stderr)
	case "bootstrap":
		return bootstrapCommand(rest, stdout, stderr)
	case "quota":
		return quotaCommand(rest, stdout, stderr)
	case "status":
		return statusCommand(rest, stdout, stderr)
	case "version", "--version":
		_, _ = fmt.Fprintf(stdout, "tollgate %s\n", buildVersion())
		return 0
	case "help", "-h", "--help":
		_, _ = fmt.Fprint(stdout, usage)
		return 0
	default:
		_, _ = fmt.Fprintf(stderr, "tollgate: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
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
