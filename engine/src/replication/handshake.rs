//! The partner handshake: both sides prove they know the shared secret
//! before a byte of log moves, and agree on database, protocol and epoch.
//!
//! ```text
//!   principal                          mirror
//!   Hello{role, db, epoch, nonce_p} ─▶
//!                                  ◀─ Hello{role, db, epoch, nonce_m}
//!   Auth{HMAC(secret, P-hello, M-hello)} ─▶
//!                                  ◀─ Auth{HMAC(secret, M-hello, P-hello)}
//! ```
//!
//! Each MAC covers both hellos, so both fresh nonces: a recorded
//! exchange cannot be replayed, and neither side can reflect the other's
//! MAC back (the sender's hello comes first). Anything wrong gets a
//! `Refuse` naming why, sent before the connection is closed, and an error
//! for the local operator. Pure: no I/O, no clock.

use std::fmt;
use std::io::Read;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::replication::wire::{
    encode_hello, Hello, Message, RefuseCode, Role, DATABASE_ID_BYTES, MAC_BYTES, NONCE_BYTES,
    PROTOCOL_VERSION,
};

/// The shared secret. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

pub const SECRET_BYTES_MIN: usize = 16;

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

const MAC_CONTEXT: &[u8] = b"mirrorlog-partner-auth-v1";

/// HMAC-SHA256 keyed with the secret, fed context || sender's hello ||
/// receiver's hello.
fn keyed_mac(secret: &Secret, sender: &Hello, receiver: &Hello) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.0)
        .expect("HMAC takes keys of any length");
    let mut buf = Vec::with_capacity(MAC_CONTEXT.len() + 120);
    buf.extend_from_slice(MAC_CONTEXT);
    encode_hello(sender, &mut buf);
    encode_hello(receiver, &mut buf);
    mac.update(&buf);
    mac
}

/// The MAC `sender` sends to `receiver`.
pub fn auth_mac(secret: &Secret, sender: &Hello, receiver: &Hello) -> [u8; MAC_BYTES] {
    keyed_mac(secret, sender, receiver)
        .finalize()
        .into_bytes()
        .into()
}

fn verify_mac(secret: &Secret, sender: &Hello, receiver: &Hello, got: &[u8; MAC_BYTES]) -> bool {
    // Constant-time comparison.
    keyed_mac(secret, sender, receiver)
        .verify_slice(got)
        .is_ok()
}

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
    /// Our hello is sent; waiting for the partner's.
    AwaitHello,
    /// Hellos exchanged, our MAC sent; waiting for the partner's.
    AwaitAuth,
    Done,
    Failed,
}

/// One side of the handshake. Feed it the partner's messages; send what
/// it returns.
pub struct Handshake {
    me: Hello,
    secret: Secret,
    peer: Option<Hello>,
    state: State,
}

/// What the handshake wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these messages, then keep reading.
    Send(Vec<Message>),
    /// The partner proved itself; these are its hello's facts.
    Authenticated { peer: Hello },
}

impl Handshake {
    /// Starts a handshake; returns it and the `Hello` to send at once.
    pub fn start(
        role: Role,
        database_id: [u8; DATABASE_ID_BYTES],
        epoch: u64,
        secret: Secret,
        nonce: [u8; NONCE_BYTES],
    ) -> (Handshake, Message) {
        let me = Hello {
            version: PROTOCOL_VERSION,
            role,
            database_id,
            epoch,
            nonce,
        };
        let hs = Handshake {
            me,
            secret,
            peer: None,
            state: State::AwaitHello,
        };
        (hs, Message::Hello(me))
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
                if peer.version != PROTOCOL_VERSION {
                    return Err(refuse(
                        RefuseCode::BadVersion,
                        format!(
                            "partner speaks protocol version {}, this node speaks version {PROTOCOL_VERSION}",
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
                if peer.role == me.role {
                    return Err(refuse(
                        RefuseCode::RoleConflict,
                        format!("both nodes claim to be the {}", me.role.name()),
                    ));
                }
                // The principal's epoch is never older than its mirror's:
                // every principal incarnation starts a new epoch, and a mirror
                // from an older one catches up (replication::catchup). A mirror
                // from a newer epoch means this principal is stale.
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
                self.peer = Some(peer);
                self.state = State::AwaitAuth;
                let mac = auth_mac(&self.secret, &me, &peer);
                Ok(Step::Send(vec![Message::Auth { mac }]))
            }
            (State::AwaitAuth, Message::Auth { mac }) => {
                let peer = self.peer.expect("AwaitAuth has the peer's hello");
                if !verify_mac(&self.secret, &peer, &me, &mac) {
                    return Err(refuse(
                        RefuseCode::BadAuth,
                        "authentication failed: the partner does not hold the same shared secret"
                            .into(),
                    ));
                }
                Ok(Step::Authenticated { peer })
            }
            (state, m) => Err(refuse(
                RefuseCode::Protocol,
                format!(
                    "unexpected {} message during the handshake ({})",
                    m.kind(),
                    if state == State::AwaitHello {
                        "expected hello"
                    } else {
                        "expected auth"
                    }
                ),
            )),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
