//! TLS (rustls, ring provider) on the partner link and the witness link.
//!
//! Both ends authenticate each other by certificates signed by one CA the
//! operator names (`--partner-tls-ca`, `--tls-ca`): the accepting end
//! requires a client certificate, the connecting end verifies the server's
//! against the server name it expects. rustls has no TLS 1.3 external PSK
//! (rustls issue #174), so the shared secret cannot key TLS itself; it
//! still runs the PAKE handshake inside TLS, and the PAKE transcript
//! carries 32 bytes of the TLS session's exported keying material
//! (RFC 5705 / 8446 §7.5): a relay that terminates TLS on both sides (even
//! one holding a certificate of the CA) has two TLS sessions with different
//! exporters, so the two PAKE transcripts differ and the key confirmations
//! fail. Neither a certificate alone nor the secret alone gets a partner in.
//!
//! * [`TlsConn`] is the partner link's [`Conn`] over a non-blocking socket
//!   driven by hand (`read_tls`/`write_tls` and `poll(2)`), because a
//!   receive must also wait on the session's local wake-up. There is no
//!   io_uring TLS path: with partner TLS configured a node uses this one
//!   whatever `--transport` says (and says so once in its log).
//! * [`TlsStream`] is a blocking stream over a socket with timeouts, for
//!   the witness link, whose code reads and writes a `Read + Write`.
//!
//! The first bytes from the peer are looked at before rustls sees them: a
//! peer that speaks the plaintext protocol (one side configured for TLS,
//! the other not) gets an error that says so on both sides, not a rustls
//! decode error or a stream of malformed frames.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

use crate::replication::seal::{SealKey, SealKeys};
use crate::replication::wire::{ship_headers, Message, RefuseCode};
use crate::transport::blocking::{poll2, poll_until, send_timed_out, ship_tags, RecvBuf};
use crate::transport::{Conn, TransportError, TransportPath};
use crate::wake::Wakeup;

/// Bytes of exported keying material bound into a PAKE transcript.
pub const BINDING_BYTES: usize = 32;
/// The exporter labels (RFC 5705): one per link, so a session of one
/// cannot stand in for the other.
pub const PARTNER_EXPORTER_LABEL: &[u8] = b"mirrorlog partner v1";
pub const WITNESS_EXPORTER_LABEL: &[u8] = b"mirrorlog witness v1";

/// Plaintext rustls may hold encrypted and unsent before a send drains
/// it to the socket.
const SEND_BUFFER_BYTES: usize = 256 << 10;

/// A node's TLS identity: its certificate chain and key, and the CA its
/// peers' certificates must be signed by.
#[derive(Debug)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> TlsIdentity {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

/// The crypto provider of every TLS config in mirrorlog (partner, witness
/// and client ports, and the tools' and bench's clients).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring, not aws-lc-rs (which needs a C toolchain and cmake to build);
    // rustls 0.23.48 deprecates ring's provider only for lacking the
    // post-quantum key exchange.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM certificates; `what` names them in errors (a flag and a path).
pub fn pem_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what}: no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    Ok(certs)
}

impl TlsIdentity {
    /// From PEM: the certificate chain, its private key and the CA
    /// certificates. `names` are what the errors call the three (flags
    /// and paths, say). The key is checked to match the certificate.
    pub fn from_pem(
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        names: [&str; 3],
    ) -> Result<TlsIdentity, String> {
        let chain = pem_certs(names[0], cert)?;
        let key = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| format!("{}: not a PEM private key: {e}", names[1]))?
            .ok_or_else(|| {
                format!(
                    "{}: no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC)",
                    names[1]
                )
            })?;
        let mut roots = RootCertStore::empty();
        for c in pem_certs(names[2], ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", names[2]))?;
        }
        let id = TlsIdentity {
            chain,
            key,
            roots: Arc::new(roots),
        };
        // Catches a key that is not the certificate's now, not at the
        // first connection.
        id.server_config()
            .map_err(|e| format!("{} with {}: {e}", names[0], names[1]))?;
        Ok(id)
    }

    /// The same certificate and key, with another CA for the peer (a
    /// partner's certificate towards a witness signed by another CA).
    pub fn with_ca(&self, ca: &[u8], name: &str) -> Result<TlsIdentity, String> {
        let mut roots = RootCertStore::empty();
        for c in pem_certs(name, ca)? {
            roots.add(c).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(TlsIdentity {
            roots: Arc::new(roots),
            ..self.clone()
        })
    }

    /// The accepting end: requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let p = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), p.clone())
            .build()
            .map_err(|e| format!("the CA: {e}"))?;
        let mut c = ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("{e} (is the key the certificate's?)"))?;
        // Partners do not resume sessions: no tickets to send or keep.
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    /// The connecting end: verifies the server's certificate against the
    /// CA and presents this identity's.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let p = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), p.clone())
            .build()
            .map_err(|e| format!("the CA: {e}"))?;
        let mut c = ClientConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("{e} (is the key the certificate's?)"))?;
        c.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(c))
    }
}

/// The server name a connecting end expects in the peer's certificate
/// (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("TLS server name {name:?}: {e}"))
}

/// A node's partner-link TLS: both ends, since a mirror may become the
/// principal.
#[derive(Clone, Debug)]
pub struct PartnerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// What the mirror expects in the principal's certificate. None: the
    /// IP address it connects to (with a witness the principal may be
    /// either partner).
    pub server_name: Option<ServerName<'static>>,
    /// Keep the per-message seal (`replication::seal`) inside TLS. Off by
    /// default: TLS already authenticates every record with keys bound to
    /// the PAKE (see docs/design.md, "Partner TLS", for the measurement).
    pub seal: bool,
}

impl PartnerTls {
    pub fn new(id: &TlsIdentity, server_name: Option<&str>) -> Result<PartnerTls, String> {
        Ok(PartnerTls {
            server: id.server_config()?,
            client: id.client_config()?,
            server_name: server_name.map(self::server_name).transpose()?,
            seal: false,
        })
    }
}

/// A partner's TLS to its witness (the connecting end).
#[derive(Clone, Debug)]
pub struct WitnessTls {
    pub client: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl PartialEq for WitnessTls {
    fn eq(&self, other: &WitnessTls) -> bool {
        Arc::ptr_eq(&self.client, &other.client) && self.server_name == other.server_name
    }
}

impl Eq for WitnessTls {}

/// Whether the first bytes of a stream can be a TLS record: a content
/// type (change_cipher_spec 20, alert 21, handshake 22, application 23)
/// and major version 3. None: not enough bytes to say.
///
/// A plaintext partner message starts with its length (little-endian u32,
/// the handshake's messages are under 4 KiB): its second byte is at most
/// 0x0f, and its first byte is never 20-23 with a second byte of 3 unless
/// the message is 788 to 791 bytes long, which no handshake message is
/// (a refusal's reason is cut well short of that). A witness hello starts
/// with "MLWH".
pub fn looks_like_tls(first: &[u8]) -> Option<bool> {
    match first {
        [] => None,
        [t] => {
            if (20..=23).contains(t) {
                None
            } else {
                Some(false)
            }
        }
        [t, major, ..] => Some((20..=23).contains(t) && *major == 3),
    }
}

/// What to tell about a plaintext answer where TLS was expected: the
/// partner's refusal, if it sent one (a plaintext principal refuses a TLS
/// mirror), else that it spoke plaintext.
fn plaintext_answer(bytes: &[u8], who: &str, hint: &str) -> String {
    match Message::decode(bytes) {
        Ok(Some((Message::Refuse { reason, .. }, _))) => {
            format!("the {who} answered without TLS and refused this node: {reason}")
        }
        _ if bytes.starts_with(b"MLWH") || matches!(Message::decode(bytes), Ok(Some(_))) => {
            format!("the {who} answered in plaintext: it has no TLS configured; {hint}")
        }
        _ => format!(
            "the {who} did not answer with TLS ({} bytes that are not a TLS record); {hint}",
            bytes.len()
        ),
    }
}

/// The refusal a plaintext partner node sends a peer that opened with TLS,
/// and the one a TLS principal sends a plaintext mirror; short, so its
/// length never looks like a TLS record header.
pub fn mismatch_refusal(this_has_tls: bool) -> (String, Message) {
    let reason = if this_has_tls {
        "this principal requires TLS on its partner port (--partner-tls-cert, --partner-tls-key, --partner-tls-ca); configure them on both partners"
    } else {
        "this principal has no TLS on its partner port, but the mirror started a TLS handshake; configure --partner-tls-* on both partners or neither"
    };
    debug_assert!(reason.len() < 250);
    let ours = if this_has_tls {
        "the peer speaks the plaintext partner protocol, but this node requires TLS on its partner port; configure --partner-tls-* on both partners"
    } else {
        "the peer started a TLS handshake, but this node has no TLS on its partner port; configure --partner-tls-* on both partners or neither"
    };
    (
        ours.to_string(),
        Message::Refuse {
            code: RefuseCode::Protocol,
            reason: reason.to_string(),
        },
    )
}

/// Which end of a TLS connection, with its configuration.
pub enum TlsEnd<'a> {
    Accept(&'a Arc<ServerConfig>),
    Connect(&'a Arc<ClientConfig>, &'a ServerName<'static>),
}

/// Runs the TLS handshake on `sock` (blocking or not: it is made
/// non-blocking) by `deadline`. `who` names the peer in errors ("mirror",
/// "principal", "witness", "partner"); `hint` says what to configure when
/// the peer turns out to speak plaintext. A plaintext peer is told apart
/// from a broken one (`plaintext_peer`, for the accepting end to answer in
/// plaintext). `spoke` is called once the peer's first flight was a whole
/// TLS handshake message (rustls has an answer to send): the pre-auth
/// gate then closes silent or stalled connections before this one.
pub fn handshake(
    sock: &TcpStream,
    end: TlsEnd<'_>,
    deadline: Instant,
    who: &str,
    hint: &str,
    spoke: &dyn Fn(),
) -> Result<Connection, HandshakeFailure> {
    let fail = |why: String| HandshakeFailure {
        why,
        plaintext_peer: false,
    };
    let mut tls: Connection = match end {
        TlsEnd::Accept(c) => rustls::ServerConnection::new(c.clone())
            .map_err(|e| fail(format!("TLS: {e}")))?
            .into(),
        TlsEnd::Connect(c, name) => ClientConnection::new(c.clone(), name.clone())
            .map_err(|e| fail(format!("TLS: {e}")))?
            .into(),
    };
    sock.set_nonblocking(true)
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let mut sock_ref = sock;
    let mut first = true;
    let mut spoken = false;
    let mut buf = vec![0u8; 16 << 10];
    let timed_out = || {
        fail(format!(
            "the {who} did not complete the TLS handshake in time (is it a TLS peer? {hint})"
        ))
    };
    while tls.is_handshaking() {
        flush(&mut tls, sock, Some(deadline)).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => timed_out(),
            _ => fail(format!("TLS handshake with the {who}: {e}")),
        })?;
        if !tls.is_handshaking() {
            break;
        }
        let n = match sock_ref.read(&mut buf) {
            Ok(0) => {
                return Err(fail(format!(
                    "the {who} closed the connection during the TLS handshake{}",
                    if first {
                        format!(" before answering (is it a TLS peer? {hint})")
                    } else {
                        String::new()
                    }
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                poll2(sock.as_raw_fd(), libc::POLLIN, None, Some(left))
                    .map_err(|e| fail(format!("TLS handshake with the {who}: {e}")))?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("TLS handshake with the {who}: {e}"))),
        };
        if first {
            // One byte may not tell yet; wait for the second.
            let mut got = n;
            while looks_like_tls(&buf[..got]).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                match sock_ref.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(m) => got += m,
                    Err(_) => {}
                }
            }
            if looks_like_tls(&buf[..got]) != Some(true) {
                let why = match end_is_accept(&tls) {
                    true => mismatch_refusal(true).0,
                    false => plaintext_answer(&buf[..got], who, hint),
                };
                return Err(HandshakeFailure {
                    why,
                    plaintext_peer: true,
                });
            }
            first = false;
            feed(&mut tls, sock, &buf[..got], who)?;
        } else {
            feed(&mut tls, sock, &buf[..n], who)?;
        }
        if !spoken && tls.wants_write() {
            spoken = true;
            spoke();
        }
    }
    flush(&mut tls, sock, Some(deadline))
        .map_err(|e| fail(format!("TLS handshake with the {who}: {e}")))?;
    Ok(tls)
}

fn end_is_accept(tls: &Connection) -> bool {
    matches!(tls, Connection::Server(_))
}

/// Why a TLS handshake failed.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub why: String,
    /// The peer spoke the plaintext protocol.
    pub plaintext_peer: bool,
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// A rustls error for people: an alert that says the peer refused this
/// node's certificate says which flag to look at.
fn tls_error(e: &rustls::Error, who: &str) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied,
        ) => format!(
            "{e}: the {who} refused this node's certificate (is it signed by the CA the {who} was given, \
             --partner-tls-ca or the witness's --tls-ca?)"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "{e}: the {who}'s certificate is not signed by this node's CA, or does not name the \
             expected server (--partner-tls-ca, --partner-tls-server-name)"
        ),
        _ => e.to_string(),
    }
}

/// Hands `bytes` (read from the socket) to rustls; on an error, the alert
/// rustls queued goes out before the error returns.
fn feed(
    tls: &mut Connection,
    sock: &TcpStream,
    mut bytes: &[u8],
    who: &str,
) -> Result<(), HandshakeFailure> {
    while !bytes.is_empty() {
        tls.read_tls(&mut bytes).map_err(|e| HandshakeFailure {
            why: format!("TLS handshake with the {who}: {e}"),
            plaintext_peer: false,
        })?;
        if let Err(e) = tls.process_new_packets() {
            let _ = flush(tls, sock, Some(Instant::now() + Duration::from_millis(100)));
            return Err(HandshakeFailure {
                why: format!(
                    "TLS handshake with the {who} failed: {}",
                    tls_error(&e, who)
                ),
                plaintext_peer: false,
            });
        }
    }
    Ok(())
}

/// Writes what rustls has queued to the non-blocking `sock`, waiting for
/// room until `deadline` (None: for ever); past it, `TimedOut`.
fn flush(tls: &mut Connection, sock: &TcpStream, deadline: Option<Instant>) -> io::Result<usize> {
    let mut sent = 0;
    let mut w = sock;
    while tls.wants_write() {
        match tls.write_tls(&mut w) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if poll_until(sock.as_raw_fd(), libc::POLLOUT, None, deadline)?.is_none() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// The exported keying material a PAKE transcript binds (`label` names the
/// link).
pub fn binding(tls: &Connection, label: &[u8]) -> Result<[u8; BINDING_BYTES], String> {
    tls.export_keying_material([0u8; BINDING_BYTES], label, None)
        .map_err(|e| format!("TLS exporter: {e}"))
}

/// One partner connection over TLS (see the module above).
pub struct TlsConn {
    sock: TcpStream,
    tls: Connection,
    rx: RecvBuf,
    scratch: Vec<u8>,
    /// Plaintext bytes handed to rustls (all messages).
    sent: u64,
    send_timeout: Option<Duration>,
    /// Whether `set_seal` turns the per-message seal on (`PartnerTls::seal`).
    keep_seal: bool,
    seal: Option<SealKey>,
    binding: [u8; BINDING_BYTES],
}

impl TlsConn {
    /// Accepts a partner's TLS handshake on `sock` by `deadline`. On a
    /// plaintext peer, answers with a plaintext refusal that says TLS is
    /// required, so both ends log why.
    /// `spoke`: see [`handshake`].
    pub fn accept(
        sock: TcpStream,
        cfg: &PartnerTls,
        deadline: Instant,
        spoke: &dyn Fn(),
    ) -> Result<TlsConn, String> {
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        match handshake(
            &sock,
            TlsEnd::Accept(&cfg.server),
            deadline,
            "mirror",
            "configure --partner-tls-* on both partners",
            spoke,
        ) {
            Ok(tls) => TlsConn::new(sock, tls, cfg.seal),
            Err(f) => {
                if f.plaintext_peer {
                    let mut b = Vec::new();
                    mismatch_refusal(true).1.encode(&mut b);
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = (&sock).write_all(&b);
                }
                Err(f.why)
            }
        }
    }

    /// Connects TLS over `sock` to the principal by `deadline`.
    pub fn connect(
        sock: TcpStream,
        cfg: &PartnerTls,
        deadline: Instant,
    ) -> Result<TlsConn, String> {
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = match &cfg.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(sock.peer_addr().map_err(|e| e.to_string())?.ip().into()),
        };
        let tls = handshake(
            &sock,
            TlsEnd::Connect(&cfg.client, &name),
            deadline,
            "principal",
            "configure --partner-tls-* on both partners or neither",
            &|| {},
        )
        .map_err(|f| f.why)?;
        TlsConn::new(sock, tls, cfg.seal)
    }

    fn new(sock: TcpStream, mut tls: Connection, keep_seal: bool) -> Result<TlsConn, String> {
        let binding = binding(&tls, PARTNER_EXPORTER_LABEL)?;
        tls.set_buffer_limit(Some(SEND_BUFFER_BYTES));
        Ok(TlsConn {
            sock,
            tls,
            rx: RecvBuf::default(),
            scratch: Vec::new(),
            sent: 0,
            send_timeout: None,
            keep_seal,
            seal: None,
            binding,
        })
    }

    /// Encrypts `parts` (in order, as few records as rustls makes of them)
    /// and sends them, waiting at most the send timeout for room.
    fn write_parts(&mut self, parts: &mut [IoSlice<'_>]) -> Result<(), TransportError> {
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        let mut slices: &mut [IoSlice<'_>] = parts;
        while !slices.is_empty() {
            let n = self.tls.writer().write_vectored(slices)?;
            self.sent += n as u64;
            IoSlice::advance_slices(&mut slices, n);
            if n == 0 || self.tls.wants_write() {
                self.flush_until(deadline)?;
            }
        }
        self.flush_until(deadline)
    }

    fn flush_until(&mut self, deadline: Option<Instant>) -> Result<(), TransportError> {
        match flush(&mut self.tls, &self.sock, deadline) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(send_timed_out(self.send_timeout)),
            Err(e) => Err(self.alert_instead(e)),
        }
    }

    /// A send failed (the peer closed): if the peer said why in an alert
    /// before closing (it refused this node's certificate, say), that is
    /// the error, not the broken pipe.
    fn alert_instead(&mut self, e: io::Error) -> TransportError {
        let mut r = &self.sock;
        while let Ok(n) = self.tls.read_tls(&mut r) {
            if let Err(t) = self.tls.process_new_packets() {
                return TransportError::Tls(tls_error(&t, "partner"));
            }
            if n == 0 {
                break;
            }
        }
        e.into()
    }
}

impl Conn for TlsConn {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        msg.encode(&mut scratch);
        if let Some(seal) = self.seal.as_mut() {
            let tag = seal.seal(&[&scratch]);
            scratch.extend_from_slice(&tag);
        }
        let r = self.write_parts(&mut [IoSlice::new(&scratch)]);
        self.scratch = scratch;
        r
    }

    fn send_ships(
        &mut self,
        commit_lsn: u64,
        prev_lsn: u64,
        frames: &[&[u8]],
    ) -> Result<(), TransportError> {
        let headers = ship_headers(commit_lsn, prev_lsn, frames);
        let mut tags = Vec::new();
        ship_tags(self.seal.as_mut(), &headers, frames, &mut tags);
        let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 3);
        for (i, (h, f)) in headers.iter().zip(frames).enumerate() {
            parts.push(IoSlice::new(h));
            parts.push(IoSlice::new(f));
            if let Some(t) = tags.get(i) {
                parts.push(IoSlice::new(t));
            }
        }
        self.write_parts(&mut parts)
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        wake: Option<&Wakeup>,
    ) -> Result<Option<Message>, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(msg) = self.rx.decode()? {
                return Ok(Some(msg));
            }
            let spare = self.rx.spare();
            match self.tls.reader().read(spare) {
                Ok(0) => {
                    self.rx.filled(0);
                    return Err(TransportError::Closed);
                }
                Ok(n) => {
                    self.rx.filled(n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.rx.filled(0),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.rx.filled(0);
                    return Err(TransportError::Closed);
                }
                Err(e) => {
                    self.rx.filled(0);
                    return Err(e.into());
                }
            }
            let mut r = &self.sock;
            match self.tls.read_tls(&mut r) {
                Ok(0) => {
                    // The end: whatever plaintext was complete is read on
                    // the next turn, after which the reader says Closed.
                    self.tls
                        .process_new_packets()
                        .map_err(|e| TransportError::Tls(e.to_string()))?;
                    continue;
                }
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // A record that fails its AEAD tag (tampered in
                        // transit) ends here, before any of it is read.
                        let _ = flush(
                            &mut self.tls,
                            &self.sock,
                            Some(Instant::now() + Duration::from_millis(100)),
                        );
                        return Err(TransportError::Tls(tls_error(&e, "partner")));
                    }
                    // Key updates and alerts want an answer.
                    if self.tls.wants_write() {
                        self.flush_until(self.send_timeout.map(|t| Instant::now() + t))?;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            match poll_until(self.sock.as_raw_fd(), libc::POLLIN, wake, deadline)? {
                None | Some((_, true)) => return Ok(None),
                Some((_, false)) => {}
            }
        }
    }

    fn path(&self) -> TransportPath {
        TransportPath::Tls
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.send_timeout = timeout;
    }

    fn set_recv_limit(&mut self, max_message_bytes: usize) {
        self.rx.set_limit(max_message_bytes);
    }

    fn set_seal(&mut self, keys: SealKeys) {
        // TLS authenticates every record under keys the PAKE is bound to;
        // the seal on top is kept only if configured (`PartnerTls::seal`).
        if self.keep_seal {
            self.seal = Some(keys.send);
            self.rx.set_seal(keys.recv);
        }
    }

    fn channel_binding(&self) -> Option<[u8; BINDING_BYTES]> {
        Some(self.binding)
    }
}

/// A blocking TLS stream for the witness link: reads and writes go through
/// `tls` to `sock`, whose timeouts bound them (a read timing out returns
/// the socket's error, with any partial record kept in `tls`).
pub struct TlsStream {
    tls: Connection,
    sock: TcpStream,
    binding: [u8; BINDING_BYTES],
}

impl TlsStream {
    /// Runs the handshake by `deadline`, then puts `sock` back in blocking
    /// mode (the caller sets its timeouts).
    pub fn handshake(
        sock: TcpStream,
        end: TlsEnd<'_>,
        deadline: Instant,
        who: &str,
        hint: &str,
        spoke: &dyn Fn(),
    ) -> Result<TlsStream, HandshakeFailure> {
        let tls = handshake(&sock, end, deadline, who, hint, spoke)?;
        let binding = binding(&tls, WITNESS_EXPORTER_LABEL).map_err(|why| HandshakeFailure {
            why,
            plaintext_peer: false,
        })?;
        sock.set_nonblocking(false).map_err(|e| HandshakeFailure {
            why: e.to_string(),
            plaintext_peer: false,
        })?;
        Ok(TlsStream { tls, sock, binding })
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn binding(&self) -> [u8; BINDING_BYTES] {
        self.binding
    }

    fn send_queued(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.sock)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.send_queued()?;
            // At the end (0), whatever was complete is read on the next
            // turn, after which the reader says so.
            self.tls.read_tls(&mut self.sock)?;
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.send_queued();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Everything rustls took is sent before returning: nothing waits
        // unsent in it.
        let n = self.tls.writer().write(buf)?;
        self.send_queued()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_queued()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{Hello, Role, PROTOCOL_VERSION};

    /// Every message a plaintext node sends before or instead of its
    /// handshake (hello, pake, confirm, the mismatch refusals) is told
    /// apart from a TLS record by its first bytes, and a real ClientHello
    /// is recognised as TLS: the mismatch errors rest on this.
    #[test]
    fn plaintext_handshake_messages_never_look_like_tls_and_a_client_hello_does() {
        let mut msgs = vec![
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Mirror,
                database_id: [7; 16],
                epoch: u64::MAX,
                nonce: [0x16; 32],
                segment_bytes: u64::MAX,
            }),
            Message::Pake { msg: [0x16; 33] },
            Message::Confirm { mac: [0x03; 32] },
            mismatch_refusal(true).1,
            mismatch_refusal(false).1,
        ];
        for len in 0..1024 {
            msgs.push(Message::Refuse {
                code: RefuseCode::Protocol,
                reason: "x".repeat(len),
            });
        }
        for m in &msgs {
            let mut b = Vec::new();
            m.encode(&mut b);
            if matches!(m, Message::Refuse { reason, .. } if reason.len() >= 700) {
                // Long refusals are sent only after a hello, never where
                // TLS is sniffed.
                continue;
            }
            assert_eq!(looks_like_tls(&b), Some(false), "{m:?}");
        }
        assert_eq!(looks_like_tls(b"MLWH\x03\x00"), Some(false));
        // A ClientHello as rustls sends it.
        let root = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let c = p.self_signed(&key).unwrap();
            (c.pem(), key.serialize_pem())
        };
        let id = TlsIdentity::from_pem(
            root.0.as_bytes(),
            root.1.as_bytes(),
            root.0.as_bytes(),
            ["cert", "key", "ca"],
        )
        .unwrap();
        let mut c = ClientConnection::new(
            id.client_config().unwrap(),
            server_name("127.0.0.1").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        assert_eq!(looks_like_tls(&hello), Some(true));
        assert_eq!(looks_like_tls(&hello[..1]), None);
        assert_eq!(looks_like_tls(&PLAINTEXT_ALERT_FOR_TEST), Some(true));
    }

    const PLAINTEXT_ALERT_FOR_TEST: [u8; 7] = crate::witness::proto::PLAINTEXT_PEER_ALERT;
}
