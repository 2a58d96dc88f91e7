//! Hostile peers before authentication (issue 13), with real sockets on
//! loopback: floods of silent connections on the principal's partner port
//! and on the witness port, renewed as fast as they are closed, must not
//! keep the real partner out; a flood of bad handshakes must not flood
//! the log or overwrite the session's `last_error`.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::log::Records;
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, WitnessLink};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;
use mirrorlog_engine::witness::client::WitnessClient;
use mirrorlog_engine::witness::proto::{Reply, Request};
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

use common::nodes::{tempdir, wait_until};

const DB: [u8; 16] = *b"hostile-peers-db";

fn secret() -> Secret {
    Secret::new(b"hostile-peers-shared-secret".to_vec()).unwrap()
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

type Lines = Arc<Mutex<Vec<String>>>;

fn logger(lines: &Lines) -> Logger {
    let lines = lines.clone();
    Logger::new(move |s| lines.lock().unwrap().push(s.to_string()))
}

fn config(dir: &Path, timeout_ms: u64, lines: &Lines) -> NodeConfig {
    let mut c = NodeConfig::new(
        dir,
        NodeIdentity {
            database_id: DB,
            secret: secret(),
        },
    );
    c.log = common::nodes::log_opts();
    c.transport = TransportChoice::Blocking;
    c.session.partner_timeout_ms = timeout_ms;
    c.session.heartbeat_ms = 30;
    c.logger = logger(lines);
    c
}

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl Applier for Count {
    fn apply(&mut self, _start: u64, _end: u64, records: &Records) -> Result<(), String> {
        self.0
            .fetch_add(records.iter().count() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn rewind(&mut self, lsn: u64) -> Result<u64, String> {
        Ok(lsn)
    }
}

/// `n` connections to `addr`, each renewed as soon as it is closed. Each
/// sends `say` (nothing: a silent flood) and then only reads.
struct Flood {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

fn flood(addr: SocketAddr, n: usize, say: &'static [u8]) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let threads = (0..n)
        .map(|_| {
            let (stop, connects) = (stop.clone(), connects.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    if !say.is_empty() && s.write_all(say).is_err() {
                        continue;
                    }
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut buf = [0u8; 256];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    Flood {
        stop,
        connects,
        threads,
    }
}

impl Flood {
    fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    fn end(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.connects()
    }
}

fn preauth_lines(lines: &Lines) -> Vec<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("before authentication"))
        .cloned()
        .collect()
}

on_both_paths!(
    principal_flooded_by_silent_connections_a_restarting_mirror_still_gets_in_and_synchronizes
);

fn principal_flooded_by_silent_connections_a_restarting_mirror_still_gets_in_and_synchronizes(
    t: TransportChoice,
) {
    let (pd, md) = (
        tempdir("hostile", "silent-p"),
        tempdir("hostile", "silent-m"),
    );
    let lines: Lines = Arc::default();
    // A partner timeout of 2 s: before the fix each silent connection held
    // one of 16 handshake slots that long.
    let with = |dir: &Path| {
        let mut c = config(dir, 2000, &lines);
        c.transport = t;
        c
    };
    let p = Principal::start(with(&pd), "127.0.0.1:0".parse().unwrap()).unwrap();
    let applied = Count::default();
    let m = Mirror::start(with(&md), p.local_addr(), applied.clone(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    p.commit_wait(&[b"before the flood"]).unwrap();
    let f = flood(p.local_addr(), 64, b"");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        f.connects() >= 64,
        "the flood made only {} connections",
        f.connects()
    );
    // The mirror restarts during the flood.
    drop(m.shutdown());
    let restarted = Instant::now();
    let m = Mirror::start(with(&md), p.local_addr(), applied.clone(), None).unwrap();
    wait_until(
        "the restarted mirror to synchronize during the flood",
        Duration::from_secs(8),
        || p.status().state == MirroringState::Synchronized,
    );
    let took = restarted.elapsed();
    // And stays attached while the flood goes on.
    for i in 0..50u32 {
        assert!(!p.commit_wait(&[&i.to_le_bytes()]).unwrap().exposed);
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = p.status();
    assert_eq!(s.state, MirroringState::Synchronized);
    let connects = f.end();
    eprintln!(
        "mirror synchronized {took:?} after its restart; {connects} flood connections, {} refused before authentication",
        s.preauth_rejected
    );
    assert!(s.preauth_rejected > 0);
    assert!(
        !s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("before authentication"),
        "{:?}",
        s.last_error
    );
    let warned = preauth_lines(&lines);
    assert!(warned.len() <= 3, "{warned:?}");
    drop(m);
}

#[test]
fn a_flood_of_bad_handshakes_writes_a_bounded_number_of_lines_and_leaves_last_error() {
    let (pd, md) = (tempdir("hostile", "bad-p"), tempdir("hostile", "bad-m"));
    let lines: Lines = Arc::default();
    let p = Principal::start(config(&pd, 1000, &lines), "127.0.0.1:0".parse().unwrap()).unwrap();
    let m = Mirror::start(
        config(&md, 1000, &lines),
        p.local_addr(),
        Count::default(),
        None,
    )
    .unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    let before = p.status().last_error;
    let lines_before = lines.lock().unwrap().len();
    // Bytes that are no handshake (a length prefix far beyond any
    // handshake message): each is refused as soon as it arrives. Fewer
    // connections than the per-source limit, so every one fails on its
    // bytes, none is closed to make room.
    let f = flood(p.local_addr(), 4, &[0xde; 64]);
    std::thread::sleep(Duration::from_secs(2));
    let connects = f.end();
    let s = p.status();
    let lines_during = lines.lock().unwrap()[lines_before..].to_vec();
    eprintln!(
        "{connects} bad handshakes in 2 s, {} refused, {} log lines",
        s.preauth_rejected,
        lines_during.len()
    );
    assert!(
        connects >= 100,
        "the flood made only {connects} connections"
    );
    assert!(s.preauth_rejected >= 100, "{}", s.preauth_rejected);
    assert_eq!(
        s.last_error, before,
        "a pre-auth failure overwrote last_error"
    );
    assert!(
        lines_during.len() <= 3,
        "{} lines: {:?}",
        lines_during.len(),
        &lines_during[..lines_during.len().min(5)]
    );
    // The real session never noticed.
    assert_eq!(s.state, MirroringState::Synchronized);
    assert!(!p.commit_wait(&[b"after"]).unwrap().exposed);
    drop(m);
}

#[test]
fn witness_flooded_by_silent_connections_still_answers_partners_and_a_failover_completes() {
    const TIMEOUT_MS: u64 = 300;
    let (pd, md, wd) = (
        tempdir("hostile", "wit-p"),
        tempdir("hostile", "wit-m"),
        tempdir("hostile", "wit-w"),
    );
    let lines: Lines = Arc::default();
    let w = WitnessServer::start(WitnessOptions {
        dir: wd.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: secret(),
        database_id: DB,
        lease: LeaseConfig {
            lease_ms: TIMEOUT_MS,
            rho: 0.01,
        },
        logger: logger(&lines),
        tls: None,
    })
    .unwrap();
    // The flood starts before either partner, so each must open its
    // witness connections through it (before the fix 64 silent ones took
    // every connection the witness would serve).
    let f = flood(w.local_addr(), 80, b"");
    wait_until("the flood to run", Duration::from_secs(5), || {
        f.connects() >= 200
    });
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let with_witness = |dir: &Path, name: SocketAddr| {
        let mut c = config(dir, TIMEOUT_MS, &lines);
        c.witness = Some(WitnessLink {
            addr: w.local_addr(),
            name: name.to_string(),
            auto_failover: true,
            tls: None,
        });
        c
    };
    let a = Principal::start(with_witness(&pd, a_addr), a_addr).unwrap();
    let b = Mirror::start(with_witness(&md, b_addr), a_addr, Count::default(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(8), || {
        a.status().state == MirroringState::Synchronized
    });
    for i in 0..20u32 {
        assert!(!a.commit_wait(&[&i.to_le_bytes()]).unwrap().exposed);
    }
    // A fresh client is answered during the flood.
    let asked = Instant::now();
    let mut c = WitnessClient::new(w.local_addr(), secret());
    let answer = loop {
        match c.call(&Request::Query { database_id: DB }, Duration::from_secs(1)) {
            Ok(r) => break r,
            Err(e) => assert!(
                asked.elapsed() < Duration::from_secs(3),
                "no answer during the flood: {e}"
            ),
        }
    };
    assert!(matches!(answer, Reply::State { .. }), "{answer:?}");
    let answered = asked.elapsed();
    // The principal dies; the mirror fails over through the flood.
    let died = Instant::now();
    drop(a);
    wait_until(
        "the mirror to be promoted during the flood",
        Duration::from_secs(5),
        || b.promoted().is_some(),
    );
    let took = died.elapsed();
    let connects = f.end();
    eprintln!(
        "query answered in {answered:?}; failover took {took:?}; {connects} flood connections, {} refused before authentication",
        w.preauth_rejected()
    );
    assert!(w.preauth_rejected() > 0);
    let warned = preauth_lines(&lines);
    assert!(warned.len() <= 3, "{warned:?}");
    let p = b.promoted().unwrap();
    assert!(!p.forced);
    assert_eq!(w.state().epoch, p.epoch);
}
