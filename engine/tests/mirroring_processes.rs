//! Mirroring across real processes on 127.0.0.1, with SIGKILL.
//!
//! * The mirror is a child process, killed with SIGKILL at random moments
//!   while the principal (this process) commits at remote-flush from
//!   several threads. After each kill, before anything restarts, the
//!   mirror's log directory is recovered here and must hold every commit
//!   acknowledged (not exposed) before the kill, byte for byte. Then the
//!   mirror restarts, catches up and is SYNCHRONIZED again.
//! * The principal is a child process, killed with SIGKILL while it
//!   commits; the mirror (this process) keeps running and reconnects to
//!   each new incarnation (a new epoch, on the same port). Every commit a
//!   killed principal acknowledged at remote-flush survives both in the
//!   principal's recovered log and on the mirror, and a tail the mirror
//!   received but the principal lost is cut from the mirror.
//!
//! Both end with the logs byte-identical after quiescence. Children are
//! this test binary re-run with environment variables selecting
//! `child_node` (ignored in normal runs). Each scenario runs on both
//! transport paths.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

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
    common::nodes::tempdir("proc", tag)
}

const ROLE_ENV: &str = "MIRRORLOG_NODE_CHILD_ROLE";
const DIR_ENV: &str = "MIRRORLOG_NODE_CHILD_DIR";
const ADDR_ENV: &str = "MIRRORLOG_NODE_CHILD_ADDR";
const TRANSPORT_ENV: &str = "MIRRORLOG_NODE_CHILD_TRANSPORT";
const TAG_ENV: &str = "MIRRORLOG_NODE_CHILD_TAG";
const COMMITTERS: usize = 4;

fn config(dir: &Path, t: TransportChoice) -> NodeConfig {
    let id = NodeIdentity {
        database_id: *b"proc-test-db-001",
        secret: Secret::new(b"process-test-shared-secret".to_vec()).unwrap(),
    };
    let mut c = NodeConfig::new(dir, id);
    c.log = log_opts();
    c.transport = t;
    c.logger = Logger::new(|_| {});
    c
}

fn parse_transport(s: &str) -> TransportChoice {
    s.parse().expect("transport")
}

fn transport_name(t: TransportChoice) -> &'static str {
    match t {
        TransportChoice::IoUring => "io_uring",
        TransportChoice::Blocking => "blocking",
        TransportChoice::Auto => "auto",
    }
}

fn record(tag: &str, thread: usize, i: u64) -> Vec<u8> {
    let mut r = format!("{tag}-t{thread}-c{i}-").into_bytes();
    r.extend((0..48u64).map(|k| (i.wrapping_mul(31).wrapping_add(k * 7) % 251) as u8));
    r
}

#[derive(Default)]
struct Nothing;

impl Applier for Nothing {
    fn apply(&mut self, _: u64, _: u64, records: &Records) -> Result<(), String> {
        // Touch every record, as a state machine would.
        let _ = records.iter().count();
        Ok(())
    }
}

/// The child: a mirror (runs until killed) or a principal committing at
/// remote-flush from several threads and printing every acknowledgement
/// as `ack TAG thread i lsn_start lsn_end exposed(0|1)`.
#[test]
#[ignore = "run by the process tests as a child process"]
fn child_node() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let addr: SocketAddr = std::env::var(ADDR_ENV)
        .expect("addr")
        .parse()
        .expect("addr");
    let t = parse_transport(&std::env::var(TRANSPORT_ENV).expect("transport"));
    let mut out = std::io::stdout();
    match role.as_str() {
        "mirror" => {
            let _m = Mirror::start(config(&dir, t), addr, Nothing, None).expect("mirror starts");
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        "principal" => {
            // Commits until killed, or until its standard input closes:
            // then it stops committing, waits until the mirror has applied
            // everything, prints `done`, and shuts down cleanly.
            let tag = std::env::var(TAG_ENV).expect("tag");
            let p = Arc::new(Principal::start(config(&dir, t), addr).expect("principal starts"));
            writeln!(out, "ready {}", p.epoch()).unwrap();
            out.flush().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
                    stop.store(true, Ordering::Release);
                });
            }
            let out = Arc::new(Mutex::new(out));
            let threads: Vec<_> = (0..COMMITTERS)
                .map(|th| {
                    let (p, out, tag, stop) = (p.clone(), out.clone(), tag.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut i = 0;
                        while !stop.load(Ordering::Acquire) {
                            let rec = record(&tag, th, i);
                            let c = p.commit_wait(&[&rec]).expect("commit");
                            let mut o = out.lock().unwrap();
                            writeln!(
                                o,
                                "ack {tag} {th} {i} {} {} {}",
                                c.lsn_start,
                                c.lsn_end,
                                u8::from(c.exposed)
                            )
                            .unwrap();
                            o.flush().unwrap();
                            i += 1;
                        }
                    })
                })
                .collect();
            for th in threads {
                th.join().unwrap();
            }
            let end = p.log().hardened_lsn();
            wait_until(
                "the mirror to apply everything",
                Duration::from_secs(30),
                || {
                    let s = p.status();
                    s.state == MirroringState::Synchronized && s.mirror.applied == end
                },
            );
            let mut o = out.lock().unwrap();
            writeln!(o, "done {end}").unwrap();
            o.flush().unwrap();
            drop(o);
            Arc::try_unwrap(p)
                .ok()
                .expect("committers joined")
                .shutdown();
        }
        other => panic!("unknown child role {other}"),
    }
}

struct ChildNode {
    child: Child,
    /// Lines of its standard output, read by a thread (so that no read
    /// here can hang the test); closed at its exit.
    lines: Option<mpsc::Receiver<String>>,
}

impl ChildNode {
    fn spawn(role: &str, dir: &Path, addr: SocketAddr, t: TransportChoice, tag: &str) -> ChildNode {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "child_node",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, role)
            .env(DIR_ENV, dir)
            .env(ADDR_ENV, addr.to_string())
            .env(TRANSPORT_ENV, transport_name(t))
            .env(TAG_ENV, tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = out;
            let mut line = String::new();
            loop {
                line.clear();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line.clone()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        // The test harness prints its own lines first (and `test
        // child_node ... ` with no newline before ours); wait for ours.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("child {role} never said ready: {e}"));
            if line.contains("ready") {
                break;
            }
        }
        ChildNode {
            child,
            lines: Some(rx),
        }
    }

    /// Closes its standard input and waits for a clean exit.
    fn finish(mut self) -> mpsc::Receiver<String> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "child did not finish within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "child exited with {status}");
        self.lines.take().unwrap()
    }

    fn kill(mut self) -> mpsc::Receiver<String> {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        self.lines.take().unwrap()
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every batch of a log directory: LSN → (frame bytes, records).
fn batches(dir: &Path) -> BTreeMap<u64, (Vec<u8>, Vec<Vec<u8>>)> {
    let (log, _) = Log::open(dir, log_opts()).unwrap();
    log.read_from(log.start_lsn())
        .unwrap()
        .map(|v| {
            let v = v.unwrap();
            let recs = v.records().unwrap().iter().map(|r| r.to_vec()).collect();
            (v.lsn(), (v.frame().to_vec(), recs))
        })
        .collect()
}

fn assert_holds(
    what: &str,
    log: &BTreeMap<u64, (Vec<u8>, Vec<Vec<u8>>)>,
    lsn_start: u64,
    rec: &[u8],
) {
    let Some((_, recs)) = log.get(&lsn_start) else {
        panic!("{what}: no batch at LSN {lsn_start} for an acknowledged commit");
    };
    assert!(
        recs.iter().any(|r| r == rec),
        "{what}: the batch at LSN {lsn_start} lacks an acknowledged record"
    );
}

fn frames_only(b: &BTreeMap<u64, (Vec<u8>, Vec<Vec<u8>>)>) -> Vec<&Vec<u8>> {
    b.values().map(|(f, _)| f).collect()
}

on_both_paths!(a_mirror_killed_under_load_keeps_every_acknowledged_commit_and_catches_up);
on_both_paths!(a_killed_principal_loses_no_acknowledged_commit_and_the_mirror_follows_its_restarts);

struct AckRec {
    lsn_start: u64,
    rec: Vec<u8>,
    exposed: bool,
}

fn a_mirror_killed_under_load_keeps_every_acknowledged_commit_and_catches_up(t: TransportChoice) {
    let name = transport_name(t);
    let (pd, md) = (
        tempdir(&format!("mk-p-{name}")),
        tempdir(&format!("mk-m-{name}")),
    );
    let p = Arc::new(Principal::start(config(&pd, t), "127.0.0.1:0".parse().unwrap()).unwrap());
    let addr = p.local_addr();
    let acks: Arc<Mutex<Vec<AckRec>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|th| {
            let (p, acks, stop) = (p.clone(), acks.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let rec = record("mk", th, i);
                    let c = p
                        .commit_at(&[&rec], Level::RemoteFlush)
                        .unwrap()
                        .wait()
                        .unwrap();
                    acks.lock().unwrap().push(AckRec {
                        lsn_start: c.lsn_start,
                        rec,
                        exposed: c.exposed,
                    });
                    i += 1;
                }
            })
        })
        .collect();
    let mut seed = 0x5eed_u64 ^ std::process::id() as u64;
    let mut rand_ms = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    for round in 0..3 {
        let m = ChildNode::spawn("mirror", &md, addr, t, "");
        wait_until("SYNCHRONIZED", Duration::from_secs(20), || {
            p.status().state == MirroringState::Synchronized
        });
        std::thread::sleep(Duration::from_millis(rand_ms(50, 400)));
        // Everything acknowledged (not exposed) so far is hardened on the
        // mirror; the kill comes after this snapshot.
        let acked: Vec<(u64, Vec<u8>)> = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| !a.exposed)
            .map(|a| (a.lsn_start, a.rec.clone()))
            .collect();
        drop(m.kill());
        let mirror_log = batches(&md);
        for (lsn, rec) in &acked {
            assert_holds(
                &format!("round {round}, mirror after SIGKILL"),
                &mirror_log,
                *lsn,
                rec,
            );
        }
        assert!(!acked.is_empty(), "round {round}: nothing was committed");
    }
    // Final: restart the mirror, stop the load, converge.
    let m = ChildNode::spawn("mirror", &md, addr, t, "");
    wait_until(
        "SYNCHRONIZED after the last restart",
        Duration::from_secs(20),
        || p.status().state == MirroringState::Synchronized,
    );
    stop.store(true, Ordering::Release);
    for c in committers {
        c.join().unwrap();
    }
    let end = p.log().hardened_lsn();
    wait_until(
        "the mirror to apply everything",
        Duration::from_secs(20),
        || {
            let s = p.status();
            s.mirror.applied == end && s.send_queue_bytes == 0
        },
    );
    drop(m.kill());
    let p = Arc::try_unwrap(p).ok().expect("committers joined");
    p.shutdown();
    let (pl, ml) = (batches(&pd), batches(&md));
    for a in acks.lock().unwrap().iter() {
        assert_holds("principal at the end", &pl, a.lsn_start, &a.rec);
        assert_holds("mirror at the end", &ml, a.lsn_start, &a.rec);
    }
    assert_eq!(
        frames_only(&pl),
        frames_only(&ml),
        "logs differ after quiescence"
    );
}

/// The acknowledgements a child printed before it exited. (A line cut by
/// the kill is not one the client saw; the reader only passes whole lines
/// on, and a partial last line has no newline.)
fn parse_acks(lines: mpsc::Receiver<String>) -> Vec<AckRec> {
    let mut v = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        if !line.ends_with('\n') {
            break;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 7 || f[0] != "ack" {
            continue;
        }
        let th: usize = f[2].parse().unwrap();
        let i: u64 = f[3].parse().unwrap();
        v.push(AckRec {
            lsn_start: f[4].parse().unwrap(),
            rec: record(f[1], th, i),
            exposed: f[6] == "1",
        });
    }
    v
}

fn a_killed_principal_loses_no_acknowledged_commit_and_the_mirror_follows_its_restarts(
    t: TransportChoice,
) {
    let name = transport_name(t);
    let (pd, md) = (
        tempdir(&format!("pk-p-{name}")),
        tempdir(&format!("pk-m-{name}")),
    );
    // A free port for every incarnation of the principal.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let m = Mirror::start(config(&md, t), addr, Nothing, None).unwrap();
    let mut seed = 0xfeed_u64 ^ std::process::id() as u64;
    let mut rand_ms = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let mut all = Vec::new();
    for round in 0..3u64 {
        let p = ChildNode::spawn("principal", &pd, addr, t, &format!("pk{round}"));
        std::thread::sleep(Duration::from_millis(rand_ms(300, 700)));
        let acks = parse_acks(p.kill());
        assert!(
            acks.iter().any(|a| !a.exposed),
            "round {round}: no commit reached the mirror"
        );
        // The killed principal's recovered log holds every acknowledged
        // commit. (The mirror's receiver still runs: it may hold more, a
        // tail the next incarnation will have it cut.)
        let principal_log = batches(&pd);
        for a in &acks {
            assert_holds(
                &format!("round {round}, principal after SIGKILL"),
                &principal_log,
                a.lsn_start,
                &a.rec,
            );
        }
        all.extend(acks);
    }
    // A last incarnation stops cleanly once the mirror has everything.
    let p = ChildNode::spawn("principal", &pd, addr, t, "pk-last");
    std::thread::sleep(Duration::from_millis(200));
    all.extend(parse_acks(p.finish()));
    assert_eq!(
        m.log().last_epoch(),
        4,
        "the mirror took every incarnation's epoch"
    );
    drop(m);
    let (pl, ml) = (batches(&pd), batches(&md));
    for a in &all {
        assert_holds("principal at the end", &pl, a.lsn_start, &a.rec);
        assert_holds("mirror at the end", &ml, a.lsn_start, &a.rec);
    }
    assert_eq!(
        frames_only(&pl),
        frames_only(&ml),
        "logs differ after quiescence"
    );
    assert_eq!(
        mirrorlog_engine::replication::history::EpochHistory::load(&md)
            .unwrap()
            .entries(),
        mirrorlog_engine::replication::history::EpochHistory::load(&pd)
            .unwrap()
            .entries(),
        "epoch histories differ"
    );
}
