package xds

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// TLSFiles name the PEM files of the ADS server's TLS. The zero value means plain TCP, which
// is only safe on loopback: anyone who can reach the ADS port can read the configuration
// (backend addresses, users, limits) and, worse, connect as an Envoy.
type TLSFiles struct {
	// CertFile and KeyFile are the server's certificate chain and private key.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes mutual TLS mandatory: a client must present a certificate
	// signed by this CA or the handshake fails. Empty: server-side TLS only.
	ClientCAFile string
}

// Enabled reports whether any TLS file is named.
func (f TLSFiles) Enabled() bool {
	return f.CertFile != "" || f.KeyFile != "" || f.ClientCAFile != ""
}

// Validate refuses a half-configured set: a certificate without its key (or the reverse), or
// a client CA without a server certificate. Starting anyway would serve plain text where the
// operator asked for TLS.
func (f TLSFiles) Validate() error {
	var errs []error
	if f.CertFile == "" && (f.KeyFile != "" || f.ClientCAFile != "") {
		errs = append(errs, errors.New("a TLS certificate file is required with a key or client CA"))
	}
	if f.KeyFile == "" && (f.CertFile != "" || f.ClientCAFile != "") {
		errs = append(errs, errors.New("a TLS key file is required with a certificate or client CA"))
	}
	return errors.Join(errs...)
}

// ServerConfig returns the TLS configuration of the ADS server: TLS 1.3 only and, with a
// client CA, a verified client certificate required.
//
// The files are read now, so a mistake fails the start, and read again on a handshake after
// any of them changed on disk, so rotated certificates apply to new connections without a
// restart. If the changed files do not load (a rotation caught halfway), the last good set
// keeps serving and the problem is logged. logger may be nil.
func (f TLSFiles) ServerConfig(logger *slog.Logger) (*tls.Config, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, errors.New("no TLS files given")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &reloadingTLS{files: f, logger: logger}
	if _, err := r.current(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.current() },
	}, nil
}

// reloadingTLS holds the last good server configuration and the file state it came from.
type reloadingTLS struct {
	files  TLSFiles
	logger *slog.Logger

	mu     sync.Mutex
	stamp  []fileStamp
	config *tls.Config
}

// fileStamp identifies one version of a file well enough to notice a rotation.
type fileStamp struct {
	modTime time.Time
	size    int64
}

func (r *reloadingTLS) current() (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp := r.stamps()
	if r.config != nil && sameStamps(stamp, r.stamp) {
		return r.config, nil
	}
	cfg, err := r.files.load()
	if err != nil {
		if r.config == nil {
			return nil, err
		}
		r.logger.Error("xDS TLS files changed but do not load; still using the previous ones", "error", err)
		// Remember the broken state so every handshake does not reload and log again.
		r.stamp = stamp
		return r.config, nil
	}
	if r.config != nil {
		r.logger.Info("xDS TLS files reloaded", "cert", r.files.CertFile)
	}
	r.config, r.stamp = cfg, stamp
	return cfg, nil
}

func (r *reloadingTLS) stamps() []fileStamp {
	var out []fileStamp
	for _, name := range []string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile} {
		var s fileStamp
		if fi, err := os.Stat(name); err == nil && name != "" {
			s = fileStamp{modTime: fi.ModTime(), size: fi.Size()}
		}
		out = append(out, s)
	}
	return out
}

func sameStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].modTime.Equal(b[i].modTime) || a[i].size != b[i].size {
			return false
		}
	}
	return true
}

// load reads the files into a complete server configuration.
func (f TLSFiles) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("xDS TLS certificate %s / key %s: %w", f.CertFile, f.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// gRPC clients (Envoy, the ratelimit service) negotiate HTTP/2 by ALPN, and recent
		// gRPC versions refuse a connection without it.
		NextProtos: []string{"h2"},
		ClientAuth: tls.NoClientCert,
	}
	if f.ClientCAFile != "" {
		pool, err := LoadCertPool(f.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("xDS TLS client CA: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// LoadCertPool reads PEM certificates from path into a pool of their own: only these are
// trusted, never the system roots as well.
func LoadCertPool(path string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
