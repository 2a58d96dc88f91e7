//! RESP2, the Redis serialization protocol: parsing client commands (with
//! limits, so a hostile client gets an error and is disconnected, never an
//! allocation bomb) and encoding replies.
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! or an inline command (`GET k\r\n`, as typed into telnet). Replies are any
//! RESP2 value.

use std::fmt;

/// Bounds on what one client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (Redis: proto-max-bulk-len).
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline: usize,
    /// Most bytes of arguments in one command, all told: the server sets
    /// it to the largest write its log can commit, so a write that could
    /// never commit is refused at its length header, not after it arrived.
    pub max_command: usize,
    /// The client has not authenticated: errors are worded as Redis words
    /// its pre-AUTH limits (see [`Limits::unauthenticated`]).
    pub unauthenticated: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk: 512 << 20,
            max_args: 1 << 20,
            max_inline: 64 << 10,
            max_command: usize::MAX,
            unauthenticated: false,
        }
    }
}

impl Limits {
    /// What a client that has not yet authenticated may send (Redis's own
    /// pre-AUTH bounds: at most 10 arguments, bulks of at most 16 KiB).
    pub fn unauthenticated(&self) -> Limits {
        Limits {
            max_bulk: self.max_bulk.min(16 << 10),
            max_args: self.max_args.min(10),
            max_inline: self.max_inline.min(16 << 10),
            max_command: self.max_command.min(64 << 10),
            unauthenticated: true,
        }
    }
}

/// A protocol error: the connection is answered with it and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

fn err<T>(s: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(s.into()))
}

/// Finds `\r\n` in `buf` from `from`; the index of `\r`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Parses a decimal integer as RESP writes it (optional '-', digits).
fn parse_int(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// What [`Parser::parse`] took from the buffer, and the command once
/// complete.
pub type Step = (usize, Option<Vec<Vec<u8>>>);

/// One parsed command: its arguments and the bytes it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Redis's proto-max-bulk-len: longer is never a valid bulk.
const PROTO_MAX_BULK: usize = 512 << 20;

/// Longest header line (`*N` or `$N`) before it is an error.
const HEADER_MAX: usize = 32;

/// An incremental command parser, one per connection: what it has taken
/// of a partial command stays taken, so each byte a client sends is looked
/// at a bounded number of times however slowly the command arrives (a
/// command of a million one-byte arguments costs linear time, not a
/// re-parse from its start on each read).
#[derive(Debug, Default)]
pub struct Parser {
    /// A multibulk command in progress: arguments expected, those taken.
    multi: Option<(usize, Vec<Vec<u8>>)>,
    /// Argument bytes announced so far in this command (for max_command).
    announced: usize,
    /// An inline command in progress: bytes already searched for `\n`.
    inline_scanned: usize,
}

impl Parser {
    /// Whether no command is in progress (nothing of one taken).
    pub fn idle(&self) -> bool {
        self.multi.is_none() && self.inline_scanned == 0
    }

    /// Whether a command is on its way: part of one taken, or bytes of one
    /// left in `unparsed` (the caller's buffer after the taken bytes).
    pub fn mid_command(&self, unparsed: &[u8]) -> bool {
        !unparsed.is_empty() || !self.idle()
    }

    /// Parses on from `buf`, which starts where the last call's taken
    /// bytes ended. Returns the bytes taken (the caller drops them from its
    /// buffer) and the command, once complete. An empty inline line is a
    /// command of no arguments (ignored by the caller, as Redis does).
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Step, ProtocolError> {
        if self.multi.is_none() {
            if buf.is_empty() {
                return Ok((0, None));
            }
            if buf[0] != b'*' {
                return self.inline(buf, limits);
            }
            let Some(end) = line_end(buf, 1) else {
                if buf.len() > HEADER_MAX {
                    return err("invalid multibulk length");
                }
                return Ok((0, None));
            };
            let n = match parse_int(&buf[1..end]) {
                Some(n) if n <= limits.max_args as i64 => n,
                Some(_) if limits.unauthenticated => {
                    return err("unauthenticated multibulk length")
                }
                _ => return err("invalid multibulk length"),
            };
            if n <= 0 {
                return Ok((end + 2, Some(Vec::new())));
            }
            // The count is bounded by max_args; still, reserve only what
            // may have arrived.
            self.multi = Some((n as usize, Vec::with_capacity((n as usize).min(1024))));
            self.announced = 0;
            let (used, cmd) = self.bulks(&buf[end + 2..], limits)?;
            return Ok((end + 2 + used, cmd));
        }
        self.bulks(buf, limits)
    }

    fn bulks(&mut self, buf: &[u8], limits: &Limits) -> Result<Step, ProtocolError> {
        let (n, args) = self.multi.as_mut().expect("in a multibulk");
        let mut pos = 0;
        while args.len() < *n {
            if pos >= buf.len() {
                return Ok((pos, None));
            }
            if buf[pos] != b'$' {
                return err(format!(
                    "expected '$', got '{}'",
                    char::from(buf[pos]).escape_default()
                ));
            }
            let Some(end) = line_end(buf, pos + 1) else {
                if buf.len() - pos > HEADER_MAX {
                    return err("invalid bulk length");
                }
                return Ok((pos, None));
            };
            let len = match parse_int(&buf[pos + 1..end]) {
                Some(l) if l >= 0 && l <= PROTO_MAX_BULK as i64 => l as usize,
                _ => return err("invalid bulk length"),
            };
            // Checked once per argument, at its header: a command whose
            // arguments outgrow what can be committed is refused before
            // its bytes are taken in.
            let announced = self.announced + len;
            if announced > limits.max_command && !limits.unauthenticated {
                return err(format!(
                    "command of at least {announced} bytes exceeds the largest this server accepts ({} bytes: the largest write its log can commit)",
                    limits.max_command
                ));
            }
            if len > limits.max_bulk || announced > limits.max_command {
                return err(if limits.unauthenticated {
                    "unauthenticated bulk length"
                } else {
                    "invalid bulk length"
                });
            }
            let start = end + 2;
            if buf.len() < start + len + 2 {
                // Header and payload are taken together; wait for both
                // (the header is re-read once per read until then: at
                // most HEADER_MAX bytes).
                return Ok((pos, None));
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                return err("bulk string not terminated by CRLF");
            }
            self.announced = announced;
            args.push(buf[start..start + len].to_vec());
            pos = start + len + 2;
        }
        let (_, args) = self.multi.take().expect("in a multibulk");
        self.announced = 0;
        Ok((pos, Some(args)))
    }

    fn inline(&mut self, buf: &[u8], limits: &Limits) -> Result<Step, ProtocolError> {
        let from = self.inline_scanned.min(buf.len());
        let Some(nl) = buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| from + i)
        else {
            if buf.len() > limits.max_inline {
                return err("too big inline request");
            }
            self.inline_scanned = buf.len();
            return Ok((0, None));
        };
        self.inline_scanned = 0;
        if nl > limits.max_inline {
            return err("too big inline request");
        }
        let args = split_inline(&buf[..nl], limits)?;
        Ok((nl + 1, Some(args)))
    }
}

/// Parses the next command in `buf` from scratch. `Ok(None)`: incomplete,
/// read more. (Servers keep a [`Parser`] per connection instead.)
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let mut p = Parser::default();
    let mut used = 0;
    loop {
        match p.parse(&buf[used..], limits)? {
            (n, Some(args)) => return Ok(Some((args, used + n))),
            (0, None) => return Ok(None),
            (n, None) => used += n,
        }
    }
}

fn split_inline(line: &[u8], limits: &Limits) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut arg = Vec::new();
        if line[i] == b'"' || line[i] == b'\'' {
            let q = line[i];
            i += 1;
            let mut closed = false;
            while i < line.len() {
                if line[i] == b'\\' && q == b'"' && i + 1 < line.len() {
                    arg.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        c => c,
                    });
                    i += 2;
                } else if line[i] == q {
                    closed = true;
                    i += 1;
                    break;
                } else {
                    arg.push(line[i]);
                    i += 1;
                }
            }
            if !closed {
                return err("unbalanced quotes in request");
            }
        } else {
            while i < line.len() && !line[i].is_ascii_whitespace() {
                arg.push(line[i]);
                i += 1;
            }
        }
        args.push(arg);
        if args.len() > limits.max_args {
            return err("invalid multibulk length");
        }
    }
    Ok(args)
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// An error line, without the leading '-' (e.g. "ERR wrong number of
    /// arguments for 'get' command").
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A stored value, encoded as a bulk string: the server's replies
    /// hold a reference to the store's bytes, not a copy, until encoded.
    Value(crate::kv::Value),
    Nil,
    Array(Vec<Reply>),
    NilArray,
    /// Key-value pairs: a RESP3 map, or a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(s: impl Into<String>) -> Reply {
        Reply::Error(s.into())
    }

    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// Encodes as RESP2.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_proto(out, 2)
    }

    /// Encodes as RESP2 or RESP3 (`proto` 3: nulls are `_`, maps `%`).
    pub fn encode_proto(&self, out: &mut Vec<u8>, proto: u8) {
        match self {
            Reply::Nil | Reply::NilArray if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Map(pairs) if proto >= 3 => {
                out.push(b'%');
                out.extend_from_slice(pairs.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode_proto(out, proto);
                    v.encode_proto(out, proto);
                }
            }
            Reply::Map(pairs) => {
                out.push(b'*');
                out.extend_from_slice((pairs.len() * 2).to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode_proto(out, proto);
                    v.encode_proto(out, proto);
                }
            }
            Reply::Array(items) => {
                out.push(b'*');
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.encode_proto(out, proto);
                }
            }
            _ => self.encode_scalar(out),
        }
    }

    fn encode_scalar(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                // A simple string cannot hold CR or LF.
                out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(i) => {
                out.push(b':');
                out.extend_from_slice(i.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(b) => encode_bulk(b, out),
            Reply::Value(b) => encode_bulk(b, out),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(_) | Reply::Map(_) => unreachable!("encoded by encode_proto"),
        }
    }

    /// Bytes [`Reply::encode_proto`] would write, computed without
    /// writing them (so a reply too large for a client's output limit is
    /// refused before any of it is copied).
    pub fn encoded_len(&self, proto: u8) -> usize {
        fn digits(n: usize) -> usize {
            n.checked_ilog10().map_or(1, |d| d as usize + 1)
        }
        match self {
            Reply::Nil | Reply::NilArray if proto >= 3 => 3,
            Reply::Nil | Reply::NilArray => 5,
            Reply::Simple(s) | Reply::Error(s) => 3 + s.len(),
            Reply::Int(i) => 3 + i.to_string().len(),
            Reply::Bulk(b) => 5 + digits(b.len()) + b.len(),
            Reply::Value(b) => 5 + digits(b.len()) + b.len(),
            Reply::Array(items) => {
                3 + digits(items.len()) + items.iter().map(|i| i.encoded_len(proto)).sum::<usize>()
            }
            Reply::Map(pairs) => {
                let n = if proto >= 3 {
                    pairs.len()
                } else {
                    pairs.len() * 2
                };
                3 + digits(n)
                    + pairs
                        .iter()
                        .map(|(k, v)| k.encoded_len(proto) + v.encoded_len(proto))
                        .sum::<usize>()
            }
        }
    }
}

fn encode_bulk(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'$');
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Encodes a command as a client sends it (for our own client: the demo
/// and the load generator).
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply (for our own client). `Ok(None)`: incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_reply_at(buf, 0, 0)
}

fn parse_reply_at(
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > 64 {
        return err("reply nested too deep");
    }
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some(end) = line_end(buf, pos + 1) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    match buf[pos] {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => match parse_int(line) {
            Some(i) => Ok(Some((Reply::Int(i), next))),
            None => err("bad integer reply"),
        },
        b'$' => match parse_int(line) {
            Some(-1) => Ok(Some((Reply::Nil, next))),
            Some(l) if l >= 0 => {
                let l = l as usize;
                if buf.len() < next + l + 2 {
                    return Ok(None);
                }
                Ok(Some((
                    Reply::Bulk(buf[next..next + l].to_vec()),
                    next + l + 2,
                )))
            }
            _ => err("bad bulk reply"),
        },
        b'*' => match parse_int(line) {
            Some(-1) => Ok(Some((Reply::NilArray, next))),
            Some(n) if n >= 0 => {
                let mut items = Vec::new();
                let mut p = next;
                for _ in 0..n {
                    match parse_reply_at(buf, p, depth + 1)? {
                        Some((r, q)) => {
                            items.push(r);
                            p = q;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Reply::Array(items), p)))
            }
            _ => err("bad array reply"),
        },
        b'_' => Ok(Some((Reply::Nil, next))),
        b'%' => match parse_int(line) {
            Some(n) if n >= 0 => {
                let mut pairs = Vec::new();
                let mut p = next;
                for _ in 0..n {
                    let Some((k, q)) = parse_reply_at(buf, p, depth + 1)? else {
                        return Ok(None);
                    };
                    let Some((v, q)) = parse_reply_at(buf, q, depth + 1)? else {
                        return Ok(None);
                    };
                    pairs.push((k, v));
                    p = q;
                }
                Ok(Some((Reply::Map(pairs), p)))
            }
            _ => err("bad map reply"),
        },
        c => err(format!("unknown reply type {:?}", char::from(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
        parse_command(b, &Limits::default())
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let (args, used) = parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nextra")
            .unwrap()
            .unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(used, 20);
        let (args, used) = parse(b"SET k \"a b\\n\"\r\n").unwrap().unwrap();
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"k".to_vec(), b"a b\n".to_vec()]
        );
        assert_eq!(used, 15);
        // Every proper prefix is incomplete, never an error.
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]).unwrap(), None, "prefix {i}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn hostile_inputs_are_errors_without_allocation() {
        let limits = Limits {
            max_bulk: 1024,
            max_args: 16,
            max_inline: 64,
            ..Limits::default()
        };
        let p = |b: &[u8]| parse_command(b, &limits);
        assert!(p(b"*17\r\n").is_err(), "too many args");
        assert!(p(b"*99999999999999999999999\r\n").is_err());
        assert!(p(b"*1\r\n$1025\r\n").is_err(), "bulk beyond the limit");
        assert!(p(b"*1\r\n$-5\r\n").is_err());
        assert!(p(b"*1\r\n:5\r\n").is_err(), "not a bulk");
        assert!(p(b"*1\r\n$1\r\nabc\r\n").is_err(), "bad terminator");
        assert!(p(&[b'x'; 100]).is_err(), "inline line too long");
        assert!(p(b"GET \"unterminated\r\n").is_err());
        assert!(p(b"*1x\r\n").is_err());
        assert!(
            p(b"*123456789012345678901234567890123").is_err(),
            "endless header"
        );
    }

    /// A command fed to one [`Parser`] in pieces of every size gives the
    /// same commands as parsing it whole, and what the parser takes is
    /// never given back (each byte is taken once).
    #[test]
    fn incremental_parsing_matches_whole_parsing() {
        let mut stream = Vec::new();
        encode_command(&[b"SET", b"k", b"value"], &mut stream);
        stream.extend_from_slice(b"PING\r\n");
        encode_command(&[b"MGET", b"a", b"", b"ccc"], &mut stream);
        stream.extend_from_slice(b"GET 'a b'\r\n");
        let mut want = Vec::new();
        let mut at = 0;
        while let Some((args, n)) = parse(&stream[at..]).unwrap() {
            want.push(args);
            at += n;
        }
        assert_eq!(at, stream.len());
        for piece in 1..=stream.len() {
            let mut p = Parser::default();
            let (mut buf, mut got, mut taken) = (Vec::new(), Vec::new(), 0);
            for chunk in stream.chunks(piece) {
                buf.extend_from_slice(chunk);
                loop {
                    let (n, cmd) = p.parse(&buf, &Limits::default()).unwrap();
                    buf.drain(..n);
                    taken += n;
                    match cmd {
                        Some(c) => got.push(c),
                        None => break,
                    }
                }
            }
            assert_eq!(got, want, "pieces of {piece}");
            assert_eq!(taken, stream.len());
            assert!(p.idle() && buf.is_empty());
        }
    }

    /// A million one-byte arguments trickled in small pieces: the parser
    /// keeps what it took, so the buffer it is handed stays small (the old
    /// parser re-read the whole command from its start on every read).
    #[test]
    fn a_huge_command_in_small_pieces_is_taken_as_it_arrives() {
        let n = 1_000_000;
        let mut p = Parser::default();
        let mut buf = format!("*{n}\r\n").into_bytes();
        let mut got = None;
        let mut largest_buffer = 0;
        for i in 0..n {
            buf.extend_from_slice(b"$1\r\na\r\n");
            if i % 13 == 12 || i == n - 1 {
                largest_buffer = largest_buffer.max(buf.len());
                let (used, cmd) = p.parse(&buf, &Limits::default()).unwrap();
                buf.drain(..used);
                if cmd.is_some() {
                    got = cmd;
                }
            }
        }
        assert_eq!(got.map(|c| c.len()), Some(n));
        assert!(
            largest_buffer < 200,
            "buffer reached {largest_buffer} bytes"
        );
    }

    #[test]
    fn unauthenticated_and_command_size_limits() {
        let pre = Limits::default().unauthenticated();
        let e = parse_command(b"*11\r\n", &pre).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Protocol error: unauthenticated multibulk length"
        );
        let e = parse_command(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", &pre).unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: unauthenticated bulk length");
        assert!(parse_command(b"*2\r\n$4\r\nAUTH\r\n$16384\r\n", &pre)
            .unwrap()
            .is_none());
        let small = Limits {
            max_command: 100,
            ..Limits::default()
        };
        // Refused at the header of the argument that crosses the bound.
        let e = parse_command(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$97\r\n", &small).unwrap_err();
        assert!(e.to_string().contains("exceeds the largest"), "{e}");
        assert!(
            parse_command(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$96\r\n", &small)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::Array(vec![
            Reply::ok(),
            Reply::err("ERR x"),
            Reply::Int(-7),
            Reply::bulk(&b"a\r\nb"[..]),
            Reply::Nil,
            Reply::Array(vec![]),
            Reply::NilArray,
        ]);
        let mut out = Vec::new();
        r.encode(&mut out);
        let (back, used) = parse_reply(&out).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(used, out.len());
        for i in 0..out.len() {
            assert_eq!(parse_reply(&out[..i]).unwrap(), None);
        }
    }
}
