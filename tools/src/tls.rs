//! TLS on the client (RESP) port, with rustls (no OpenSSL): the server's
//! configuration from PEM files (`--tls-cert`, `--tls-key`,
//! `--tls-ca-cert`, `--tls-auth-clients`), and a blocking stream over a
//! [`ServerConnection`] for `--io threads` (the event loop drives its
//! connections itself, see `server/event_loop.rs`).
//!
//! Client certificates follow Redis's `tls-auth-clients`: `yes` (the
//! default once a CA is given) refuses a client without a certificate
//! signed by the CA, `optional` accepts one without a certificate but
//! refuses a bad one, `no` asks for none.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// The client port's TLS, as `serve` was told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub files: TlsFiles,
    /// The TLS-only listener (`--tls-port`, on `--bind`).
    pub addr: std::net::SocketAddr,
    /// Whether the plaintext port listens too (`--port 0`: not).
    pub plaintext_too: bool,
}

/// Redis's `tls-auth-clients`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClients {
    No,
    Optional,
    Yes,
}

impl std::str::FromStr for AuthClients {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthClients, String> {
        match s {
            "no" => Ok(AuthClients::No),
            "optional" => Ok(AuthClients::Optional),
            "yes" => Ok(AuthClients::Yes),
            _ => Err(format!("{s:?}: expected no, optional or yes")),
        }
    }
}

/// The client port's TLS files and client-certificate policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates that sign client certificates.
    pub ca: Option<PathBuf>,
    /// None: Redis's default (`yes` with a CA, `no` without).
    pub auth_clients: Option<AuthClients>,
}

fn read_pem(what: &str, flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag}: cannot read {what} {}: {e}", path.display()))
}

fn certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem("certificate file", flag, path)?;
    mirrorlog_engine::transport::tls::pem_certs(&format!("{flag} {}", path.display()), &pem)
}

/// A PEM file's bytes (certificates, a CA), for `flag`.
pub fn read_cert_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    read_pem("certificate file", flag, path)
}

/// A private key file's bytes, checked first to be private to its owner
/// (as the password and secret files must be).
pub fn read_key_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{flag}: cannot read key file {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{flag} {} is readable or writable by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    read_pem("key file", flag, path)
}

/// A node's TLS identity for the partner or witness link (`cert`, `key`
/// and `ca` with the flags that named them), the key mode-checked.
pub fn identity(
    flags: [&str; 3],
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<mirrorlog_engine::transport::tls::TlsIdentity, String> {
    let names = [
        format!("{} {}", flags[0], cert.display()),
        format!("{} {}", flags[1], key.display()),
        format!("{} {}", flags[2], ca.display()),
    ];
    mirrorlog_engine::transport::tls::TlsIdentity::from_pem(
        &read_cert_file(flags[0], cert)?,
        &read_key_file(flags[1], key)?,
        &read_cert_file(flags[2], ca)?,
        [&names[0], &names[1], &names[2]],
    )
}

/// The private key of the client port (`--tls-key`).
fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_key_file("--tls-key", path)?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("--tls-key {}: not a PEM private key: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "--tls-key {}: no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC)",
                path.display()
            )
        })
}

/// The server's TLS configuration: the certificate chain and its key
/// (checked to match), and the client verifier the policy asks for.
pub fn server_config(f: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = mirrorlog_engine::transport::tls::provider();
    let chain = certs("--tls-cert", &f.cert)?;
    let key = key(&f.key)?;
    let auth = f.auth_clients.unwrap_or(if f.ca.is_some() {
        AuthClients::Yes
    } else {
        AuthClients::No
    });
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (auth, &f.ca) {
        (AuthClients::No, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(
                "--tls-auth-clients yes or optional needs --tls-ca-cert FILE (the CA that signs client certificates)"
                    .into(),
            )
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--tls-ca-cert", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-ca-cert {}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == AuthClients::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("--tls-ca-cert {}: {e}", ca.display()))?,
            )
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "--tls-cert {} with --tls-key {}: {e} (is the key the certificate's?)",
            f.cert.display(),
            f.key.display()
        )
    })?;
    Ok(Arc::new(config))
}

/// A blocking TLS stream (`--io threads`): reads and writes go through
/// `tls` to `sock`, whose timeouts bound them as they bound a plaintext
/// client (a read timing out returns the socket's error, with whatever
/// partial record arrived kept in `tls`).
pub(crate) struct TlsStream {
    pub(crate) tls: ServerConnection,
    pub(crate) sock: TcpStream,
}

impl TlsStream {
    /// Sends what rustls has queued (records, alerts).
    fn send_queued(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.sock)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Takes TLS bytes from the socket once: Ok(false) at its end.
    fn take_tls(&mut self) -> io::Result<bool> {
        if self.tls.read_tls(&mut self.sock)? == 0 {
            return Ok(false);
        }
        if let Err(e) = self.tls.process_new_packets() {
            // The alert rustls queued goes out before the connection ends.
            let _ = self.send_queued();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(true)
    }

    /// Completes the handshake by `deadline`, or fails.
    pub(crate) fn handshake(
        &mut self,
        deadline: std::time::Instant,
        stop: &std::sync::atomic::AtomicBool,
    ) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.send_queued()?;
            if !self.tls.is_handshaking() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake took too long",
                ));
            }
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            match self.take_tls() {
                Ok(true) => {}
                Ok(false) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        self.send_queued()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // Closed without close_notify: the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Key updates and the like want an answer.
            self.send_queued()?;
            if !self.take_tls()? {
                return Ok(0);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // rustls buffers a bounded amount (64 KiB); what it took is sent
        // before returning, so nothing waits unsent in it.
        let n = self.tls.writer().write(buf)?;
        self.send_queued()?;
        if n == 0 && !buf.is_empty() {
            return self.tls.writer().write(buf).and_then(|n| {
                self.send_queued()?;
                Ok(n)
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_queued()
    }
}
