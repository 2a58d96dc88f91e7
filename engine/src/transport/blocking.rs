//! Partner messages over a blocking `TcpStream`.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

use crate::replication::wire::{ship_header, Message, WireError, MESSAGE_BYTES_MAX};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the partner closed the connection")]
    Closed,
    #[error("the partner sent a malformed message: {0}")]
    Wire(#[from] WireError),
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// One partner connection.
pub struct BlockingConn {
    stream: TcpStream,
    /// Received bytes not yet decoded are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    scratch: Vec<u8>,
}

impl BlockingConn {
    pub fn new(stream: TcpStream) -> io::Result<BlockingConn> {
        // Small control messages must not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(BlockingConn {
            stream,
            buf: Vec::new(),
            start: 0,
            scratch: Vec::new(),
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        self.scratch.clear();
        msg.encode(&mut self.scratch);
        self.stream.write_all(&self.scratch)?;
        Ok(())
    }

    /// Sends a `ship` whose frame is written straight from `frame` (for
    /// example a `BatchView::frame()` over the segment map): the kernel
    /// copies it into the socket, this process does not.
    pub fn send_ship(&mut self, commit_lsn: u64, frame: &[u8]) -> Result<(), TransportError> {
        let header = ship_header(commit_lsn, frame.len());
        let mut parts = [IoSlice::new(&header), IoSlice::new(frame)];
        let mut slices: &mut [IoSlice<'_>] = &mut parts;
        while !slices.is_empty() {
            let n = self.stream.write_vectored(slices)?;
            if n == 0 {
                return Err(TransportError::Closed);
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Receives the next message, waiting at most `timeout` (None: forever).
    /// `Ok(None)`: the timeout passed first.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
        self.stream.set_read_timeout(timeout)?;
        loop {
            if let Some((msg, used)) = Message::decode(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(Some(msg));
            }
            // Not a whole message yet: drop what was consumed, read more.
            // The decoder refused any length beyond MESSAGE_BYTES_MAX, so
            // the buffer never grows past one message plus a chunk.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            debug_assert!(self.buf.len() <= MESSAGE_BYTES_MAX + 4);
            let old = self.buf.len();
            self.buf.resize(old + READ_CHUNK, 0);
            match self.stream.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    return Err(TransportError::Closed);
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.buf.truncate(old);
                    return Ok(None);
                }
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e.into());
                }
            }
        }
    }
}
