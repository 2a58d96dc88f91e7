//! The witness's wire format: a PAKE handshake keyed with the partners'
//! shared secret (the same exchange as the partner link,
//! `replication::pake`), then requests from partners and replies from the
//! witness, each tagged with a session key.
//!
//! On connect both sides send a hello at once (the witness too), then,
//! having the other's, a key confirmation:
//!
//! ```text
//! hello    magic "MLWH" · version u16 (4) · nonce [32] · pake [33]   71 bytes
//! confirm  HMAC-SHA256(k("confirm " ‖ sender), H(T))                  32 bytes
//! ```
//!
//! `T` is the witness's hello followed by the partner's (over TLS, then
//! the 32 bytes the TLS exporter gives for label "mirrorlog witness v1");
//! `sender` is
//! "witness" or "partner" (see `replication::pake` for the key schedule).
//! Nothing either side sends lets anyone test a guess of the secret
//! offline. Then every frame, either way, is
//!
//! ```text
//! len   u32   bytes that follow (body and tag), at most FRAME_BYTES_MAX
//! body  [..]  a Request or a Reply (first byte: its type)
//! tag   [32]  BLAKE3-keyed(key of the direction, M[21..] ‖ M[..21] ‖ seq u64)
//!             with M = len ‖ body (the rotation of `replication::seal`)
//! ```
//!
//! The keys are "mac partner to witness" and "mac witness to partner";
//! `seq` counts the frames in that direction from 0 (so a reply carries
//! its request's number). A frame is valid only on the connection it was
//! made for, in its place, in its direction: nothing can be replayed,
//! reordered or reflected.
//! Integers are little-endian; a string is a u16 length and UTF-8.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::replication::handshake::Secret;
use crate::replication::pake::{KeyExchange, SessionSecrets, CONFIRM_BYTES, SEED_BYTES};
use crate::replication::seal::{SealKeys, TAG_BYTES};
use crate::transport::tls::{looks_like_tls, TlsStream, BINDING_BYTES};
use crate::witness::RefusalCode;

pub const NONCE_BYTES: usize = crate::replication::wire::NONCE_BYTES;
/// No request or reply is near this; a larger length is refused unread.
pub const FRAME_BYTES_MAX: usize = 4096;
/// 2: the PAKE handshake and session-keyed tags. 1 sent bare nonces and
/// MACed every frame with HMAC(secret), so anyone posing as the witness
/// got a value to test guesses of the secret against offline.
/// 3: a claim's `claim_id` is the node's durable start counter (file
/// `STARTS`), which the witness requires to grow per node; a smaller one
/// (a late copy of an earlier start's claim) is refused.
/// 4: a refusal carries its [`RefusalCode`] (u8) before the reason, so
/// partners decide by the code, never by the reason's text.
pub const WITNESS_PROTOCOL_VERSION: u16 = 4;
const HELLO_MAGIC: &[u8; 4] = b"MLWH";
pub const HELLO_BYTES: usize = 4 + 2 + NONCE_BYTES + crate::replication::pake::PAKE_BYTES;
pub use crate::replication::pake::CONFIRM_BYTES as WITNESS_CONFIRM_BYTES;
const CONTEXT: &[u8] = b"mirrorlog-witness-v2";

/// Which end of a witness connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Witness,
    Partner,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Witness => "witness",
            End::Partner => "partner",
        }
    }
    fn other(self) -> End {
        match self {
            End::Witness => End::Partner,
            End::Partner => End::Witness,
        }
    }
}

/// One end's handshake: `start`, send the hello; `on_hello` with the
/// peer's, send the confirmation; `on_confirm` with the peer's gives the
/// framer.
pub struct WitnessHandshake {
    end: End,
    exchange: KeyExchange,
    hello: [u8; HELLO_BYTES],
    /// Over TLS: the session's exported keying material, appended to the
    /// transcript (`transport::tls`).
    binding: Option<[u8; BINDING_BYTES]>,
}

/// A witness connection's bytes: plaintext, or TLS (`transport::tls`).
pub enum WitnessStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl WitnessStream {
    /// The socket under it, for its timeouts.
    pub fn sock(&self) -> &TcpStream {
        match self {
            WitnessStream::Plain(s) => s,
            WitnessStream::Tls(t) => t.sock(),
        }
    }

    /// Over TLS, what the handshake binds ([`WitnessHandshake::bind_channel`]).
    pub fn binding(&self) -> Option<[u8; BINDING_BYTES]> {
        match self {
            WitnessStream::Plain(_) => None,
            WitnessStream::Tls(t) => Some(t.binding()),
        }
    }
}

impl Read for WitnessStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            WitnessStream::Plain(s) => s.read(buf),
            WitnessStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for WitnessStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            WitnessStream::Plain(s) => s.write(buf),
            WitnessStream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            WitnessStream::Plain(s) => s.flush(),
            WitnessStream::Tls(t) => t.flush(),
        }
    }
}

/// What a TLS witness sends a partner that greeted it in plaintext: a TLS
/// fatal alert record (protocol_version), which the plaintext partner
/// recognises as TLS in its greeting and says so.
pub const PLAINTEXT_PEER_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 70];

/// Waiting for the peer's confirmation.
pub struct Confirming {
    end: End,
    secrets: SessionSecrets,
}

impl WitnessHandshake {
    pub fn start(
        end: End,
        secret: &Secret,
        nonce: [u8; NONCE_BYTES],
        seed: [u8; SEED_BYTES],
    ) -> WitnessHandshake {
        let exchange = KeyExchange::start(secret, CONTEXT, seed);
        let mut hello = [0u8; HELLO_BYTES];
        hello[..4].copy_from_slice(HELLO_MAGIC);
        hello[4..6].copy_from_slice(&WITNESS_PROTOCOL_VERSION.to_le_bytes());
        hello[6..6 + NONCE_BYTES].copy_from_slice(&nonce);
        hello[6 + NONCE_BYTES..].copy_from_slice(&exchange.message());
        WitnessHandshake {
            end,
            exchange,
            hello,
            binding: None,
        }
    }

    /// Binds the handshake to the TLS session it runs in: `binding` ends
    /// the transcript, so the confirmations fail unless both ends see the
    /// same TLS session (a relay terminating TLS fails them).
    pub fn bind_channel(&mut self, binding: Option<[u8; BINDING_BYTES]>) {
        self.binding = binding;
    }

    /// The hello to send.
    pub fn hello(&self) -> [u8; HELLO_BYTES] {
        self.hello
    }

    /// The peer's hello: checks magic and version, finishes the key
    /// exchange; returns the confirmation to send.
    pub fn on_hello(
        self,
        peer: &[u8; HELLO_BYTES],
    ) -> Result<(Confirming, [u8; CONFIRM_BYTES]), String> {
        let theirs = self.end.other().name();
        if looks_like_tls(&peer[..2]) == Some(true) {
            return Err(format!(
                "the {theirs} speaks TLS, but this node has no TLS configured for the witness link; \
                 configure it on both ends (witness: --tls-cert, --tls-key, --tls-ca; partners: \
                 --witness-tls-ca with --partner-tls-cert and --partner-tls-key) or neither"
            ));
        }
        if &peer[..4] != HELLO_MAGIC {
            return Err(format!(
                "the {theirs}'s greeting is not a witness protocol hello: it probably runs an \
                 older mirrorlog (witness protocol 1); this node speaks version \
                 {WITNESS_PROTOCOL_VERSION}: upgrade it"
            ));
        }
        let version = u16::from_le_bytes([peer[4], peer[5]]);
        if version != WITNESS_PROTOCOL_VERSION {
            return Err(format!(
                "the {theirs} speaks witness protocol version {version}, this node speaks \
                 version {WITNESS_PROTOCOL_VERSION}"
            ));
        }
        if peer[6..6 + NONCE_BYTES] == self.hello[6..6 + NONCE_BYTES] {
            return Err(format!("the {theirs} echoed this node's nonce"));
        }
        let pake: [u8; crate::replication::pake::PAKE_BYTES] =
            peer[6 + NONCE_BYTES..].try_into().expect("PAKE_BYTES");
        let (w, p) = match self.end {
            End::Witness => (&self.hello, peer),
            End::Partner => (peer, &self.hello),
        };
        let mut transcript = [&w[..], &p[..]].concat();
        if let Some(b) = &self.binding {
            transcript.extend_from_slice(b);
        }
        let secrets = self.exchange.finish(&pake, CONTEXT, &transcript)?;
        let confirm = secrets.confirmation(self.end.name());
        Ok((
            Confirming {
                end: self.end,
                secrets,
            },
            confirm,
        ))
    }
}

impl Confirming {
    /// The peer's confirmation: verifies it (constant time) and returns
    /// the framer for the rest of the connection.
    pub fn on_confirm(self, got: &[u8; CONFIRM_BYTES]) -> Result<Framer, String> {
        let other = self.end.other();
        if !self.secrets.verify_confirmation(other.name(), got) {
            return Err(format!(
                "authentication failed: the {} does not hold the same shared secret",
                other.name()
            ));
        }
        Ok(Framer {
            keys: self.secrets.seal_keys(self.end.name(), other.name()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `name` starts as principal; its log's last epoch.
    Claim {
        database_id: [u8; 16],
        name: String,
        last_epoch: u64,
        /// One per start of the claimant: retries carry the same.
        claim_id: u64,
    },
    /// The principal of `epoch` renews its lease.
    Renew {
        database_id: [u8; 16],
        name: String,
        epoch: u64,
        exposed: bool,
    },
    /// The mirror of `epoch` asks to become principal.
    Promote {
        database_id: [u8; 16],
        name: String,
        epoch: u64,
        synchronized: bool,
        forced: bool,
    },
    /// What the witness holds.
    Query { database_id: [u8; 16] },
    /// A renewal from the principal of `epoch` whose mirror hardened every
    /// commit it acknowledged: the epoch is no longer exposed.
    Cover {
        database_id: [u8; 16],
        name: String,
        epoch: u64,
    },
    /// The principal of `epoch` hands over (a manual failover).
    Resign {
        database_id: [u8; 16],
        name: String,
        epoch: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A lease of `lease_ms`; the holder counts it down at rate bound
    /// `rho_ppm` (parts per million).
    Lease {
        epoch: u64,
        lease_ms: u64,
        rho_ppm: u32,
    },
    Deposed {
        current: u64,
        principal: Option<String>,
    },
    Granted {
        epoch: u64,
    },
    /// `code` is what partners decide by; `why` is for people.
    Refused {
        code: RefusalCode,
        why: String,
    },
    State {
        epoch: u64,
        principal: Option<String>,
        exposed: bool,
        lease_ms: u64,
    },
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes16(&mut self, v: &[u8; 16]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        // Longer strings are cut (at a character boundary): names are
        // short, reasons are for people.
        let mut end = v.len().min(1024);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_le_bytes());
        self.0.extend_from_slice(&v.as_bytes()[..end]);
        self
    }
    fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("witness message is truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("witness message has flag {v}, not 0 or 1")),
        }
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes16(&mut self) -> Result<[u8; 16], String> {
        Ok(self.take(16)?.try_into().expect("16"))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| "witness message has a string that is not UTF-8".into())
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        Ok(if self.bool()? {
            Some(self.str()?)
        } else {
            None
        })
    }
    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "witness message has {} bytes too many",
                self.0.len()
            ))
        }
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        match self {
            Request::Claim {
                database_id,
                name,
                last_epoch,
                claim_id,
            } => w
                .u8(1)
                .bytes16(database_id)
                .str(name)
                .u64(*last_epoch)
                .u64(*claim_id),
            Request::Renew {
                database_id,
                name,
                epoch,
                exposed,
            } => w
                .u8(2)
                .bytes16(database_id)
                .str(name)
                .u64(*epoch)
                .u8(u8::from(*exposed)),
            Request::Promote {
                database_id,
                name,
                epoch,
                synchronized,
                forced,
            } => w
                .u8(3)
                .bytes16(database_id)
                .str(name)
                .u64(*epoch)
                .u8(u8::from(*synchronized))
                .u8(u8::from(*forced)),
            Request::Query { database_id } => w.u8(4).bytes16(database_id),
            Request::Resign {
                database_id,
                name,
                epoch,
            } => w.u8(5).bytes16(database_id).str(name).u64(*epoch),
            Request::Cover {
                database_id,
                name,
                epoch,
            } => w.u8(6).bytes16(database_id).str(name).u64(*epoch),
        };
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Request, String> {
        let mut r = Reader(b);
        let req = match r.u8()? {
            1 => Request::Claim {
                database_id: r.bytes16()?,
                name: r.str()?,
                last_epoch: r.u64()?,
                claim_id: r.u64()?,
            },
            2 => Request::Renew {
                database_id: r.bytes16()?,
                name: r.str()?,
                epoch: r.u64()?,
                exposed: r.bool()?,
            },
            3 => Request::Promote {
                database_id: r.bytes16()?,
                name: r.str()?,
                epoch: r.u64()?,
                synchronized: r.bool()?,
                forced: r.bool()?,
            },
            4 => Request::Query {
                database_id: r.bytes16()?,
            },
            5 => Request::Resign {
                database_id: r.bytes16()?,
                name: r.str()?,
                epoch: r.u64()?,
            },
            6 => Request::Cover {
                database_id: r.bytes16()?,
                name: r.str()?,
                epoch: r.u64()?,
            },
            t => return Err(format!("unknown witness request type {t}")),
        };
        r.end()?;
        Ok(req)
    }

    pub fn database_id(&self) -> &[u8; 16] {
        match self {
            Request::Claim { database_id, .. }
            | Request::Renew { database_id, .. }
            | Request::Promote { database_id, .. }
            | Request::Query { database_id }
            | Request::Resign { database_id, .. }
            | Request::Cover { database_id, .. } => database_id,
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        match self {
            Reply::Lease {
                epoch,
                lease_ms,
                rho_ppm,
            } => w.u8(1).u64(*epoch).u64(*lease_ms).u32(*rho_ppm),
            Reply::Deposed { current, principal } => {
                w.u8(2).u64(*current).opt_str(principal.as_deref())
            }
            Reply::Granted { epoch } => w.u8(3).u64(*epoch),
            // type 4 · code u8 · reason
            Reply::Refused { code, why } => w.u8(4).u8(code.to_wire()).str(why),
            Reply::State {
                epoch,
                principal,
                exposed,
                lease_ms,
            } => w
                .u8(5)
                .u64(*epoch)
                .opt_str(principal.as_deref())
                .u8(u8::from(*exposed))
                .u64(*lease_ms),
        };
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Reply, String> {
        let mut r = Reader(b);
        let rep = match r.u8()? {
            1 => Reply::Lease {
                epoch: r.u64()?,
                lease_ms: r.u64()?,
                rho_ppm: r.u32()?,
            },
            2 => Reply::Deposed {
                current: r.u64()?,
                principal: r.opt_str()?,
            },
            3 => Reply::Granted { epoch: r.u64()? },
            4 => {
                // Both ends speak the same version, so both know every
                // code: an unknown one is a malformed reply, not `Other`.
                let b = r.u8()?;
                let code = RefusalCode::from_wire(b)
                    .ok_or_else(|| format!("witness refusal has unknown code {b}"))?;
                Reply::Refused {
                    code,
                    why: r.str()?,
                }
            }
            5 => Reply::State {
                epoch: r.u64()?,
                principal: r.opt_str()?,
                exposed: r.bool()?,
                lease_ms: r.u64()?,
            },
            t => return Err(format!("unknown witness reply type {t}")),
        };
        r.end()?;
        Ok(rep)
    }
}

/// The whole handshake of one end over a blocking stream (its timeouts
/// bound it): fresh nonce and seed, hello both ways, confirmation both
/// ways. For tests and simple tools; the service and the client run the
/// same steps with their own deadlines and messages.
pub fn handshake_blocking(
    end: End,
    s: &mut (impl std::io::Read + std::io::Write),
    secret: &Secret,
) -> Result<Framer, String> {
    let nonce = crate::replication::handshake::random_nonce().map_err(|e| e.to_string())?;
    let seed = crate::replication::pake::random_seed().map_err(|e| e.to_string())?;
    let hs = WitnessHandshake::start(end, secret, nonce, seed);
    s.write_all(&hs.hello()).map_err(|e| e.to_string())?;
    let mut theirs = [0u8; HELLO_BYTES];
    s.read_exact(&mut theirs).map_err(|e| e.to_string())?;
    let (c, confirm) = hs.on_hello(&theirs)?;
    s.write_all(&confirm).map_err(|e| e.to_string())?;
    let mut got = [0u8; CONFIRM_BYTES];
    s.read_exact(&mut got).map_err(|e| e.to_string())?;
    c.on_confirm(&got)
}

/// Frames and checks frames for one connection, after the handshake.
pub struct Framer {
    keys: SealKeys,
}

impl Framer {
    /// The whole frame (length, body, tag) for the next `body` sent.
    pub fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        let len = ((body.len() + TAG_BYTES) as u32).to_le_bytes();
        let tag = self.keys.send.seal(&[&len, body]);
        let mut f = Vec::with_capacity(4 + body.len() + TAG_BYTES);
        f.extend_from_slice(&len);
        f.extend_from_slice(body);
        f.extend_from_slice(&tag);
        f
    }

    /// Checks the next received frame's payload (what followed the length)
    /// and returns its body; the comparison is constant-time.
    pub fn open<'a>(&mut self, payload: &'a [u8]) -> Result<&'a [u8], String> {
        if payload.len() < TAG_BYTES {
            return Err("witness frame shorter than its tag".into());
        }
        let (body, tag) = payload.split_at(payload.len() - TAG_BYTES);
        let msg = [&(payload.len() as u32).to_le_bytes()[..], body].concat();
        self.keys
            .recv
            .open(&msg, tag.try_into().expect("TAG_BYTES"))
            .map_err(|_| {
                "witness frame failed its integrity check (altered, replayed or reordered on the way); the connection is closed".to_string()
            })?;
        Ok(body)
    }
}

/// Reads one frame's payload from `r` (blocking, within its timeouts).
pub fn read_frame(r: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("witness frame of {len} bytes exceeds {FRAME_BYTES_MAX}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef-witness".to_vec()).unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        let db = *b"mirrorlog\0\0\0\0\0\0\0";
        for req in [
            Request::Claim {
                database_id: db,
                name: "127.0.0.1:7400".into(),
                last_epoch: 9,
                claim_id: 77,
            },
            Request::Renew {
                database_id: db,
                name: "a".into(),
                epoch: 3,
                exposed: true,
            },
            Request::Promote {
                database_id: db,
                name: "b".into(),
                epoch: 3,
                synchronized: true,
                forced: false,
            },
            Request::Query { database_id: db },
            Request::Resign {
                database_id: db,
                name: "a".into(),
                epoch: 7,
            },
            Request::Cover {
                database_id: db,
                name: "a".into(),
                epoch: 8,
            },
        ] {
            assert_eq!(Request::decode(&req.encode()), Ok(req.clone()));
            let b = req.encode();
            assert!(Request::decode(&b[..b.len() - 1]).is_err());
        }
        for rep in [
            Reply::Lease {
                epoch: 1,
                lease_ms: 2000,
                rho_ppm: 10_000,
            },
            Reply::Deposed {
                current: 4,
                principal: Some("b".into()),
            },
            Reply::Deposed {
                current: 4,
                principal: None,
            },
            Reply::Granted { epoch: 5 },
            Reply::Refused {
                code: RefusalCode::LeaseLive,
                why: "no".into(),
            },
            Reply::State {
                epoch: 5,
                principal: None,
                exposed: true,
                lease_ms: 1,
            },
        ] {
            assert_eq!(Reply::decode(&rep.encode()), Ok(rep.clone()));
        }
    }

    /// Every refusal code survives the wire, and its byte is the one
    /// docs/format.md gives (type 4 · code · reason).
    #[test]
    fn every_refusal_code_round_trips() {
        for code in RefusalCode::ALL {
            let rep = Reply::Refused {
                code,
                why: "the reason".into(),
            };
            let b = rep.encode();
            assert_eq!(&b[..2], &[4, code.to_wire()]);
            assert_eq!(&b[2..4], &10u16.to_le_bytes());
            assert_eq!(Reply::decode(&b), Ok(rep));
            // Cut anywhere, it is an error.
            for n in 0..b.len() {
                assert!(Reply::decode(&b[..n]).is_err(), "{code:?} cut at {n}");
            }
        }
        // The example in docs/format.md.
        let rep = Reply::Refused {
            code: RefusalCode::LeaseLive,
            why: "no".into(),
        };
        assert_eq!(rep.encode(), [0x04, 0x01, 0x02, 0x00, 0x6e, 0x6f]);
    }

    #[test]
    fn an_unknown_refusal_code_is_an_error() {
        let mut b = Reply::Refused {
            code: RefusalCode::Other,
            why: "x".into(),
        }
        .encode();
        for unknown in RefusalCode::ALL.len() as u8..=u8::MAX {
            b[1] = unknown;
            let e = Reply::decode(&b).unwrap_err();
            assert!(
                e.contains(&format!("unknown code {unknown}")),
                "{unknown}: {e}"
            );
        }
    }

    /// Runs both ends' handshakes in memory.
    fn connect(
        witness: &Secret,
        partner: &Secret,
    ) -> (Result<Framer, String>, Result<Framer, String>) {
        let w = WitnessHandshake::start(End::Witness, witness, [7; NONCE_BYTES], [1; 32]);
        let p = WitnessHandshake::start(End::Partner, partner, [9; NONCE_BYTES], [2; 32]);
        let (wh, ph) = (w.hello(), p.hello());
        let (wc, wconf) = w.on_hello(&ph).unwrap();
        let (pc, pconf) = p.on_hello(&wh).unwrap();
        (wc.on_confirm(&pconf), pc.on_confirm(&wconf))
    }

    #[test]
    fn the_handshake_needs_the_same_secret_on_both_ends() {
        let (w, p) = connect(&secret(), &secret());
        assert!(w.is_ok() && p.is_ok());
        let other = Secret::new(b"another-secret-of-16+".to_vec()).unwrap();
        let (w, p) = connect(&secret(), &other);
        assert!(w
            .err()
            .unwrap()
            .contains("does not hold the same shared secret"));
        assert!(p
            .err()
            .unwrap()
            .contains("does not hold the same shared secret"));
    }

    #[test]
    fn an_old_or_other_version_is_named() {
        let w = WitnessHandshake::start(End::Partner, &secret(), [7; NONCE_BYTES], [1; 32]);
        // Version 1 sent a bare 32-byte nonce and then a frame.
        let mut v1 = [0x5au8; HELLO_BYTES];
        v1[..4].copy_from_slice(&[1, 2, 3, 4]);
        let e = w.on_hello(&v1).err().unwrap();
        assert!(e.contains("witness protocol 1"), "{e}");
        let w = WitnessHandshake::start(End::Partner, &secret(), [7; NONCE_BYTES], [1; 32]);
        let mut v2 =
            WitnessHandshake::start(End::Witness, &secret(), [8; NONCE_BYTES], [2; 32]).hello();
        v2[4..6].copy_from_slice(&3u16.to_le_bytes());
        let e = w.on_hello(&v2).err().unwrap();
        assert!(e.contains("version 3") && e.contains("version 4"), "{e}");
    }

    #[test]
    fn a_frame_is_valid_only_in_its_place_and_direction() {
        let (w, p) = connect(&secret(), &secret());
        let (mut w, mut p) = (w.unwrap(), p.unwrap());
        let f0 = p.seal(b"request 0");
        let f1 = p.seal(b"request 1");
        assert!(p.open(&f0[4..]).is_err(), "reflected");
        assert!(w.open(&f1[4..]).is_err(), "out of order");
        assert_eq!(w.open(&f0[4..]), Ok(&b"request 0"[..]));
        assert!(w.open(&f0[4..]).is_err(), "replayed");
        let mut bad = f1[4..].to_vec();
        bad[0] ^= 1;
        assert!(w.open(&bad).is_err(), "tampered");
        assert_eq!(w.open(&f1[4..]), Ok(&b"request 1"[..]));
        let r = w.seal(b"reply 0");
        assert_eq!(p.open(&r[4..]), Ok(&b"reply 0"[..]));
        // Another connection's frames, with the same secret, fail.
        let (w2, _) = connect(&secret(), &secret());
        let mut w2 = w2.unwrap();
        let (_, p3) = {
            let w = WitnessHandshake::start(End::Witness, &secret(), [3; NONCE_BYTES], [5; 32]);
            let p = WitnessHandshake::start(End::Partner, &secret(), [4; NONCE_BYTES], [6; 32]);
            let (wh, ph) = (w.hello(), p.hello());
            let (wc, wconf) = w.on_hello(&ph).unwrap();
            let (pc, pconf) = p.on_hello(&wh).unwrap();
            (wc.on_confirm(&pconf), pc.on_confirm(&wconf))
        };
        let f = p3.unwrap().seal(b"request 0");
        assert!(w2.open(&f[4..]).is_err(), "another connection");
    }
}
