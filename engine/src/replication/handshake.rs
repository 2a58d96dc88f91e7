//! The partner handshake: both sides prove they know the shared secret
//! before a byte of log moves, without revealing anything that lets
//! anyone test a guess of it offline, agree on database, protocol, segment
//! size and epoch, and derive the session's message keys.
//!
//! ```text
//!   principal                                   mirror
//!   Hello{v5, role, db, epoch, nonce_p, seg}, Pake{X} ─▶
//!                       ◀─ Hello{v5, role, db, epoch, nonce_m, seg}, Pake{Y}
//!   (checks the mirror's hello; K = SPAKE2(secret, x, Y); keys from K and
//!    the transcript T = both hellos and both PAKE messages)
//!   Confirm{HMAC(k_confirm_principal, H(T))} ─▶
//!                            ◀─ Confirm{HMAC(k_confirm_mirror, H(T))}
//!   every later message ‖ tag (`seal`), keyed per direction from K
//! ```
//!
//! Over TLS (`transport::tls`) the transcript ends with 32 bytes of the
//! TLS session's exported keying material ([`Handshake::bind_channel`]),
//! so the handshake only succeeds end to end on one TLS session; the
//! seal is then off unless configured (TLS authenticates every record).
//!
//! The PAKE (`pake`, SPAKE2) makes every value a side sends either a
//! uniformly random point or a MAC keyed from the exchange's output, which
//! needs the peer's ephemeral scalar as well as the secret: an eavesdropper
//! learns nothing about the secret, and an attacker posing as a partner
//! tests exactly one guess per connection (the one its PAKE message
//! committed to). The transcript binds the nonces, so a recorded exchange
//! cannot be replayed; the confirmations are keyed by their sender's role,
//! so neither can be reflected. Anything wrong gets a `Refuse` naming why,
//! sent before the connection is closed, and an error for the local
//! operator. Pure: no I/O, no clock.

use std::fmt;
use std::io::Read;
use std::path::Path;

use thiserror::Error;

use crate::replication::pake::{KeyExchange, SessionSecrets, SEED_BYTES};
use crate::replication::seal::SealKeys;
use crate::replication::wire::{
    encode_hello, Hello, Message, RefuseCode, Role, DATABASE_ID_BYTES, NONCE_BYTES,
    PROTOCOL_VERSION,
};

/// The shared secret. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

// Callers that load a secret log `Secret::entropy_warning()` once.

pub const SECRET_BYTES_MIN: usize = 16;
/// Below this estimated entropy a secret gets a warning at load.
pub const SECRET_ENTROPY_BITS_MIN: f64 = 80.0;

fn entropy_bits_estimate(b: &[u8]) -> f64 {
    let has = |f: fn(&u8) -> bool| b.iter().any(f);
    let mut alphabet = 0u32;
    if has(u8::is_ascii_lowercase) {
        alphabet += 26;
    }
    if has(u8::is_ascii_uppercase) {
        alphabet += 26;
    }
    if has(u8::is_ascii_digit) {
        alphabet += 10;
    }
    let punct = |c: &u8| c.is_ascii_punctuation() || *c == b' ';
    if has(punct) {
        alphabet += 33;
    }
    if b.iter().any(|c| !c.is_ascii_alphanumeric() && !punct(c)) {
        alphabet += 161;
    }
    let alphabet = alphabet.clamp(1, 256);
    let mut chars = b.len() as f64 * f64::from(alphabet).log2();
    let mut seen = [false; 256];
    for &c in b {
        seen[c as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    if distinct < 8 {
        chars = chars.min(b.len() as f64 * (distinct.max(1) as f64).log2());
    }
    let mut words = 0.0;
    let mut punct_seen = [false; 256];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let run = &b[start..i];
            let wordlike = run.len() <= 10 && run[1..].iter().all(u8::is_ascii_lowercase);
            words += if wordlike {
                11.0
            } else {
                run.len() as f64 * 52f64.log2()
            };
            continue;
        }
        words += if c.is_ascii_digit() {
            10f64.log2()
        } else if punct(&c) {
            if std::mem::replace(&mut punct_seen[c as usize], true) {
                0.0
            } else {
                5.0
            }
        } else {
            8.0
        };
        i += 1;
    }
    chars.min(words)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {path} is readable or writable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("secret is {got} bytes; use at least {SECRET_BYTES_MIN} random bytes (e.g. head -c 32 /dev/urandom | base64 > FILE)")]
    TooShort { got: usize },
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort { got: bytes.len() });
        }
        Ok(Secret(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A rough upper estimate of the secret's entropy in bits, for
    /// [`Secret::entropy_warning`]. The smallest of:
    ///
    /// * characters: length × log2(alphabet), the alphabet being the sum of
    ///   the classes that occur (26 lowercase, 26 uppercase, 10 digits, 33
    ///   other printable ASCII, 161 for any other byte; at most 256), and
    ///   with fewer than 8 distinct bytes, length × log2(distinct bytes);
    /// * words, as a dictionary attack sees them: every run of at most 10
    ///   lowercase letters (optionally capitalised) is one word from a
    ///   2,048-word list, 11 bits; a longer or mixed-case run 5.7 bits a
    ///   letter; a digit 3.3 bits; other printable ASCII 5 bits the first
    ///   time a byte value occurs and nothing after (a separator repeated);
    ///   any other byte 8 bits.
    ///
    /// `head -c 32 /dev/urandom | base64` scores far above the threshold;
    /// the README's old example `a-shared-secret-of-16+-bytes` scores 72.
    pub fn entropy_bits_estimate(&self) -> f64 {
        entropy_bits_estimate(&self.0)
    }

    /// A warning to log once when the secret is loaded, if its estimated
    /// entropy is below [`SECRET_ENTROPY_BITS_MIN`]. The handshake allows
    /// no offline guessing, but every connection is one online guess, and
    /// a secret people can guess should not guard a database.
    pub fn entropy_warning(&self) -> Option<String> {
        let bits = self.entropy_bits_estimate();
        (bits < SECRET_ENTROPY_BITS_MIN).then(|| {
            format!(
                "the shared secret looks weak: about {bits:.0} bits of entropy by a simple estimate \
                 (words, character classes, repeated bytes), below {SECRET_ENTROPY_BITS_MIN:.0}; \
                 use random bytes, e.g. head -c 32 /dev/urandom | base64 > FILE"
            )
        })
    }

    /// Reads a secret file: private to its owner, at least 16 bytes, one
    /// trailing newline ignored (so `echo`-made files work).
    pub fn load(path: impl AsRef<Path>) -> Result<Secret, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| SecretError::Io {
            path: shown.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions { path: shown, mode });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Secret::new(bytes)
    }
}

/// A fresh nonce from the kernel's random source.
pub fn random_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

/// Names the protocol in the SPAKE2 identity and the key schedule.
const CONTEXT: &[u8] = b"mirrorlog-partner-v5";

/// Why a handshake failed. `refuse` is the message to send the partner
/// before closing (None when the partner refused us, or the failure is on
/// the wire itself).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{reason}")]
pub struct HandshakeError {
    pub code: RefuseCode,
    pub reason: String,
    pub refuse: Option<Message>,
}

fn refuse(code: RefuseCode, reason: String) -> HandshakeError {
    HandshakeError {
        code,
        refuse: Some(Message::Refuse {
            code,
            reason: reason.clone(),
        }),
        reason,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our hello and PAKE message are sent; waiting for the partner's hello.
    AwaitHello,
    /// The partner's hello passed; waiting for its PAKE message.
    AwaitPake,
    /// Our confirmation is sent; waiting for the partner's.
    AwaitConfirm,
    Done,
    Failed,
}

/// One side of the handshake. Feed it the partner's messages; send what
/// it returns.
pub struct Handshake {
    me: Hello,
    exchange: Option<KeyExchange>,
    my_pake: [u8; crate::replication::wire::PAKE_BYTES],
    peer: Option<Hello>,
    secrets: Option<SessionSecrets>,
    state: State,
    /// Over TLS: the session's exported keying material, appended to the
    /// transcript (`transport::tls`).
    binding: Option<[u8; crate::transport::tls::BINDING_BYTES]>,
}

/// What the handshake wants next.
#[derive(Debug)]
pub enum Step {
    /// Send these messages, then keep reading.
    Send(Vec<Message>),
    /// The partner proved itself; these are its hello's facts and the
    /// session's message keys (install them in the connection before the
    /// next message is read or sent).
    Authenticated { peer: Hello, keys: SealKeys },
}

impl Handshake {
    /// Starts a handshake; returns it and the messages to send at once
    /// (`hello`, then `pake`). `nonce` is public, `seed` is secret
    /// randomness for the key exchange (both fresh from
    /// [`random_nonce`] and [`crate::replication::pake::random_seed`];
    /// tests fix them).
    pub fn start(
        role: Role,
        database_id: [u8; DATABASE_ID_BYTES],
        epoch: u64,
        secret: Secret,
        nonce: [u8; NONCE_BYTES],
        seed: [u8; SEED_BYTES],
    ) -> (Handshake, Vec<Message>) {
        Handshake::start_with_segment_bytes(
            role,
            database_id,
            epoch,
            secret,
            nonce,
            seed,
            crate::log::segment::SEGMENT_BYTES_DEFAULT as u64,
        )
    }

    /// [`Handshake::start`] for a node whose log makes segments of
    /// `segment_bytes` (the default's elsewhere): the partner must make
    /// the same, or the handshake refuses it (`RefuseCode::BadConfig`).
    pub fn start_with_segment_bytes(
        role: Role,
        database_id: [u8; DATABASE_ID_BYTES],
        epoch: u64,
        secret: Secret,
        nonce: [u8; NONCE_BYTES],
        seed: [u8; SEED_BYTES],
        segment_bytes: u64,
    ) -> (Handshake, Vec<Message>) {
        let me = Hello {
            version: PROTOCOL_VERSION,
            role,
            database_id,
            epoch,
            nonce,
            segment_bytes,
        };
        let exchange = KeyExchange::start(&secret, CONTEXT, seed);
        let my_pake = exchange.message();
        let hs = Handshake {
            me,
            exchange: Some(exchange),
            my_pake,
            peer: None,
            secrets: None,
            state: State::AwaitHello,
            binding: None,
        };
        (hs, vec![Message::Hello(me), Message::Pake { msg: my_pake }])
    }

    /// Binds the handshake to the TLS session it runs in: `binding` (the
    /// exporter output, `transport::tls::binding`) ends the transcript, so
    /// the confirmations fail unless both sides see the same TLS session.
    /// Call before the first message is handled.
    pub fn bind_channel(&mut self, binding: [u8; crate::transport::tls::BINDING_BYTES]) {
        assert_eq!(
            self.state,
            State::AwaitHello,
            "bind before the handshake runs"
        );
        self.binding = Some(binding);
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Handles one message from the partner.
    pub fn on_message(&mut self, msg: Message) -> Result<Step, HandshakeError> {
        let result = self.step(msg);
        self.state = match (&result, self.state) {
            (Err(_), _) => State::Failed,
            (Ok(Step::Authenticated { .. }), _) => State::Done,
            (Ok(Step::Send(_)), s) => s,
        };
        if self.state == State::Failed {
            self.exchange = None;
            self.secrets = None;
        }
        result
    }

    fn step(&mut self, msg: Message) -> Result<Step, HandshakeError> {
        let me = self.me;
        match (self.state, msg) {
            (State::Failed | State::Done, m) => Err(refuse(
                RefuseCode::Protocol,
                format!("unexpected {} message after the handshake ended", m.kind()),
            )),
            (_, Message::Refuse { code, reason }) => Err(HandshakeError {
                code,
                reason: format!(
                    "the {} refused this node: {reason}",
                    me.role.opposite().name()
                ),
                refuse: None,
            }),
            (State::AwaitHello, Message::Hello(peer)) => {
                check_hello(&me, &peer)?;
                self.peer = Some(peer);
                self.state = State::AwaitPake;
                Ok(Step::Send(Vec::new()))
            }
            (State::AwaitPake, Message::Pake { msg }) => {
                let peer = self.peer.expect("AwaitPake has the peer's hello");
                let exchange = self.exchange.take().expect("AwaitPake has the exchange");
                // The transcript in the principal's order, whoever we are.
                let (p_hello, m_hello, p_pake, m_pake) = match me.role {
                    Role::Principal => (me, peer, self.my_pake, msg),
                    Role::Mirror => (peer, me, msg, self.my_pake),
                };
                let mut t = Vec::with_capacity(2 * 68 + 2 * 33);
                encode_hello(&p_hello, &mut t);
                encode_hello(&m_hello, &mut t);
                t.extend_from_slice(&p_pake);
                t.extend_from_slice(&m_pake);
                if let Some(b) = &self.binding {
                    t.extend_from_slice(b);
                }
                let secrets = exchange
                    .finish(&msg, CONTEXT, &t)
                    .map_err(|e| refuse(RefuseCode::Protocol, e))?;
                let mac = secrets.confirmation(me.role.name());
                self.secrets = Some(secrets);
                self.state = State::AwaitConfirm;
                Ok(Step::Send(vec![Message::Confirm { mac }]))
            }
            (State::AwaitConfirm, Message::Confirm { mac }) => {
                let peer = self.peer.expect("AwaitConfirm has the peer's hello");
                let secrets = self.secrets.take().expect("AwaitConfirm has the secrets");
                if !secrets.verify_confirmation(peer.role.name(), &mac) {
                    return Err(refuse(
                        RefuseCode::BadAuth,
                        "authentication failed: the partner does not hold the same shared secret"
                            .into(),
                    ));
                }
                let keys = secrets.seal_keys(me.role.name(), peer.role.name());
                Ok(Step::Authenticated { peer, keys })
            }
            (state, m) => Err(refuse(
                RefuseCode::Protocol,
                format!(
                    "unexpected {} message during the handshake ({})",
                    m.kind(),
                    match state {
                        State::AwaitHello => "expected hello",
                        State::AwaitPake => "expected pake",
                        _ => "expected confirm",
                    }
                ),
            )),
        }
    }
}

/// The partner's hello against ours: version, database, segment size,
/// roles, epochs.
fn check_hello(me: &Hello, peer: &Hello) -> Result<(), HandshakeError> {
    if peer.version != PROTOCOL_VERSION {
        let hint = if peer.version < PROTOCOL_VERSION {
            "; upgrade the partner (version 3 and older authenticated in a way that let the shared secret be guessed offline)"
        } else {
            "; upgrade this node"
        };
        return Err(refuse(
            RefuseCode::BadVersion,
            format!(
                "partner speaks protocol version {}, this node speaks version {PROTOCOL_VERSION}{hint}",
                peer.version
            ),
        ));
    }
    if peer.database_id != me.database_id {
        return Err(refuse(
            RefuseCode::BadDatabase,
            format!(
                "partner serves database {}, this node serves {}; check database_id on both",
                hex(&peer.database_id),
                hex(&me.database_id)
            ),
        ));
    }
    // An LSN is a byte position in the log, segment padding included: a
    // frame that does not fit a segment's rest starts the next segment.
    // Partners with different segment sizes place the same frames at
    // different LSNs, so the mirror could never continue the principal's
    // log ("frame does not continue the log", for ever).
    if peer.segment_bytes != me.segment_bytes {
        return Err(refuse(
            RefuseCode::BadConfig,
            format!(
                "the partners' log segments differ: the {} makes segments of {} bytes, this {} of {}; \
                 LSNs count segment padding, so both must use the same --segment-bytes \
                 (restart one with the other's)",
                peer.role.name(),
                peer.segment_bytes,
                me.role.name(),
                me.segment_bytes
            ),
        ));
    }
    if peer.role == me.role {
        return Err(refuse(
            RefuseCode::RoleConflict,
            format!("both nodes claim to be the {}", me.role.name()),
        ));
    }
    // The principal's epoch is never older than its mirror's: every
    // principal incarnation starts a new epoch, and a mirror from an older
    // one catches up (replication::catchup). A mirror from a newer epoch
    // means this principal is stale.
    let (principal_epoch, mirror_epoch) = match me.role {
        Role::Principal => (me.epoch, peer.epoch),
        Role::Mirror => (peer.epoch, me.epoch),
    };
    if mirror_epoch > principal_epoch {
        return Err(refuse(
            RefuseCode::EpochMismatch,
            format!(
                "the mirror is at epoch {mirror_epoch}, newer than the principal's epoch \
                 {principal_epoch}: the principal is stale and must not serve it"
            ),
        ));
    }
    if peer.nonce == me.nonce {
        // Our own hello reflected back: not a partner.
        return Err(refuse(
            RefuseCode::Protocol,
            "partner echoed this node's nonce".into(),
        ));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn weak_secrets_get_a_warning_and_random_ones_do_not() {
        for weak in [
            "a-shared-secret-of-16+-bytes",
            "correct-horse-battery-staple",
            "Password1234567890",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababab",
            "0000000000000000000000000000000000000000",
        ] {
            let s = secret(weak);
            assert!(
                s.entropy_warning().is_some(),
                "{weak}: {} bits",
                s.entropy_bits_estimate()
            );
        }
        for strong in [
            // head -c 32 /dev/urandom | base64
            "q7ZbR0m3x1Vd9KjT2sXw8YhLc4uPnF6aGe5iJoQrWtE=",
            // head -c 16 /dev/urandom | xxd -p
            "9f3b2c7d41e08a6f5b19d2c4e7a30f86",
        ] {
            let s = secret(strong);
            assert!(
                s.entropy_warning().is_none(),
                "{strong}: {} bits",
                s.entropy_bits_estimate()
            );
        }
        let raw: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(13))
            .collect();
        assert!(Secret::new(raw).unwrap().entropy_warning().is_none());
        let readme = secret("a-shared-secret-of-16+-bytes").entropy_bits_estimate();
        assert!((readme - 71.6).abs() < 1.0, "{readme}");
    }
}
