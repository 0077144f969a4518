package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tollgate-dev/tollgate/envoy/bootstrap"
	"github.com/tollgate-dev/tollgate/policies"
	"github.com/tollgate-dev/tollgate/translate"
	"github.com/tollgate-dev/tollgate/xds"
)

// newFlags returns a flag set that reports errors to stderr instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tollgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// xdsClientTLSFlags defines the --xds-tls-* flags of a client of tollgate's ADS server; who
// says who presents the client certificate.
func xdsClientTLSFlags(fs *flag.FlagSet, ca, cert, key, serverName *string, who string) {
	fs.StringVar(ca, "xds-tls-ca", "", "PEM CA certificates tollgate's xDS certificate must chain to; turns on TLS 1.3 to tollgate")
	fs.StringVar(cert, "xds-tls-cert", "", "PEM client certificate "+who+" to tollgate (mutual TLS)")
	fs.StringVar(key, "xds-tls-key", "", "PEM private key of --xds-tls-cert")
	fs.StringVar(serverName, "xds-tls-server-name", "", "name tollgate's certificate must carry (default: the --xds host)")
}

// parseFlags parses args; it returns an exit code to stop with, or -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

// compile loads a policy and builds everything tollgate would serve from it, running the same
// checks a reload runs before publishing.
func compile(path string) (*policies.Policy, *translate.Output, error) {
	p, _, err := policies.Load(path, os.LookupEnv)
	if err != nil {
		return nil, nil, err
	}
	out, err := translate.Translate(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := xds.Check(resources(out)); err != nil {
		return nil, nil, fmt.Errorf("%s: generated configuration is inconsistent: %w", path, err)
	}
	return p, out, nil
}

func validateCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", stderr)
	file := fs.String("f", "policy.yaml", "policy file")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	p, _, err := compile(*file)
	if err != nil {
		printErrors(stderr, err)
		return 1
	}
	_, _ = fmt.Fprintf(stdout, "%s: ok (%d backends, %d models, %d costs, %d quotas)\n",
		*file, len(p.Backends), len(p.Models), len(p.Costs), len(p.Quotas))
	return 0
}

func renderCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("render", stderr)
	file := fs.String("f", "policy.yaml", "policy file")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	_, out, err := compile(*file)
	if err != nil {
		printErrors(stderr, err)
		return 1
	}
	b, err := translate.Render(out)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate render: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(b)
	return 0
}

func bootstrapCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("bootstrap", stderr)
	var opts bootstrap.Options
	fs.StringVar(&opts.XDSAddress, "xds", "127.0.0.1:18000", "tollgate's ADS server (host:port) as Envoy reaches it")
	fs.StringVar(&opts.AdminAddress, "admin", "127.0.0.1:19000", "Envoy admin interface address (host:port)")
	fs.StringVar(&opts.NodeID, "node-id", "tollgate-envoy", "node id this Envoy reports")
	fs.StringVar(&opts.NodeCluster, "node-cluster", "tollgate", "node cluster this Envoy reports")
	t := &opts.XDSTLS
	xdsClientTLSFlags(fs, &t.CAFile, &t.CertFile, &t.KeyFile, &t.ServerName, "Envoy presents")
	overloadFlags(fs, &opts.Overload)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	b, err := bootstrap.YAML(opts)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "tollgate bootstrap: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(b)
	return 0
}

// printErrors prints a policy's errors one per line (file:line: path: message), or any other
// error as is.
func printErrors(w io.Writer, err error) {
	var list *policies.Errors
	if errors.As(err, &list) {
		for _, e := range list.List {
			_, _ = fmt.Fprintln(w, e.Error())
		}
		_, _ = fmt.Fprintf(w, "%d error(s)\n", len(list.List))
		return
	}
	_, _ = fmt.Fprintln(w, err)
}
