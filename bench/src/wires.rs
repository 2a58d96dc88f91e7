//! The protocols the event-driven generator ([`crate::multiplex`]) speaks:
//! RESP (mirrorlog's server and Redis: SET, GET, SET + WAIT) and
//! PostgreSQL's simple query protocol (one INSERT per transaction).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mirrorlog::client::Client as RespClient;
use mirrorlog::resp::Reply;

use crate::local_commit::XorShift;
use crate::multiplex::{Wire, WireConn};
use crate::peers::postgres::{parse_error_response, MESSAGE_BYTES_MAX};

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
/// Requests are written straight into the output buffer and replies are
/// scanned in place: the generator allocates nothing per operation (it
/// shares the cores with the system it measures).
pub struct RespWire {
    op: RespOp,
    depth: usize,
    rng: XorShift,
    value: Vec<u8>,
}

/// `key:` and six digits: every key the same length.
const KEY_BYTES: usize = 10;

impl RespWire {
    pub fn new(op: RespOp, value_bytes: usize, depth: usize, seed: u64) -> RespWire {
        RespWire {
            op,
            depth,
            rng: XorShift::new(seed),
            value: vec![0u8; value_bytes],
        }
    }

    fn replies_per_op(&self) -> usize {
        if self.op == RespOp::SetWait {
            2
        } else {
            1
        }
    }

    fn key(&mut self) -> [u8; KEY_BYTES] {
        let mut k = *b"key:000000";
        let mut n = self.rng.next_u64() % KEYS;
        for d in k[4..].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        k
    }
}

/// `$len\r\n` + bytes + `\r\n`.
fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    let mut digits = [0u8; 20];
    let mut n = b.len();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// One reply at the start of some input, scanned without building it.
enum Scanned<'a> {
    Incomplete,
    Error(&'a [u8]),
    Int(i64),
    Other,
}

/// The reply at the start of `input` and its length in bytes.
fn scan(input: &[u8]) -> Result<(Scanned<'_>, usize), String> {
    let Some(&kind) = input.first() else {
        return Ok((Scanned::Incomplete, 0));
    };
    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
        return Ok((Scanned::Incomplete, 0));
    };
    let text = &input[1..eol];
    let after = eol + 2;
    let number = |what: &str| -> Result<i64, String> {
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(text)))
    };
    match kind {
        b'+' => Ok((Scanned::Other, after)),
        b'-' => Ok((Scanned::Error(text), after)),
        b':' => Ok((Scanned::Int(number("integer reply")?), after)),
        b'$' => {
            let len = number("bulk length")?;
            if len < 0 {
                return Ok((Scanned::Other, after));
            }
            let end = after + len as usize + 2;
            if input.len() < end {
                return Ok((Scanned::Incomplete, 0));
            }
            Ok((Scanned::Other, end))
        }
        other => Err(format!("unexpected reply type {:?}", other as char)),
    }
}

impl Wire for RespWire {
    fn request(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.depth {
            let key = self.key();
            match self.op {
                RespOp::Get => {
                    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                    bulk(out, &key);
                }
                RespOp::Set | RespOp::SetWait => {
                    self.rng.fill(&mut self.value);
                    out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                    bulk(out, &key);
                    bulk(out, &self.value);
                    if self.op == RespOp::SetWait {
                        out.extend_from_slice(b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n");
                    }
                }
            }
        }
    }

    fn response(&mut self, input: &[u8]) -> Result<Option<(usize, u64)>, String> {
        let per = self.replies_per_op();
        let mut at = 0;
        for i in 0..self.depth * per {
            let (r, used) = scan(&input[at..])?;
            at += used;
            match (self.op, i % per, r) {
                (_, _, Scanned::Incomplete) => return Ok(None),
                (_, _, Scanned::Error(e)) => {
                    return Err(format!("server error: {}", String::from_utf8_lossy(e)))
                }
                (RespOp::SetWait, 1, Scanned::Int(n)) if n < 1 => {
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
        const HEAD: &[u8] = b"INSERT INTO bench VALUES ('";
        let len = 4 + HEAD.len() + 20 + self.filler.len() + 3;
        out.push(b'Q');
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(HEAD);
        let mut digits = [b'0'; 20];
        let mut n = self.counter;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
        out.extend_from_slice(&self.filler);
        out.extend_from_slice(b"')\0");
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
            if !(4..=MESSAGE_BYTES_MAX).contains(&len) {
                return Err(format!("malformed PostgreSQL message length {len}"));
            }
            if input.len() < at + 1 + len {
                return Ok(None);
            }
            let body = &input[at + 5..at + 1 + len];
            at += 1 + len;
            match tag {
                b'E' => error = Some(parse_error_response(body)),
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
        assert_eq!(g.response(b"$5\r\nhel").unwrap(), None);
        assert_eq!(g.response(b"$5\r\nhello\r\n").unwrap(), Some((11, 1)));
        assert!(g.response(b"*1\r\n").is_err());
        // The request is well-formed RESP: the server's own parser takes it.
        let mut out = Vec::new();
        RespWire::new(RespOp::Set, 100, 3, 9).request(&mut out);
        let mut at = 0;
        for _ in 0..3 {
            let (args, used) = mirrorlog::resp::parse_command(&out[at..], &Default::default())
                .unwrap()
                .unwrap();
            assert_eq!(args.len(), 3);
            assert_eq!(args[0], b"SET");
            assert!(args[1].starts_with(b"key:") && args[1].len() == 10);
            assert_eq!(args[2].len(), 100);
            at += used;
        }
        assert_eq!(at, out.len());
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
