//! Partner wire messages: what principal and mirror say to each other.
//!
//! Every message is a 4-byte little-endian length (of what follows it), a
//! 1-byte type and a body. The length is checked against
//! [`MESSAGE_BYTES_MAX`] before anything is allocated, and every body has an
//! exact size (or, for `Refuse` and `Ship`, a bounded one), so hostile bytes
//! get an error, never a panic or an allocation bomb. Byte layouts are in
//! docs/format.md ("Partner protocol").

use thiserror::Error;

use crate::log::frame::{BATCH_RAW_BYTES_MAX, FRAME_ALIGN, FRAME_HEADER_BYTES};

/// 5: the hello carries the sender's segment size (partners whose segments
/// differ place frames at different LSNs, and shipping could never
/// continue; the handshake refuses them). 4: the handshake is a PAKE
/// (`pake`, `confirm`) and every later message carries a MAC trailer
/// (`seal`); 3 authenticated with HMAC(secret) over the hellos, which let
/// anyone who connected guess the secret offline.
pub const PROTOCOL_VERSION: u16 = 5;
/// Bytes before the body: length (4) and type (1).
pub const MESSAGE_HEADER_BYTES: usize = 5;
/// The largest frame a log can hold (a stored payload never exceeds the raw
/// bound), and so the largest `Ship`.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + BATCH_RAW_BYTES_MAX + FRAME_ALIGN;
/// Largest body of any message: a `Ship` of the largest frame.
pub const MESSAGE_BYTES_MAX: usize = 1 + SHIP_FIXED_BYTES + FRAME_BYTES_MAX;
pub const REFUSE_REASON_BYTES_MAX: usize = 1024;
pub const NONCE_BYTES: usize = 32;
pub const MAC_BYTES: usize = 32;
pub const DATABASE_ID_BYTES: usize = 16;

const HELLO_BYTES: usize = HELLO_V4_BYTES + 8;
/// A hello of version 4 and older (no segment size): still decoded, so an
/// old partner gets the version refusal rather than a framing error.
const HELLO_V4_BYTES: usize = 2 + 1 + 1 + DATABASE_ID_BYTES + 8 + NONCE_BYTES;
const SHIP_FIXED_BYTES: usize = 16;
/// A `ship` message's bytes before its frame: length, type, commit LSN,
/// previous LSN.
pub const SHIP_HEADER_BYTES: usize = MESSAGE_HEADER_BYTES + SHIP_FIXED_BYTES;

const T_HELLO: u8 = 1;
const T_CONFIRM: u8 = 2;
const T_REFUSE: u8 = 3;
const T_POSITION: u8 = 4;
const T_START: u8 = 5;
const T_SHIP: u8 = 6;
const T_ACK: u8 = 7;
const T_HEARTBEAT: u8 = 8;
const T_SNAPSHOT_BEGIN: u8 = 9;
const T_SNAPSHOT_CHUNK: u8 = 10;
const T_PAKE: u8 = 11;
/// A `pake` body: the SPAKE2 message.
pub const PAKE_BYTES: usize = crate::replication::pake::PAKE_BYTES;
/// Epoch history entries a `snapshot-begin` may carry (far more than a
/// log sees; bounds the message).
pub const SNAPSHOT_HISTORY_MAX: usize = 1 << 16;
/// Bytes of snapshot per `snapshot-chunk`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Which side of a mirroring session a node speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Principal = 1,
    Mirror = 2,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Principal => "principal",
            Role::Mirror => "mirror",
        }
    }

    pub fn opposite(self) -> Role {
        match self {
            Role::Principal => Role::Mirror,
            Role::Mirror => Role::Principal,
        }
    }
}

/// The first message each side sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    pub database_id: [u8; DATABASE_ID_BYTES],
    pub epoch: u64,
    pub nonce: [u8; NONCE_BYTES],
    /// The size of the sender's new log segments (`--segment-bytes`),
    /// header included; 0 in a hello of version 4 and older.
    pub segment_bytes: u64,
}

/// Why a partner was turned away (sent in `Refuse` before closing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RefuseCode {
    BadVersion = 1,
    BadDatabase = 2,
    BadAuth = 3,
    EpochMismatch = 4,
    RoleConflict = 5,
    Protocol = 6,
    LogPurged = 7,
    Other = 8,
    /// Not a refusal: a manual failover. The principal stopped taking
    /// commits, the mirror has hardened all of its log, and the mirror is
    /// to take over.
    HandOver = 9,
    /// The partners' settings disagree where they must agree (segment
    /// size); the reason names the setting and both values.
    BadConfig = 10,
    /// The mirror refuses a cut (or a reseed) below the highest commit LSN
    /// a principal told it: the principal lost commits it acknowledged
    /// (see `MirrorSession::new`). The mirror keeps its log.
    CommitsLost = 11,
}

impl RefuseCode {
    fn from_u16(v: u16) -> RefuseCode {
        match v {
            1 => RefuseCode::BadVersion,
            2 => RefuseCode::BadDatabase,
            3 => RefuseCode::BadAuth,
            4 => RefuseCode::EpochMismatch,
            5 => RefuseCode::RoleConflict,
            6 => RefuseCode::Protocol,
            7 => RefuseCode::LogPurged,
            9 => RefuseCode::HandOver,
            10 => RefuseCode::BadConfig,
            11 => RefuseCode::CommitsLost,
            // Unknown codes from a newer peer still carry their reason text.
            _ => RefuseCode::Other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// The sender's SPAKE2 message (see `replication::pake`).
    Pake {
        msg: [u8; PAKE_BYTES],
    },
    /// Key confirmation: HMAC-SHA256 keyed from the exchange's output,
    /// proving the sender derived the same session key (see `handshake`).
    Confirm {
        mac: [u8; MAC_BYTES],
    },
    Refuse {
        code: RefuseCode,
        reason: String,
    },
    /// Mirror → principal after authentication: where its log stands, and
    /// where the segment holding its written LSN ends (`segment_end`; 0:
    /// not told). The principal's log must roll over there too.
    Position {
        epoch: u64,
        written_lsn: u64,
        hardened_lsn: u64,
        applied_lsn: u64,
        segment_end: u64,
    },
    /// Principal → mirror: batches follow from `from_lsn`; first cut your
    /// log back to `truncate_to` if given (a tail the principal never had).
    Start {
        epoch: u64,
        from_lsn: u64,
        truncate_to: Option<u64>,
    },
    /// One batch frame, byte for byte as in the principal's log, with the
    /// commit LSN the mirror may apply up to, and the end of the batch
    /// before it in the principal's log (`prev_lsn`: where the principal's
    /// log was when it wrote this frame, before any padding). The mirror
    /// checks that its own log ends there, so a lost batch is caught even
    /// where the frame's own base LSN looks valid (after segment padding).
    Ship {
        commit_lsn: u64,
        prev_lsn: u64,
        frame: Vec<u8>,
    },
    /// Mirror → principal: how far it has received, hardened and applied.
    Ack {
        received_lsn: u64,
        hardened_lsn: u64,
        applied_lsn: u64,
    },
    /// Principal → mirror when there is nothing to ship: still alive, and
    /// the current commit and written LSNs.
    Heartbeat {
        commit_lsn: u64,
        written_lsn: u64,
    },
    /// Principal → mirror instead of `start`, when the log the mirror needs
    /// is gone here: a reseed. `total_bytes` of snapshot (the state at
    /// `lsn`, a batch boundary of the principal's log) follow in
    /// `snapshot-chunk`s; `crc32c` covers them all; `history` is the
    /// principal's epoch history, which the mirror adopts.
    SnapshotBegin {
        lsn: u64,
        /// Where the principal's log segment holding `lsn` ends: the
        /// mirror's restarted log rolls over there too.
        segment_end: u64,
        total_bytes: u64,
        crc32c: u32,
        history: Vec<(u64, u64)>,
    },
    SnapshotChunk {
        data: Vec<u8>,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("message of {0} bytes exceeds the limit of {MESSAGE_BYTES_MAX}")]
    TooLong(usize),
    #[error("empty message (no type byte)")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{kind} message body is {got} bytes, expected {expected}")]
    BadSize {
        kind: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("malformed {0} message: {1}")]
    Malformed(&'static str, &'static str),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Pake { .. } => "pake",
            Message::Confirm { .. } => "confirm",
            Message::Refuse { .. } => "refuse",
            Message::Position { .. } => "position",
            Message::Start { .. } => "start",
            Message::Ship { .. } => "ship",
            Message::Ack { .. } => "ack",
            Message::Heartbeat { .. } => "heartbeat",
            Message::SnapshotBegin { .. } => "snapshot-begin",
            Message::SnapshotChunk { .. } => "snapshot-chunk",
        }
    }

    /// Appends the encoded message (length, type, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Message::Hello(h) => {
                out.push(T_HELLO);
                encode_hello(h, out);
            }
            Message::Pake { msg } => {
                out.push(T_PAKE);
                out.extend_from_slice(msg);
            }
            Message::Confirm { mac } => {
                out.push(T_CONFIRM);
                out.extend_from_slice(mac);
            }
            Message::Refuse { code, reason } => {
                out.push(T_REFUSE);
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                // Cut on a character boundary so the text stays valid UTF-8.
                let mut end = reason.len().min(REFUSE_REASON_BYTES_MAX);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
            Message::Position {
                epoch,
                written_lsn,
                hardened_lsn,
                applied_lsn,
                segment_end,
            } => {
                out.push(T_POSITION);
                for v in [epoch, written_lsn, hardened_lsn, applied_lsn, segment_end] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Start {
                epoch,
                from_lsn,
                truncate_to,
            } => {
                out.push(T_START);
                assert!(
                    *truncate_to != Some(u64::MAX),
                    "LSN u64::MAX encodes \"no truncation\" and is no valid cut"
                );
                for v in [*epoch, *from_lsn, truncate_to.unwrap_or(u64::MAX)] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Ship {
                commit_lsn,
                prev_lsn,
                frame,
            } => {
                out.push(T_SHIP);
                out.extend_from_slice(&commit_lsn.to_le_bytes());
                out.extend_from_slice(&prev_lsn.to_le_bytes());
                out.extend_from_slice(frame);
            }
            Message::Ack {
                received_lsn,
                hardened_lsn,
                applied_lsn,
            } => {
                out.push(T_ACK);
                for v in [received_lsn, hardened_lsn, applied_lsn] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Heartbeat {
                commit_lsn,
                written_lsn,
            } => {
                out.push(T_HEARTBEAT);
                out.extend_from_slice(&commit_lsn.to_le_bytes());
                out.extend_from_slice(&written_lsn.to_le_bytes());
            }
            Message::SnapshotBegin {
                lsn,
                segment_end,
                total_bytes,
                crc32c,
                history,
            } => {
                assert!(history.len() <= SNAPSHOT_HISTORY_MAX, "history too long");
                out.push(T_SNAPSHOT_BEGIN);
                out.extend_from_slice(&lsn.to_le_bytes());
                out.extend_from_slice(&segment_end.to_le_bytes());
                out.extend_from_slice(&total_bytes.to_le_bytes());
                out.extend_from_slice(&crc32c.to_le_bytes());
                out.extend_from_slice(&(history.len() as u32).to_le_bytes());
                for (e, start) in history {
                    out.extend_from_slice(&e.to_le_bytes());
                    out.extend_from_slice(&start.to_le_bytes());
                }
            }
            Message::SnapshotChunk { data } => {
                assert!(
                    data.len() <= SNAPSHOT_CHUNK_BYTES,
                    "snapshot chunk too long"
                );
                out.push(T_SNAPSHOT_CHUNK);
                out.extend_from_slice(data);
            }
        }
        let len = out.len() - start - 4;
        assert!(
            len <= MESSAGE_BYTES_MAX,
            "encoded message exceeds MESSAGE_BYTES_MAX"
        );
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Decodes one message from the front of `buf`. `Ok(None)`: not all of
    /// it has arrived yet (read more and call again). `Ok(Some((msg, n)))`:
    /// the message used the first `n` bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MESSAGE_BYTES_MAX {
            return Err(WireError::TooLong(len));
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = buf[4];
        let body = &buf[MESSAGE_HEADER_BYTES..4 + len];
        let exact = |name: &'static str, expected: usize| {
            if body.len() == expected {
                Ok(())
            } else {
                Err(WireError::BadSize {
                    kind: name,
                    got: body.len(),
                    expected,
                })
            }
        };
        let msg = match kind {
            T_HELLO => {
                if body.len() != HELLO_V4_BYTES {
                    exact("hello", HELLO_BYTES)?;
                }
                Message::Hello(decode_hello(body)?)
            }
            T_PAKE => {
                exact("pake", PAKE_BYTES)?;
                Message::Pake {
                    msg: body.try_into().expect("exact size"),
                }
            }
            T_CONFIRM => {
                exact("confirm", MAC_BYTES)?;
                Message::Confirm {
                    mac: body.try_into().expect("exact size"),
                }
            }
            T_REFUSE => {
                if body.len() < 2 || body.len() > 2 + REFUSE_REASON_BYTES_MAX {
                    return Err(WireError::Malformed("refuse", "reason length out of range"));
                }
                let reason = std::str::from_utf8(&body[2..])
                    .map_err(|_| WireError::Malformed("refuse", "reason is not UTF-8"))?;
                Message::Refuse {
                    code: RefuseCode::from_u16(u16_at(body, 0)),
                    reason: reason.to_string(),
                }
            }
            T_POSITION => {
                exact("position", 40)?;
                Message::Position {
                    epoch: u64_at(body, 0),
                    written_lsn: u64_at(body, 8),
                    hardened_lsn: u64_at(body, 16),
                    applied_lsn: u64_at(body, 24),
                    segment_end: u64_at(body, 32),
                }
            }
            T_START => {
                exact("start", 24)?;
                let t = u64_at(body, 16);
                Message::Start {
                    epoch: u64_at(body, 0),
                    from_lsn: u64_at(body, 8),
                    truncate_to: (t != u64::MAX).then_some(t),
                }
            }
            T_SHIP => {
                if body.len() < SHIP_FIXED_BYTES + FRAME_HEADER_BYTES {
                    return Err(WireError::Malformed("ship", "shorter than a frame header"));
                }
                Message::Ship {
                    commit_lsn: u64_at(body, 0),
                    prev_lsn: u64_at(body, 8),
                    frame: body[SHIP_FIXED_BYTES..].to_vec(),
                }
            }
            T_ACK => {
                exact("ack", 24)?;
                Message::Ack {
                    received_lsn: u64_at(body, 0),
                    hardened_lsn: u64_at(body, 8),
                    applied_lsn: u64_at(body, 16),
                }
            }
            T_HEARTBEAT => {
                exact("heartbeat", 16)?;
                Message::Heartbeat {
                    commit_lsn: u64_at(body, 0),
                    written_lsn: u64_at(body, 8),
                }
            }
            T_SNAPSHOT_BEGIN => {
                if body.len() < 32 {
                    return Err(WireError::Malformed(
                        "snapshot-begin",
                        "shorter than its header",
                    ));
                }
                let n = u32::from_le_bytes(body[28..32].try_into().expect("4 bytes")) as usize;
                if n > SNAPSHOT_HISTORY_MAX || body.len() != 32 + 16 * n {
                    return Err(WireError::Malformed(
                        "snapshot-begin",
                        "history length does not match the body",
                    ));
                }
                Message::SnapshotBegin {
                    lsn: u64_at(body, 0),
                    segment_end: u64_at(body, 8),
                    total_bytes: u64_at(body, 16),
                    crc32c: u32::from_le_bytes(body[24..28].try_into().expect("4 bytes")),
                    history: (0..n)
                        .map(|i| (u64_at(body, 32 + 16 * i), u64_at(body, 40 + 16 * i)))
                        .collect(),
                }
            }
            T_SNAPSHOT_CHUNK => {
                if body.is_empty() || body.len() > SNAPSHOT_CHUNK_BYTES {
                    return Err(WireError::Malformed(
                        "snapshot-chunk",
                        "length out of range",
                    ));
                }
                Message::SnapshotChunk {
                    data: body.to_vec(),
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(Some((msg, 4 + len)))
    }
}

/// The header of a `Ship` message carrying a frame of `frame_len` bytes, so
/// a sender can write it and then the frame straight from the log's map.
pub fn ship_header(commit_lsn: u64, prev_lsn: u64, frame_len: usize) -> [u8; SHIP_HEADER_BYTES] {
    assert!(
        frame_len <= FRAME_BYTES_MAX,
        "frame exceeds FRAME_BYTES_MAX"
    );
    let mut h = [0u8; MESSAGE_HEADER_BYTES + SHIP_FIXED_BYTES];
    let len = (1 + SHIP_FIXED_BYTES + frame_len) as u32;
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = T_SHIP;
    h[5..13].copy_from_slice(&commit_lsn.to_le_bytes());
    h[13..21].copy_from_slice(&prev_lsn.to_le_bytes());
    h
}

/// The `ship` headers for consecutive frames of a log, the first following
/// `prev_lsn`, each next one following the end of the frame before it.
pub fn ship_headers(
    commit_lsn: u64,
    prev_lsn: u64,
    frames: &[&[u8]],
) -> Vec<[u8; SHIP_HEADER_BYTES]> {
    let mut prev = prev_lsn;
    frames
        .iter()
        .map(|f| {
            let h = ship_header(commit_lsn, prev, f.len());
            prev = crate::log::frame::frame_base_lsn(f).saturating_add(f.len() as u64);
            h
        })
        .collect()
}

pub(crate) fn encode_hello(h: &Hello, out: &mut Vec<u8>) {
    out.extend_from_slice(&h.version.to_le_bytes());
    out.push(h.role as u8);
    out.push(0);
    out.extend_from_slice(&h.database_id);
    out.extend_from_slice(&h.epoch.to_le_bytes());
    out.extend_from_slice(&h.nonce);
    out.extend_from_slice(&h.segment_bytes.to_le_bytes());
}

fn decode_hello(b: &[u8]) -> Result<Hello, WireError> {
    let role = match b[2] {
        1 => Role::Principal,
        2 => Role::Mirror,
        _ => return Err(WireError::Malformed("hello", "unknown role")),
    };
    if b[3] != 0 {
        return Err(WireError::Malformed("hello", "reserved byte is not zero"));
    }
    Ok(Hello {
        version: u16_at(b, 0),
        role,
        database_id: b[4..20].try_into().expect("16 bytes"),
        epoch: u64_at(b, 20),
        nonce: b[28..60].try_into().expect("32 bytes"),
        segment_bytes: if b.len() >= HELLO_BYTES {
            u64_at(b, 60)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_header_matches_the_encoder() {
        let frame = vec![7u8; 48];
        let mut full = Vec::new();
        Message::Ship {
            commit_lsn: 99,
            prev_lsn: 1234,
            frame: frame.clone(),
        }
        .encode(&mut full);
        let mut split = ship_header(99, 1234, frame.len()).to_vec();
        split.extend_from_slice(&frame);
        assert_eq!(full, split);
    }

    #[test]
    fn a_length_beyond_the_limit_is_refused_before_the_body_arrives() {
        let mut b = ((MESSAGE_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        b.push(T_SHIP);
        assert_eq!(
            Message::decode(&b),
            Err(WireError::TooLong(MESSAGE_BYTES_MAX + 1))
        );
    }
}
