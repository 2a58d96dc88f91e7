//! Principal and mirror talking through a fault-injecting TCP proxy on
//! 127.0.0.1: delays, stalls longer than the partner timeout, cut
//! connections and bytes dropped out of the stream (which a real network
//! never does to TCP, but a broken middlebox might), while committers
//! commit at remote-flush. Nothing may be corrupted or lost: the sessions
//! notice, close and reconnect; every acknowledged commit ends on both
//! logs; the logs end byte-identical. Runs on both transport paths.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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

use common::nodes::{log_opts, wait_until};

fn tempdir(tag: &str) -> std::path::PathBuf {
    common::nodes::tempdir("proxy", tag)
}

const PASS: u8 = 0;
const DELAY: u8 = 1;
const STALL: u8 = 2;
/// Drop the next chunk of bytes going principal → mirror, then pass.
const DROP: u8 = 3;

/// A TCP proxy whose behaviour can be changed at any time.
struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped to cut every open connection.
    cut: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl FaultProxy {
    fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let p = FaultProxy {
            addr,
            mode: Arc::new(AtomicU8::new(PASS)),
            cut: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let (mode, cut, stop, dropped) = (
            p.mode.clone(),
            p.cut.clone(),
            p.stop.clone(),
            p.dropped.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let (down, _) = match listener.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                // Like the partners themselves: no Nagle delay on small messages.
                down.set_nodelay(true).unwrap();
                up.set_nodelay(true).unwrap();
                let generation = cut.load(Ordering::Acquire);
                // mirror (down) → principal (up), and principal → mirror.
                for (from, to, to_mirror) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap(), false),
                    (up, down, true),
                ] {
                    let (mode, cut, stop, dropped) =
                        (mode.clone(), cut.clone(), stop.clone(), dropped.clone());
                    std::thread::spawn(move || {
                        pump(
                            from, to, to_mirror, generation, &mode, &cut, &stop, &dropped,
                        )
                    });
                }
            }
        });
        p
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
    }

    fn cut_all(&self) {
        self.cut.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut_all();
    }
}

#[allow(clippy::too_many_arguments)]
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    to_mirror: bool,
    generation: u64,
    mode: &AtomicU8,
    cut: &AtomicU64,
    stop: &AtomicBool,
    dropped: &AtomicU64,
) {
    from.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = vec![0u8; 16 << 10];
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    loop {
        if stop.load(Ordering::Acquire) || cut.load(Ordering::Acquire) != generation {
            close(&from, &to);
            return;
        }
        if mode.load(Ordering::Acquire) == STALL {
            // Hold everything: read nothing, forward nothing.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                close(&from, &to);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => {
                close(&from, &to);
                return;
            }
        };
        match mode.load(Ordering::Acquire) {
            DELAY => std::thread::sleep(Duration::from_millis(3)),
            // Lose bytes from the middle of the chunk, once.
            DROP if to_mirror
                && n > 64
                && mode
                    .compare_exchange(DROP, PASS, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                dropped.fetch_add(1, Ordering::AcqRel);
                let keep_head = n / 3;
                let skip = n / 3;
                if to.write_all(&buf[..keep_head]).is_err()
                    || to.write_all(&buf[keep_head + skip..n]).is_err()
                {
                    close(&from, &to);
                    return;
                }
                continue;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            close(&from, &to);
            return;
        }
    }
}

fn config(dir: &Path, t: TransportChoice) -> NodeConfig {
    let id = NodeIdentity {
        database_id: *b"proxy-test-db-01",
        secret: Secret::new(b"proxy-test-shared-secret".to_vec()).unwrap(),
    };
    let mut c = NodeConfig::new(dir, id);
    c.log = log_opts();
    c.transport = t;
    c.session.partner_timeout_ms = 400;
    c.session.heartbeat_ms = 50;
    c.logger = Logger::new(|_| {});
    c
}

#[derive(Default)]
struct Nothing;

impl Applier for Nothing {
    fn apply(&mut self, _: u64, _: u64, records: &Records) -> Result<(), String> {
        let _ = records.iter().count();
        Ok(())
    }
}

/// A log's batches: (LSN, frame bytes, records).
type Batches = Vec<(u64, Vec<u8>, Vec<Vec<u8>>)>;

fn batches(dir: &Path) -> Batches {
    // Opening recovers the log: damage anywhere would be an error here.
    let (log, _) = Log::open(dir, log_opts()).unwrap();
    log.read_from(log.start_lsn())
        .unwrap()
        .map(|v| {
            let v = v.unwrap();
            let recs = v.records().unwrap().iter().map(|r| r.to_vec()).collect();
            (v.lsn(), v.frame().to_vec(), recs)
        })
        .collect()
}

/// Acknowledged commits: (LSN of the batch, record, exposed).
type Acks = Arc<Mutex<Vec<(u64, Vec<u8>, bool)>>>;

on_both_paths!(delays_stalls_cuts_and_dropped_bytes_lose_and_corrupt_nothing);

fn delays_stalls_cuts_and_dropped_bytes_lose_and_corrupt_nothing(t: TransportChoice) {
    let name = format!("{t:?}");
    let (pd, md) = (tempdir(&format!("p-{name}")), tempdir(&format!("m-{name}")));
    let p = Arc::new(Principal::start(config(&pd, t), "127.0.0.1:0".parse().unwrap()).unwrap());
    let proxy = FaultProxy::start(p.local_addr());
    let m = Mirror::start(config(&md, t), proxy.addr, Nothing, None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let committers: Vec<_> = (0..3)
        .map(|th| {
            let (p, acks, stop) = (p.clone(), acks.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let rec = format!("proxy-t{th}-c{i}-{}", "x".repeat((i % 200) as usize));
                    let c = p
                        .commit_at(&[rec.as_bytes()], Level::RemoteFlush)
                        .unwrap()
                        .wait()
                        .unwrap();
                    acks.lock()
                        .unwrap()
                        .push((c.lsn_start, rec.into_bytes(), c.exposed));
                    i += 1;
                }
            })
        })
        .collect();
    // The fault schedule: each fault, then back to normal until the
    // mirror is SYNCHRONIZED again.
    let resync = |what: &str| {
        proxy.set(PASS);
        wait_until(
            &format!("SYNCHRONIZED after {what}"),
            Duration::from_secs(20),
            || p.status().state == MirroringState::Synchronized,
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    proxy.set(DELAY);
    std::thread::sleep(Duration::from_millis(300));
    resync("delays");
    let sessions_before = p.status().sessions;
    proxy.set(STALL);
    std::thread::sleep(Duration::from_millis(1000)); // > partner timeout
    resync("a stall");
    assert!(
        p.status().sessions > sessions_before,
        "a stall beyond the partner timeout must end the session"
    );
    proxy.cut_all();
    resync("a cut");
    for round in 0..3 {
        let before = proxy.dropped.load(Ordering::Acquire);
        proxy.set(DROP);
        wait_until("bytes to be dropped", Duration::from_secs(10), || {
            proxy.dropped.load(Ordering::Acquire) > before
        });
        resync(&format!("dropped bytes (round {round})"));
    }
    stop.store(true, Ordering::Release);
    for c in committers {
        c.join().unwrap();
    }
    let end = p.log().hardened_lsn();
    wait_until(
        "everything applied on the mirror",
        Duration::from_secs(20),
        || {
            let s = p.status();
            s.mirror.applied == end && s.send_queue_bytes == 0
        },
    );
    let sessions = p.status().sessions;
    assert!(
        sessions >= 5,
        "expected a reconnection per fault, got {sessions} sessions"
    );
    drop(m);
    drop(proxy);
    Arc::try_unwrap(p)
        .ok()
        .expect("committers joined")
        .shutdown();
    let (pl, ml) = (batches(&pd), batches(&md));
    let acks = acks.lock().unwrap();
    let reached = acks.iter().filter(|a| !a.2).count();
    assert!(
        reached > 100,
        "too few commits reached the mirror: {reached} of {}",
        acks.len()
    );
    for (lsn, rec, _) in acks.iter() {
        for (what, log) in [("principal", &pl), ("mirror", &ml)] {
            let b = log
                .iter()
                .find(|b| b.0 == *lsn)
                .unwrap_or_else(|| panic!("{what}: acknowledged batch at {lsn} missing"));
            assert!(
                b.2.iter().any(|r| r == rec),
                "{what}: record missing at {lsn}"
            );
        }
    }
    let frames = |l: &Batches| l.iter().map(|b| b.1.clone()).collect::<Vec<_>>();
    assert!(frames(&pl) == frames(&ml), "logs differ after quiescence");
}
