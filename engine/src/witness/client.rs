//! A partner's connection to the witness: one request at a time, each
//! with a deadline; any failure drops the connection and the next call
//! reconnects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::replication::handshake::Secret;
use crate::transport::tls::{looks_like_tls, TlsEnd, TlsStream, WitnessTls};
use crate::witness::proto::{
    read_frame, End, Framer, Reply, Request, WitnessHandshake, WitnessStream, HELLO_BYTES,
    WITNESS_CONFIRM_BYTES,
};

pub struct WitnessClient {
    addr: SocketAddr,
    secret: Secret,
    tls: Option<WitnessTls>,
    conn: Option<(WitnessStream, Framer)>,
}

impl WitnessClient {
    pub fn new(addr: SocketAddr, secret: Secret) -> WitnessClient {
        WitnessClient {
            addr,
            secret,
            tls: None,
            conn: None,
        }
    }

    /// Reaches the witness over TLS (None: plaintext).
    pub fn with_tls(mut self, tls: Option<WitnessTls>) -> WitnessClient {
        self.tls = tls;
        self
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
            let s = TcpStream::connect_timeout(&self.addr, left()?)
                .map_err(|e| format!("connecting to the witness at {}: {e}", self.addr))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut s = match &self.tls {
                None => WitnessStream::Plain(s),
                Some(tls) => WitnessStream::Tls(Box::new(
                    TlsStream::handshake(
                        s,
                        TlsEnd::Connect(&tls.client, &tls.server_name),
                        deadline,
                        "witness",
                        "give the witness --tls-cert, --tls-key and --tls-ca, or drop --witness-tls-ca here",
                        &|| {},
                    )
                    .map_err(|f| format!("witness at {}: {f}", self.addr))?,
                )),
            };
            let nonce = crate::replication::handshake::random_nonce()
                .map_err(|e| format!("no randomness for a nonce: {e}"))?;
            let seed = crate::replication::pake::random_seed()
                .map_err(|e| format!("no randomness for the key exchange: {e}"))?;
            let mut hs = WitnessHandshake::start(End::Partner, &self.secret, nonce, seed);
            hs.bind_channel(s.binding());
            // Both ends send their hello at once.
            s.sock()
                .set_write_timeout(Some(left()?))
                .map_err(|e| e.to_string())?;
            s.write_all(&hs.hello())
                .map_err(|e| format!("sending our hello to the witness: {e}"))?;
            s.sock()
                .set_read_timeout(Some(left()?))
                .map_err(|e| e.to_string())?;
            let mut theirs = [0u8; HELLO_BYTES];
            read_greeting(&mut s, &mut theirs, "hello")?;
            let (confirming, confirm) = hs.on_hello(&theirs)?;
            s.write_all(&confirm)
                .map_err(|e| format!("sending our key confirmation to the witness: {e}"))?;
            let mut got = [0u8; WITNESS_CONFIRM_BYTES];
            read_greeting(&mut s, &mut got, "key confirmation")?;
            let framer = confirming.on_confirm(&got)?;
            self.conn = Some((s, framer));
        }
        let (s, framer) = self.conn.as_mut().expect("connected");
        s.sock()
            .set_write_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        s.write_all(&framer.seal(&req.encode()))
            .map_err(|e| format!("writing to the witness: {e}"))?;
        s.sock()
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        let payload = read_frame(s).map_err(|e| format!("reading from the witness: {e}"))?;
        let body = framer.open(&payload)?;
        Reply::decode(body)
    }
}

/// Reads one fixed-size piece of the witness's handshake; an early close
/// is told apart (an old witness closes after its bare nonce).
fn read_greeting(s: &mut WitnessStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got >= 2 && looks_like_tls(&buf[..got]) == Some(true) => {
                return Err(
                    "the witness answered with TLS: it requires TLS on its port; give this node \
                     --witness-tls-ca (with --partner-tls-cert and --partner-tls-key), or drop \
                     --tls-cert/--tls-key/--tls-ca from the witness"
                        .into(),
                )
            }
            Ok(0) => {
                return Err(format!(
                    "the witness closed the connection during the handshake after {got} bytes of its {what} \
                     (a witness of an older mirrorlog speaks witness protocol 1 and closes here; \
                     a witness with another secret closes after the key confirmation)"
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the witness's {what}: {e}")),
        }
    }
    Ok(())
}
