//! Hostile middleboxes (issue 13): a proxy on 127.0.0.1 that rewrites
//! bytes in flight and fixes up whatever checksum covers them. On the
//! partner link it changes a value inside a shipped batch frame and
//! recomputes the frame's CRC32C, so the frame is valid by every check the
//! frame format itself has; on the witness link it flips a byte of a reply
//! (and of a request). The session-keyed MAC on every message must catch
//! each, end the session with an integrity error, and keep the altered
//! bytes out of the mirror's log and state.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::commit::Level;
use mirrorlog_engine::log::{Log, Records};
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;
use mirrorlog_engine::witness::client::WitnessClient;
use mirrorlog_engine::witness::proto::{Reply, Request};
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

use common::nodes::{log_opts, wait_until};

const ORIGINAL: &[u8] = b"account=alice;balance=0000100";
const TAMPERED: &[u8] = b"account=alice;balance=9000100";
const FRAME_MAGIC: [u8; 4] = 0x4642_4C4Du32.to_le_bytes();
const FRAME_HEADER_BYTES: usize = 40;

/// Rewrites `ORIGINAL` into `TAMPERED` inside the first batch frame that
/// holds it, recomputing the frame's CRC32C (docs/format.md, "Batch
/// frame": CRC of bytes [0, 36) and the stored payload). Returns whether
/// it did. The frame must be whole in `buf`.
fn tamper_frame(buf: &mut [u8], at: usize) -> bool {
    let stored = u32::from_le_bytes(buf[at + 32..at + 36].try_into().unwrap()) as usize;
    let payload = at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + stored;
    let Some(pos) = buf[payload.clone()]
        .windows(ORIGINAL.len())
        .position(|w| w == ORIGINAL)
    else {
        return false;
    };
    let i = payload.start + pos;
    buf[i..i + ORIGINAL.len()].copy_from_slice(TAMPERED);
    let mut crc = crc32c::crc32c(&buf[at..at + 36]);
    crc = crc32c::crc32c_append(crc, &buf[payload]);
    buf[at + 36..at + 40].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Where the last incomplete frame (by its magic) starts in `buf`, if any:
/// bytes from there are held back until the frame is whole. Also holds
/// back a tail that could be the start of a magic.
fn hold_from(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(p) = buf[at..].windows(4).position(|w| w == FRAME_MAGIC) {
        let o = at + p;
        if o + FRAME_HEADER_BYTES > buf.len() {
            return o;
        }
        let stored = u32::from_le_bytes(buf[o + 32..o + 36].try_into().unwrap()) as usize;
        if stored < 1 << 20 && o + FRAME_HEADER_BYTES + stored > buf.len() {
            return o;
        }
        at = o + 4;
    }
    let tail = buf.len().saturating_sub(3);
    (tail..buf.len())
        .find(|&i| FRAME_MAGIC.starts_with(&buf[i..]))
        .unwrap_or(buf.len())
}

/// A proxy that, once, rewrites the value in the principal → mirror
/// stream; everything else passes. `tampered` counts rewrites.
struct TamperProxy {
    addr: SocketAddr,
    tampered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TamperProxy {
    fn start(upstream: SocketAddr) -> TamperProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let tampered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tampered.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                for x in [&down, &up] {
                    x.set_nodelay(true).unwrap();
                }
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let s1 = s.clone();
                std::thread::spawn(move || pump(d2, u2, None, &s1));
                let (t2, s2) = (t.clone(), s.clone());
                std::thread::spawn(move || pump(up, down, Some(&t2), &s2));
            }
        });
        TamperProxy {
            addr,
            tampered,
            stop,
        }
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Forwards `from` to `to`; with `tamper`, rewrites the value in the first
/// frame holding it (across every connection: once in all).
fn pump(mut from: TcpStream, mut to: TcpStream, tamper: Option<&AtomicU64>, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    loop {
        if stop.load(Ordering::Acquire) {
            return close(&from, &to);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return close(&from, &to),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return close(&from, &to),
        };
        let Some(count) = tamper else {
            if to.write_all(&buf[..n]).is_err() {
                return close(&from, &to);
            }
            continue;
        };
        pending.extend_from_slice(&buf[..n]);
        let ready = if count.load(Ordering::Acquire) == 0 {
            hold_from(&pending)
        } else {
            pending.len()
        };
        if count.load(Ordering::Acquire) == 0 {
            let mut at = 0;
            while let Some(p) = pending[at..ready].windows(4).position(|w| w == FRAME_MAGIC) {
                let o = at + p;
                if o + FRAME_HEADER_BYTES <= ready && tamper_frame(&mut pending[..ready], o) {
                    count.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                at = o + 4;
            }
        }
        if to.write_all(&pending[..ready]).is_err() {
            return close(&from, &to);
        }
        pending.drain(..ready);
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl Applier for Recorder {
    fn apply(&mut self, _: u64, _: u64, records: &Records) -> Result<(), String> {
        let mut v = self.0.lock().unwrap();
        v.extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }
}

fn config(dir: &Path, t: TransportChoice, lines: &Arc<Mutex<Vec<String>>>) -> NodeConfig {
    let id = NodeIdentity {
        database_id: *b"tamper-test-db01",
        secret: Secret::new(b"tamper-test-shared-secret".to_vec()).unwrap(),
    };
    let mut c = NodeConfig::new(dir, id);
    c.log = log_opts();
    c.transport = t;
    c.session.partner_timeout_ms = 400;
    c.session.heartbeat_ms = 50;
    let l = lines.clone();
    c.logger = Logger::new(move |s| l.lock().unwrap().push(s.to_string()));
    c
}

fn log_records(dir: &Path) -> Vec<Vec<u8>> {
    let (log, _) = Log::open(dir, log_opts()).unwrap();
    log.read_from(log.start_lsn())
        .unwrap()
        .flat_map(|v| {
            let v = v.unwrap();
            v.records()
                .unwrap()
                .iter()
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

on_both_paths!(regression_tampering_proxy_rewrites_a_shipped_value_and_its_crc);

/// Issue 13: a proxy rewrote a value inside a shipped frame and recomputed
/// its CRC; the mirror served the tampered value, reported SYNCHRONIZED
/// and its log checked clean. Now the ship's tag fails, the session ends
/// with an integrity error (logged, and in the status), the mirror
/// reconnects and receives the genuine batch, and the altered value is in
/// neither its log nor its state.
fn regression_tampering_proxy_rewrites_a_shipped_value_and_its_crc(t: TransportChoice) {
    let name = format!("{t:?}");
    let (pd, md) = (
        common::nodes::tempdir("tamper", &format!("p-{name}")),
        common::nodes::tempdir("tamper", &format!("m-{name}")),
    );
    let (p_lines, m_lines) = (Arc::default(), Arc::default());
    let p = Principal::start(config(&pd, t, &p_lines), "127.0.0.1:0".parse().unwrap()).unwrap();
    let proxy = TamperProxy::start(p.local_addr());
    let applied = Recorder::default();
    let m = Mirror::start(config(&md, t, &m_lines), proxy.addr, applied.clone(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    // A commit at remote-flush. (The tampered session ends while it
    // waits, so the principal may acknowledge it exposed, as it does for
    // any lost mirror.)
    let _ = p
        .commit_at(&[ORIGINAL], Level::RemoteFlush)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        proxy.tampered.load(Ordering::Acquire),
        1,
        "the proxy tampered"
    );
    let end = p.log().hardened_lsn();
    wait_until(
        "the mirror applied the batch",
        Duration::from_secs(10),
        || m.status().mirror.applied >= end,
    );
    let got = applied.0.lock().unwrap().clone();
    assert!(
        !got.iter().any(|r| r == TAMPERED),
        "the mirror applied the tampered value: {got:?}"
    );
    assert!(got.iter().any(|r| r == ORIGINAL), "{got:?}");
    let lines = m_lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("integrity check failed")),
        "the mirror logged the integrity failure: {lines:#?}"
    );
    assert!(
        m.status().sessions >= 2,
        "the tampered session ended and a new one began"
    );
    let last = m.status().last_error.unwrap_or_default();
    assert!(
        last.contains("integrity check failed"),
        "the status names the integrity failure: {last}"
    );
    drop(m);
    drop(proxy);
    p.shutdown();
    let (pl, ml) = (log_records(&pd), log_records(&md));
    assert!(ml.iter().any(|r| r == ORIGINAL));
    assert!(
        !ml.iter().any(|r| r == TAMPERED),
        "tampered value in the mirror's log"
    );
    assert_eq!(pl, ml, "the logs hold the same records");
}

/// Flips one byte of the first post-handshake frame in one direction of a
/// witness connection (`skip` bytes in: the handshake's hello and
/// confirmation), on every connection while `armed`.
fn witness_proxy(upstream: SocketAddr, to_partner: bool, armed: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let Ok(up) = TcpStream::connect(upstream) else {
                return;
            };
            let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let a1 = armed.clone();
            let a2 = armed.clone();
            // Witness hello (71) + confirmation (32), then a frame's
            // length (4) and type (1): the byte after is its first field.
            let flip_at = 71 + 32 + 4 + 1;
            std::thread::spawn(move || flip_pump(up, down, to_partner, flip_at, &a1));
            std::thread::spawn(move || flip_pump(d2, u2, !to_partner, flip_at, &a2));
        }
    });
    addr
}

fn flip_pump(mut from: TcpStream, mut to: TcpStream, flip: bool, at: usize, armed: &AtomicBool) {
    let mut seen = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if flip && armed.load(Ordering::Acquire) && seen <= at && at < seen + n {
            buf[at - seen] ^= 0x01;
        }
        seen += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A byte flipped in the witness's reply, or in the partner's request, is
/// caught by the session-keyed tag: the call fails with an integrity
/// error and the altered reply is never returned; with the proxy disarmed
/// the next call (a new connection) succeeds.
#[test]
fn regression_witness_link_rejects_a_tampered_reply_or_request() {
    let secret = Secret::new(b"tamper-test-witness-secret".to_vec()).unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = lines.clone();
    let dir = common::nodes::tempdir("tamper", "witness");
    let w = WitnessServer::start(WitnessOptions {
        dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: secret.clone(),
        database_id: *b"tamper-test-db01",
        lease: LeaseConfig::default(),
        logger: Logger::new(move |s| l.lock().unwrap().push(s.to_string())),
        tls: None,
    })
    .unwrap();
    let query = Request::Query {
        database_id: *b"tamper-test-db01",
    };
    for to_partner in [true, false] {
        let armed = Arc::new(AtomicBool::new(true));
        let addr = witness_proxy(w.local_addr(), to_partner, armed.clone());
        let mut c = WitnessClient::new(addr, secret.clone());
        let err = c.call(&query, Duration::from_secs(5)).unwrap_err();
        if to_partner {
            assert!(err.contains("integrity check"), "{err}");
        } else {
            // The witness refuses the request and closes; it logs why.
            wait_until("the witness to log it", Duration::from_secs(5), || {
                lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("integrity check"))
            });
        }
        armed.store(false, Ordering::Release);
        let reply = c.call(&query, Duration::from_secs(5)).unwrap();
        assert!(matches!(reply, Reply::State { epoch: 0, .. }), "{reply:?}");
    }
    w.shutdown();
}
