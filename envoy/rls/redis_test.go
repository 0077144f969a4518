package rls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-dev/tollgate/internal/testutil"
)

func TestPingRedis(t *testing.T) {
	ctx := context.Background()

	t.Run("no password", func(t *testing.T) {
		addr := startRedis(t)
		if err := pingRedis(ctx, redisTarget{Addr: addr}, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("password and ACL user", func(t *testing.T) {
		addr := startRedis(t, "--requirepass", "pw:with:colons", "--user", "app", "on", ">app-pw", "~*", "+@all")
		for _, auth := range []string{"default:pw:with:colons", "app:app-pw"} {
			if err := pingRedis(ctx, redisTarget{Addr: addr, Auth: auth}, nil); err != nil {
				t.Errorf("auth as %s: %v", strings.SplitN(auth, ":", 2)[0], err)
			}
		}
		err := pingRedis(ctx, redisTarget{Addr: addr}, nil)
		if !errors.As(err, new(redisRejectedError)) {
			t.Errorf("no password: err = %v, want a rejection", err)
		}
	})

	t.Run("TLS", func(t *testing.T) {
		dir := t.TempDir()
		pool := writeSelfSignedCert(t, dir)
		tlsAddr := testutil.FreeAddr(t)
		_, tlsPort, _ := net.SplitHostPort(tlsAddr)
		// startRedis's own port stays plain; the TLS port is the one under test.
		startRedis(t, "--tls-port", tlsPort,
			"--tls-cert-file", filepath.Join(dir, "cert.pem"),
			"--tls-key-file", filepath.Join(dir, "key.pem"),
			"--tls-ca-cert-file", filepath.Join(dir, "cert.pem"),
			"--tls-auth-clients", "no")
		target := redisTarget{Addr: tlsAddr, TLS: true}
		testutil.Eventually(t, 10*time.Second, "redis-server answering over TLS", func() error {
			return pingRedis(ctx, target, &tls.Config{RootCAs: pool})
		})
		if err := pingRedis(ctx, target, &tls.Config{}); err == nil {
			t.Error("ping trusted a certificate from an unknown authority")
		}
	})
}

func TestWaitForRedis(t *testing.T) {
	t.Run("gives up after the wait", func(t *testing.T) {
		dead := testutil.FreeAddr(t)
		start := time.Now()
		err := waitForRedis(context.Background(), redisTarget{Addr: dead}, nil, 400*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "cannot reach Redis at "+dead) {
			t.Fatalf("err = %v, want cannot reach Redis at %s", err, dead)
		}
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("gave up after %s", elapsed)
		}
	})

	t.Run("waits for a Redis that starts late", func(t *testing.T) {
		addr := testutil.FreeAddr(t)
		result := make(chan error, 1)
		go func() { result <- waitForRedis(context.Background(), redisTarget{Addr: addr}, nil, 30*time.Second) }()
		// The first attempts fail; the wait then succeeds once Redis is up on that port.
		startRedisOn(t, addr)
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("waitForRedis did not return")
		}
	})

	t.Run("stops with the context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := waitForRedis(ctx, redisTarget{Addr: testutil.FreeAddr(t)}, nil, time.Hour)
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("err = %v, want context canceled", err)
		}
	})
}

// writeSelfSignedCert writes cert.pem and key.pem for 127.0.0.1 into dir and returns a pool
// trusting the certificate.
func writeSelfSignedCert(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test redis"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return pool
}
