//! Partner messages over a plain non-blocking `TcpStream` and `poll(2)`:
//! the fallback path (see the module above).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::replication::seal::{IntegrityError, SealKey, SealKeys, TAG_BYTES};
use crate::replication::wire::{ship_headers, Message, WireError, MESSAGE_BYTES_MAX};
use crate::transport::{Conn, TransportPath};
use crate::wake::Wakeup;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the partner closed the connection")]
    Closed,
    #[error("the partner sent a malformed message: {0}")]
    Wire(#[from] WireError),
    #[error("io_uring: {0}")]
    Uring(String),
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// A TLS record failed (tampered with, say) or the peer sent an alert.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Bytes read from the socket at a time.
pub(crate) const READ_CHUNK: usize = 64 << 10;

/// Received bytes not yet decoded, bounded by one message plus a chunk.
#[derive(Default)]
pub(crate) struct RecvBuf {
    /// Undecoded bytes are `buf[start..end]`; `buf[end..]` is initialised
    /// room for the next read (kept, so a read does not zero a fresh chunk:
    /// that memset was a visible share of a mirrored commit's CPU).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Messages longer than this are refused as soon as their length
    /// arrives (0: the protocol's own bound, `MESSAGE_BYTES_MAX`).
    limit: usize,
    /// After the handshake: every message is followed by a tag, checked
    /// with this key before the message is decoded.
    seal: Option<SealKey>,
}

impl RecvBuf {
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// From now on every message must carry a valid tag under `key`.
    pub(crate) fn set_seal(&mut self, key: SealKey) {
        self.seal = Some(key);
    }

    /// A whole message from the buffered bytes, if there is one. With a
    /// seal, its tag is checked before any of it is decoded: a message
    /// that fails it never leaves this buffer.
    pub(crate) fn decode(&mut self) -> Result<Option<Message>, TransportError> {
        let pending = &self.buf[self.start..self.end];
        if self.limit > 0 && pending.len() >= 4 {
            let len = u32::from_le_bytes(pending[..4].try_into().expect("4 bytes")) as usize;
            if len > self.limit {
                return Err(TransportError::Wire(WireError::TooLong(len)));
            }
        }
        if let Some(seal) = self.seal.as_mut() {
            if pending.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_le_bytes(pending[..4].try_into().expect("4 bytes")) as usize;
            if len > MESSAGE_BYTES_MAX {
                return Err(TransportError::Wire(WireError::TooLong(len)));
            }
            let total = 4 + len + TAG_BYTES;
            if pending.len() < total {
                return Ok(None);
            }
            let (msg, tag) = pending[..total].split_at(4 + len);
            seal.open(msg, tag.try_into().expect("TAG_BYTES"))?;
            let Some((m, used)) = Message::decode(msg)? else {
                unreachable!("a whole message was buffered");
            };
            debug_assert_eq!(used, 4 + len);
            self.start += total;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            return Ok(Some(m));
        }
        match Message::decode(pending)? {
            Some((msg, used)) => {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Room for `READ_CHUNK` more bytes at the end; commit what was read
    /// with [`RecvBuf::filled`]. The decoder refuses any length beyond
    /// MESSAGE_BYTES_MAX, so the buffer never grows past one message plus
    /// a chunk.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        debug_assert!(self.end <= MESSAGE_BYTES_MAX + 4 + TAG_BYTES);
        if self.buf.len() < self.end + READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..self.end + READ_CHUNK]
    }

    /// `n` bytes of the last [`RecvBuf::spare`] were filled.
    pub(crate) fn filled(&mut self, n: usize) {
        debug_assert!(n <= READ_CHUNK && self.end + n <= self.buf.len());
        self.end += n;
    }
}

/// One partner connection on the blocking path.
pub struct BlockingConn {
    stream: TcpStream,
    rx: RecvBuf,
    scratch: Vec<u8>,
    sent: u64,
    send_timeout: Option<Duration>,
    /// After the handshake: the key that tags every message sent.
    seal: Option<SealKey>,
}

/// [`poll2`] until `deadline` (None: for ever): None if the deadline
/// had already passed, without waiting; else (fd ready, woken).
pub(crate) fn poll_until(
    fd: i32,
    events: i16,
    wake: Option<&Wakeup>,
    deadline: Option<Instant>,
) -> io::Result<Option<(bool, bool)>> {
    let left = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            Some(left)
        }
        None => None,
    };
    poll2(fd, events, wake, left).map(Some)
}

/// Waits for `fd` to be ready for `events`, or for `wake`; returns
/// (fd ready, woken). `None` timeout waits forever.
pub(crate) fn poll2(
    fd: i32,
    events: i16,
    wake: Option<&Wakeup>,
    timeout: Option<Duration>,
) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.map_or(-1, |w| w.fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = match timeout {
        None => -1,
        // Round up, so a short timeout does not become a busy loop.
        Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
    };
    loop {
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let ready = fds[0].revents != 0;
        let woken = fds[1].revents != 0;
        if woken {
            if let Some(w) = wake {
                w.drain();
            }
        }
        return Ok((ready, woken));
    }
}

impl BlockingConn {
    pub fn new(stream: TcpStream) -> io::Result<BlockingConn> {
        // Small control messages must not wait for Nagle.
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(BlockingConn {
            stream,
            rx: RecvBuf::default(),
            scratch: Vec::new(),
            sent: 0,
            send_timeout: None,
            seal: None,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn write_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> Result<(), TransportError> {
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        let mut slices: &mut [IoSlice<'_>] = parts;
        while !slices.is_empty() {
            match self.stream.write_vectored(slices) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => {
                    self.sent += n as u64;
                    IoSlice::advance_slices(&mut slices, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if poll_until(self.stream.as_raw_fd(), libc::POLLOUT, None, deadline)?.is_none()
                    {
                        return Err(send_timed_out(self.send_timeout));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// At most this many iovecs per `writev` (IOV_MAX is 1024 on Linux).
const IOVECS_MAX: usize = 512;
/// Ships per `writev`: header, frame and tag each.
const SHIPS_PER_WRITE: usize = IOVECS_MAX / 3;

/// The tags of `ship` messages (header, frame) in order, advancing `seal`;
/// empty without one.
pub(crate) fn ship_tags(
    seal: Option<&mut SealKey>,
    headers: &[[u8; crate::replication::wire::SHIP_HEADER_BYTES]],
    frames: &[&[u8]],
    out: &mut Vec<[u8; TAG_BYTES]>,
) {
    out.clear();
    if let Some(seal) = seal {
        out.extend(headers.iter().zip(frames).map(|(h, f)| seal.seal(&[h, f])));
    }
}

impl Conn for BlockingConn {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        msg.encode(&mut scratch);
        if let Some(seal) = self.seal.as_mut() {
            let tag = seal.seal(&[&scratch]);
            scratch.extend_from_slice(&tag);
        }
        let r = self.write_all_vectored(&mut [IoSlice::new(&scratch)]);
        self.scratch = scratch;
        r
    }

    fn send_ships(
        &mut self,
        commit_lsn: u64,
        prev_lsn: u64,
        frames: &[&[u8]],
    ) -> Result<(), TransportError> {
        let all = ship_headers(commit_lsn, prev_lsn, frames);
        // Tags are computed over the frames where they lie (the segment
        // map) and sent as their own small buffers: no copy of a frame.
        let mut tags = Vec::new();
        ship_tags(self.seal.as_mut(), &all, frames, &mut tags);
        for (i, (chunk, headers)) in frames
            .chunks(SHIPS_PER_WRITE)
            .zip(all.chunks(SHIPS_PER_WRITE))
            .enumerate()
        {
            let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 3);
            for (j, (h, f)) in headers.iter().zip(chunk).enumerate() {
                parts.push(IoSlice::new(h));
                parts.push(IoSlice::new(f));
                if let Some(t) = tags.get(i * SHIPS_PER_WRITE + j) {
                    parts.push(IoSlice::new(t));
                }
            }
            self.write_all_vectored(&mut parts)?;
        }
        Ok(())
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
            match self.stream.read(spare) {
                Ok(0) => {
                    self.rx.filled(0);
                    return Err(TransportError::Closed);
                }
                Ok(n) => {
                    self.rx.filled(n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.rx.filled(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.rx.filled(0);
                    continue;
                }
                Err(e) => {
                    self.rx.filled(0);
                    return Err(e.into());
                }
            }
            match poll_until(self.stream.as_raw_fd(), libc::POLLIN, wake, deadline)? {
                None | Some((_, true)) => return Ok(None),
                Some((_, false)) => {}
            }
        }
    }

    fn path(&self) -> TransportPath {
        TransportPath::Blocking
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
        self.seal = Some(keys.send);
        self.rx.set_seal(keys.recv);
    }
}

/// The error of a send that waited past its deadline for the partner.
pub(crate) fn send_timed_out(t: Option<Duration>) -> TransportError {
    TransportError::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the partner stopped reading: a send waited {} ms for room",
            t.unwrap_or_default().as_millis()
        ),
    ))
}

#[cfg(test)]
mod recv_buf_tests {
    use super::*;

    /// Feeds `bytes` through `spare`/`filled` in reads of the given sizes,
    /// decoding after each, and returns every message decoded.
    fn feed(rx: &mut RecvBuf, bytes: &[u8], reads: &[usize]) -> Vec<Message> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in reads.iter().cycle() {
            if at == bytes.len() {
                break;
            }
            let n = n.min(bytes.len() - at).min(READ_CHUNK);
            rx.spare()[..n].copy_from_slice(&bytes[at..at + n]);
            rx.filled(n);
            at += n;
            while let Some(m) = rx.decode().unwrap() {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn messages_split_and_coalesced_across_reads_decode_in_order() {
        let mut msgs = Vec::new();
        for i in 0..300u64 {
            msgs.push(if i % 3 == 0 {
                Message::Ship {
                    commit_lsn: i,
                    prev_lsn: i,
                    frame: vec![i as u8; 64 + (i as usize * 977) % 150_000],
                }
            } else {
                Message::Ack {
                    received_lsn: i,
                    hardened_lsn: i,
                    applied_lsn: i,
                }
            });
        }
        let mut bytes = Vec::new();
        for m in &msgs {
            m.encode(&mut bytes);
        }
        // Reads of 1 byte, odd sizes, whole chunks: the same messages.
        for reads in [&[1usize, 7, 4096, 65_536, 13][..], &[65_536], &[3, 100_000]] {
            let mut rx = RecvBuf::default();
            assert_eq!(feed(&mut rx, &bytes, reads), msgs, "reads {reads:?}");
            assert_eq!((rx.start, rx.end), (0, 0), "nothing left over");
            // The room stays allocated and initialised for the next read,
            // bounded by the largest message plus a chunk.
            assert!(
                rx.buf.len() <= 150_000 + 64 + READ_CHUNK,
                "{}",
                rx.buf.len()
            );
        }
    }

    /// With a seal, tagged messages decode in order, split across reads;
    /// a flipped byte anywhere in a message or its tag, or a message left
    /// out, is an integrity error and the message is not returned.
    #[test]
    fn sealed_messages_decode_and_tampered_or_missing_ones_do_not() {
        let msgs: Vec<Message> = (0..5u64)
            .map(|i| Message::Ship {
                commit_lsn: i,
                prev_lsn: i,
                frame: vec![i as u8; 48 + 1000 * i as usize],
            })
            .collect();
        let sealed = |skip: Option<usize>| {
            let mut keys = SealKeys::new([1; 32], [2; 32]);
            let mut bytes = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let mut b = Vec::new();
                m.encode(&mut b);
                let t = keys.send.seal(&[&b]);
                if skip != Some(i) {
                    bytes.extend_from_slice(&b);
                    bytes.extend_from_slice(&t);
                }
            }
            bytes
        };
        let receiver = || {
            let mut rx = RecvBuf::default();
            rx.set_seal(SealKeys::new([2; 32], [1; 32]).recv);
            rx
        };
        let bytes = sealed(None);
        assert_eq!(feed(&mut receiver(), &bytes, &[7, 300, 5000]), msgs);
        for at in [0, 4, 30, 3000, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let mut rx = receiver();
            let mut got = Vec::new();
            rx.spare();
            let mut err = None;
            for chunk in bad.chunks(READ_CHUNK) {
                rx.spare()[..chunk.len()].copy_from_slice(chunk);
                rx.filled(chunk.len());
                loop {
                    match rx.decode() {
                        Ok(Some(m)) => got.push(m),
                        Ok(None) => break,
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                if err.is_some() {
                    break;
                }
            }
            assert!(
                matches!(
                    err,
                    Some(TransportError::Integrity(_)) | Some(TransportError::Wire(_))
                ),
                "byte {at}: {err:?}"
            );
            assert!(
                got.len() < msgs.len() && got == msgs[..got.len()],
                "byte {at}"
            );
        }
        let missing = sealed(Some(2));
        let mut rx = receiver();
        rx.spare()[..missing.len().min(READ_CHUNK)]
            .copy_from_slice(&missing[..missing.len().min(READ_CHUNK)]);
        rx.filled(missing.len().min(READ_CHUNK));
        assert_eq!(rx.decode().unwrap(), Some(msgs[0].clone()));
        assert_eq!(rx.decode().unwrap(), Some(msgs[1].clone()));
        assert!(matches!(rx.decode(), Err(TransportError::Integrity(_))));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_the_body_arrives() {
        let mut rx = RecvBuf::default();
        rx.set_limit(1000);
        let mut bytes = Vec::new();
        Message::Ship {
            commit_lsn: 1,
            prev_lsn: 0,
            frame: vec![0; 5000],
        }
        .encode(&mut bytes);
        rx.spare()[..8].copy_from_slice(&bytes[..8]);
        rx.filled(8);
        assert!(matches!(
            rx.decode(),
            Err(TransportError::Wire(WireError::TooLong(_)))
        ));
    }
}
