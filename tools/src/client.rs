//! A small blocking RESP client (the demo's workload and `mirrorlog status`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::resp::{encode_command, parse_reply, Reply};

pub struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        Ok(Client {
            s,
            buf: Vec::new(),
            out: Vec::new(),
        })
    }

    /// The connection itself, for a caller that speaks RESP on its own
    /// from here (the benchmark's event-driven load generator). Call it
    /// between commands: bytes already read and not yet parsed would be
    /// lost, so that is a panic.
    pub fn into_stream(self) -> TcpStream {
        assert!(
            self.buf.is_empty(),
            "into_stream with {} unparsed bytes",
            self.buf.len()
        );
        self.s
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.out.clear();
        encode_command(args, &mut self.out);
        self.s.write_all(&self.out)?;
        self.read_reply()
    }

    /// Sends every command in one write, then reads their replies in order.
    pub fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> std::io::Result<Vec<Reply>> {
        self.out.clear();
        for c in cmds {
            encode_command(c, &mut self.out);
        }
        self.s.write_all(&self.out)?;
        (0..cmds.len()).map(|_| self.read_reply()).collect()
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
