//! The protocols the event-driven generator ([`crate::multiplex`]) speaks:
//! RESP (mirrorlog's server and Redis: SET, GET, SET + WAIT) and
//! PostgreSQL's simple query protocol (one INSERT per transaction).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mirrorlog::client::Client as RespClient;
use mirrorlog::resp::{encode_command, parse_reply, Reply};

use crate::local_commit::XorShift;
use crate::multiplex::{Wire, WireConn};

/// Keys the RESP workloads spread over.
pub const KEYS: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespOp {
    Set,
    /// SET, then `WAIT 1 0` in the same round trip (Redis; and mirrorlog,
    /// whose WAIT has the same meaning).
    SetWait,
    Get,
}

/// SET/GET of random keys with random values, `depth` operations a round.
pub struct RespWire {
    op: RespOp,
    depth: usize,
    rng: XorShift,
    value: Vec<u8>,
    key: Vec<u8>,
}

impl RespWire {
    pub fn new(op: RespOp, value_bytes: usize, depth: usize, seed: u64) -> RespWire {
        RespWire {
            op,
            depth,
            rng: XorShift::new(seed),
            value: vec![0u8; value_bytes],
            key: Vec::with_capacity(16),
        }
    }

    fn replies_per_op(&self) -> usize {
        if self.op == RespOp::SetWait {
            2
        } else {
            1
        }
    }
}

impl Wire for RespWire {
    fn request(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.depth {
            self.key.clear();
            self.key
                .extend_from_slice(format!("key:{:06}", self.rng.next_u64() % KEYS).as_bytes());
            match self.op {
                RespOp::Get => encode_command(&[b"GET", &self.key], out),
                RespOp::Set | RespOp::SetWait => {
                    self.rng.fill(&mut self.value);
                    encode_command(&[b"SET", &self.key, &self.value], out);
                    if self.op == RespOp::SetWait {
                        encode_command(&[b"WAIT", b"1", b"0"], out);
                    }
                }
            }
        }
    }

    fn response(&mut self, input: &[u8]) -> Result<Option<(usize, u64)>, String> {
        let per = self.replies_per_op();
        let mut at = 0;
        for i in 0..self.depth * per {
            let Some((r, used)) =
                parse_reply(&input[at..]).map_err(|e| format!("bad reply: {e}"))?
            else {
                return Ok(None);
            };
            at += used;
            match (self.op, i % per, r) {
                (_, _, Reply::Error(e)) => return Err(format!("server error: {e}")),
                (RespOp::SetWait, 1, Reply::Int(n)) if n < 1 => {
                    return Err(format!(
                        "WAIT 1 0 answered {n}: the replica did not acknowledge the write"
                    ))
                }
                _ => {}
            }
        }
        Ok(Some((at, self.depth as u64)))
    }
}

/// Connects a RESP client for the generator; `setup` commands (e.g.
/// `MIRROR LEVEL remote-apply`) run first, blocking, and must not fail.
pub fn resp_conn(addr: SocketAddr, setup: &[&[&[u8]]], wire: RespWire) -> Result<WireConn, String> {
    let mut c = RespClient::connect(addr, Duration::from_secs(10))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    for cmd in setup {
        match c.call(cmd) {
            Ok(Reply::Error(e)) => return Err(format!("setup command refused: {e}")),
            Err(e) => return Err(format!("setup command: {e}")),
            Ok(_) => {}
        }
    }
    let stream = c.into_stream();
    Ok(WireConn {
        stream,
        wire: Box::new(wire),
    })
}

/// One INSERT of a `record_bytes` text value per round, as its own
/// transaction (simple query protocol: 'Q', answered by CommandComplete
/// and ReadyForQuery).
pub struct PgInsertWire {
    counter: u64,
    filler: Vec<u8>,
}

impl PgInsertWire {
    pub fn new(record_bytes: usize, seed: u64) -> PgInsertWire {
        let mut rng = XorShift::new(seed);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let filler = (0..record_bytes.saturating_sub(20))
            .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        PgInsertWire {
            counter: seed << 32,
            filler,
        }
    }
}

impl Wire for PgInsertWire {
    fn request(&mut self, out: &mut Vec<u8>) {
        self.counter += 1;
        let mut sql = format!("INSERT INTO bench VALUES ('{:020}", self.counter).into_bytes();
        sql.extend_from_slice(&self.filler);
        sql.extend_from_slice(b"')\0");
        out.push(b'Q');
        out.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&sql);
    }

    fn response(&mut self, input: &[u8]) -> Result<Option<(usize, u64)>, String> {
        let mut at = 0;
        let mut error = None;
        loop {
            if input.len() < at + 5 {
                return Ok(None);
            }
            let tag = input[at];
            let len =
                u32::from_be_bytes([input[at + 1], input[at + 2], input[at + 3], input[at + 4]])
                    as usize;
            if len < 4 {
                return Err(format!("malformed PostgreSQL message length {len}"));
            }
            if input.len() < at + 1 + len {
                return Ok(None);
            }
            let body = &input[at + 5..at + 1 + len];
            at += 1 + len;
            match tag {
                b'E' => error = Some(pg_error_text(body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(format!("PostgreSQL: {e}")),
                        None => Ok(Some((at, 1))),
                    }
                }
                _ => {} // CommandComplete, NoticeResponse, ...
            }
        }
    }
}

/// The message ('M') and SQLSTATE ('C') fields of an ErrorResponse body.
pub fn pg_error_text(body: &[u8]) -> String {
    let (mut msg, mut code) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'M', v)) => msg = String::from_utf8_lossy(v).into_owned(),
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    format!("{msg} (SQLSTATE {code})")
}

/// A socket ready for the generator, from an established connection.
pub fn conn(stream: TcpStream, wire: impl Wire + 'static) -> WireConn {
    WireConn {
        stream,
        wire: Box::new(wire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_rounds_complete_only_with_every_reply() {
        let mut w = RespWire::new(RespOp::SetWait, 10, 2, 1);
        let mut out = Vec::new();
        w.request(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("SET").count(), 2);
        assert_eq!(text.matches("WAIT").count(), 2);
        let replies = b"+OK\r\n:1\r\n+OK\r\n:1\r\n+extra";
        assert_eq!(w.response(&replies[..9]).unwrap(), None);
        assert_eq!(w.response(&replies[..18]).unwrap(), Some((18, 2)));
        assert!(w
            .response(b"+OK\r\n:0\r\n+OK\r\n:1\r\n")
            .unwrap_err()
            .contains("did not acknowledge"));
        let mut g = RespWire::new(RespOp::Get, 10, 1, 1);
        assert!(g
            .response(b"-READONLY no\r\n")
            .unwrap_err()
            .contains("READONLY"));
        assert_eq!(g.response(b"$-1\r\n").unwrap(), Some((5, 1)));
    }

    #[test]
    fn pg_insert_is_one_query_message_and_waits_for_ready_for_query() {
        let mut w = PgInsertWire::new(100, 7);
        let mut out = Vec::new();
        w.request(&mut out);
        assert_eq!(out[0], b'Q');
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let sql = std::str::from_utf8(&out[5..out.len() - 1]).unwrap();
        assert!(sql.starts_with("INSERT INTO bench VALUES ('"), "{sql}");
        // The value is the record: 100 characters.
        assert_eq!(sql.len(), "INSERT INTO bench VALUES ('')".len() + 100);

        let mut reply = Vec::new();
        let msg = |tag: u8, body: &[u8], out: &mut Vec<u8>| {
            out.push(tag);
            out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        msg(b'C', b"INSERT 0 1\0", &mut reply);
        let cut = reply.len();
        msg(b'Z', b"I", &mut reply);
        assert_eq!(w.response(&reply[..cut]).unwrap(), None);
        assert_eq!(w.response(&reply[..reply.len() - 1]).unwrap(), None);
        assert_eq!(w.response(&reply).unwrap(), Some((reply.len(), 1)));

        let mut err = Vec::new();
        msg(
            b'E',
            b"SERROR\0C42P01\0Mrelation \"bench\" does not exist\0\0",
            &mut err,
        );
        msg(b'Z', b"I", &mut err);
        let e = w.response(&err).unwrap_err();
        assert!(
            e.contains("relation \"bench\" does not exist") && e.contains("42P01"),
            "{e}"
        );
        assert!(w.response(&[b'Z', 0, 0, 0, 1]).is_err());
    }
}
