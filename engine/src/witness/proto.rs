//! The witness's wire format: requests from partners, replies from the
//! witness, each authenticated with the partners' shared secret.
//!
//! On connect the witness sends a fresh 32-byte nonce, and the partner
//! answers with a fresh nonce of its own. Then every frame, either way, is
//!
//! ```text
//! len   u32   bytes that follow (body and MAC), at most FRAME_BYTES_MAX
//! body  [..]  a Request or a Reply (first byte: its type)
//! mac   [32]  HMAC-SHA256(secret, CONTEXT || witness nonce || partner nonce
//!                          || direction || seq || body)
//! ```
//!
//! `direction` is 0 for a request and 1 for a reply; `seq` (u64) counts
//! the requests on this connection from 0, and a reply carries its
//! request's. So a frame is valid only on the connection it was made for,
//! in its place, in its direction: nothing can be replayed or reflected.
//! Both sides pick a nonce: a recorded exchange replayed by someone posing
//! as the witness fails the partner's check, as one replayed at the witness
//! fails the witness's.
//! Integers are little-endian; a string is a u16 length and UTF-8.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::replication::handshake::Secret;

pub const NONCE_BYTES: usize = crate::replication::wire::NONCE_BYTES;
const MAC_BYTES: usize = 32;
const CONTEXT: &[u8] = b"mirrorlog-witness-v1";
/// No request or reply is near this; a larger length is refused unread.
pub const FRAME_BYTES_MAX: usize = 4096;

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
    Refused {
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
            Reply::Refused { why } => w.u8(4).str(why),
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
            4 => Reply::Refused { why: r.str()? },
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

/// Frames and checks frames for one connection.
pub struct Framer {
    secret: Secret,
    witness_nonce: [u8; NONCE_BYTES],
    partner_nonce: [u8; NONCE_BYTES],
}

pub const REQUEST: u8 = 0;
pub const REPLY: u8 = 1;

impl Framer {
    pub fn new(
        secret: Secret,
        witness_nonce: [u8; NONCE_BYTES],
        partner_nonce: [u8; NONCE_BYTES],
    ) -> Framer {
        Framer {
            secret,
            witness_nonce,
            partner_nonce,
        }
    }

    fn mac(&self, direction: u8, seq: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.bytes())
            .expect("HMAC takes keys of any length");
        m.update(CONTEXT);
        m.update(&self.witness_nonce);
        m.update(&self.partner_nonce);
        m.update(&[direction]);
        m.update(&seq.to_le_bytes());
        m.update(body);
        m
    }

    /// The whole frame (length, body, MAC) for `body`.
    pub fn seal(&self, direction: u8, seq: u64, body: &[u8]) -> Vec<u8> {
        let mac: [u8; MAC_BYTES] = self
            .mac(direction, seq, body)
            .finalize()
            .into_bytes()
            .into();
        let mut f = Vec::with_capacity(4 + body.len() + MAC_BYTES);
        f.extend_from_slice(&((body.len() + MAC_BYTES) as u32).to_le_bytes());
        f.extend_from_slice(body);
        f.extend_from_slice(&mac);
        f
    }

    /// Checks a frame's payload (what followed the length) and returns its
    /// body; the MAC comparison is constant-time.
    pub fn open<'a>(&self, direction: u8, seq: u64, payload: &'a [u8]) -> Result<&'a [u8], String> {
        if payload.len() < MAC_BYTES {
            return Err("witness frame shorter than its MAC".into());
        }
        let (body, mac) = payload.split_at(payload.len() - MAC_BYTES);
        self.mac(direction, seq, body)
            .verify_slice(mac)
            .map_err(|_| {
                "witness frame failed authentication (wrong secret, or tampered)".to_string()
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
            Reply::Refused { why: "no".into() },
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

    #[test]
    fn a_frame_is_valid_only_in_its_place_and_direction() {
        let f = Framer::new(secret(), [7; NONCE_BYTES], [9; NONCE_BYTES]);
        let frame = f.seal(REQUEST, 3, b"body");
        let payload = &frame[4..];
        assert_eq!(f.open(REQUEST, 3, payload), Ok(&b"body"[..]));
        assert!(
            f.open(REQUEST, 4, payload).is_err(),
            "replayed in another place"
        );
        assert!(f.open(REPLY, 3, payload).is_err(), "reflected");
        let mine = Framer::new(secret(), [7; NONCE_BYTES], [10; NONCE_BYTES]);
        assert!(
            mine.open(REQUEST, 3, payload).is_err(),
            "the witness's nonce replayed with another partner nonce"
        );
        let other = Framer::new(secret(), [8; NONCE_BYTES], [9; NONCE_BYTES]);
        assert!(
            other.open(REQUEST, 3, payload).is_err(),
            "another connection"
        );
        let wrong = Framer::new(
            Secret::new(b"another-secret-of-16+".to_vec()).unwrap(),
            [7; NONCE_BYTES],
            [9; NONCE_BYTES],
        );
        assert!(wrong.open(REQUEST, 3, payload).is_err(), "wrong secret");
        let mut bad = payload.to_vec();
        bad[0] ^= 1;
        assert!(f.open(REQUEST, 3, &bad).is_err(), "tampered");
    }
}
