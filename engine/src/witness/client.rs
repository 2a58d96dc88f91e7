//! A partner's connection to the witness: one request at a time, each
//! with a deadline; any failure drops the connection and the next call
//! reconnects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::replication::handshake::Secret;
use crate::witness::proto::{read_frame, Framer, Reply, Request, NONCE_BYTES, REPLY, REQUEST};

pub struct WitnessClient {
    addr: SocketAddr,
    secret: Secret,
    conn: Option<(TcpStream, Framer, u64)>,
}

impl WitnessClient {
    pub fn new(addr: SocketAddr, secret: Secret) -> WitnessClient {
        WitnessClient {
            addr,
            secret,
            conn: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` and waits for its reply, all within `timeout`.
    pub fn call(&mut self, req: &Request, timeout: Duration) -> Result<Reply, String> {
        let deadline = Instant::now() + timeout;
        let r = self.try_call(req, deadline);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_call(&mut self, req: &Request, deadline: Instant) -> Result<Reply, String> {
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| "the witness did not answer in time".to_string())
        };
        if self.conn.is_none() {
            let mut s = TcpStream::connect_timeout(&self.addr, left()?)
                .map_err(|e| format!("connecting to the witness at {}: {e}", self.addr))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(left()?))
                .map_err(|e| e.to_string())?;
            let mut nonce = [0u8; NONCE_BYTES];
            s.read_exact(&mut nonce)
                .map_err(|e| format!("reading the witness's nonce: {e}"))?;
            // Ours too: a recorded exchange replayed by someone posing as
            // the witness then fails our check.
            let mine = crate::replication::handshake::random_nonce()
                .map_err(|e| format!("no randomness for a nonce: {e}"))?;
            s.set_write_timeout(Some(left()?))
                .map_err(|e| e.to_string())?;
            s.write_all(&mine)
                .map_err(|e| format!("sending our nonce to the witness: {e}"))?;
            self.conn = Some((s, Framer::new(self.secret.clone(), nonce, mine), 0));
        }
        let (s, framer, seq) = self.conn.as_mut().expect("connected");
        s.set_write_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        s.write_all(&framer.seal(REQUEST, *seq, &req.encode()))
            .map_err(|e| format!("writing to the witness: {e}"))?;
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        let payload = read_frame(s).map_err(|e| format!("reading from the witness: {e}"))?;
        let body = framer.open(REPLY, *seq, &payload)?;
        *seq += 1;
        Reply::decode(body)
    }
}
