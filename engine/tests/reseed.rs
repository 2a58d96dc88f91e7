//! Reseed: a mirror whose log the principal has deleted gets a snapshot
//! of the state at an LSN the principal still holds, over the partner
//! connection; it restores its state machine from it, restarts its log
//! there, adopts the principal's epoch history, and catches up. The state
//! ends equal and the logs byte-identical from the snapshot on.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::log::{Log, LogOptions, Records};
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, SnapshotSource};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::history::EpochHistory;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;

use common::nodes::{log_opts, tempdir, wait_until};

type Lines = Arc<Mutex<Vec<String>>>;
/// The snapshot the principal offers: its LSN and bytes.
type Snap = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

fn config(dir: &Path, lines: &Lines) -> NodeConfig {
    let mut c = NodeConfig::new(
        dir,
        NodeIdentity {
            database_id: *b"reseed-test-db-1",
            secret: Secret::new(b"reseed-test-shared-secret".to_vec()).unwrap(),
        },
    );
    c.log = log_opts();
    c.transport = TransportChoice::Blocking;
    let lines = lines.clone();
    c.logger = Logger::new(move |s| lines.lock().unwrap().push(s.to_string()));
    c
}

/// The state machine: every record applied, in order.
#[derive(Clone, Default)]
struct Recs(Arc<Mutex<Vec<Vec<u8>>>>);

fn encode(recs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    for r in recs {
        b.extend_from_slice(&(r.len() as u32).to_le_bytes());
        b.extend_from_slice(r);
    }
    b
}

fn decode(mut b: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err("truncated".into());
        }
        let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        if b.len() < 4 + n {
            return Err("truncated record".into());
        }
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    Ok(out)
}

impl Applier for Recs {
    fn apply(&mut self, _s: u64, _e: u64, records: &Records) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn restore(&mut self, _lsn: u64, snapshot: &[u8]) -> Result<(), String> {
        *self.0.lock().unwrap() = decode(snapshot)?;
        Ok(())
    }
}

/// `n` bytes zstd cannot shrink, different for each `seed`.
fn noise(seed: u32, n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every record of the log in `[from, to)`.
fn records(log: &Log, from: u64, to: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in log.read_from(from).unwrap() {
        let v = v.unwrap();
        if v.end_lsn() > to {
            break;
        }
        out.extend(v.records().unwrap().iter().map(|r| r.to_vec()));
    }
    out
}

fn frames_from(dir: &Path, lsn: u64) -> Vec<(u64, Vec<u8>)> {
    let (log, _) = Log::open(dir, LogOptions::default()).unwrap();
    log.read_from(log.start_lsn().max(lsn))
        .unwrap()
        .map(|v| {
            let v = v.unwrap();
            (v.lsn(), v.frame().to_vec())
        })
        .collect()
}

#[test]
fn a_mirror_behind_deleted_log_is_reseeded_and_converges() {
    let (pd, md) = (tempdir("reseed", "p"), tempdir("reseed", "m"));
    let lines: Lines = Arc::default();
    // The principal's snapshot: set once the test has taken one.
    let snap: Snap = Arc::default();
    let mut pc = config(&pd, &lines);
    let s = snap.clone();
    let source: SnapshotSource = Arc::new(move || Ok(s.lock().unwrap().clone()));
    pc.snapshots = Some(source);
    let a = Principal::start(pc, "127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    let b = Mirror::start(config(&md, &lines), a.local_addr(), Recs::default(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        a.status().state == MirroringState::Synchronized
    });
    for i in 0..100u32 {
        a.commit_wait(&[format!("early {i}").as_bytes()]).unwrap();
    }
    // The mirror goes away; the principal writes several segments' worth.
    drop(b);
    for i in 0..600u32 {
        a.commit_wait(&[&noise(i, 4000)]).unwrap();
    }
    // A snapshot of the state at S, then the log below S is deleted.
    let s_lsn = a.log().written_lsn();
    let state_at_s = records(a.log(), a.log().start_lsn(), s_lsn);
    *snap.lock().unwrap() = Some((s_lsn, encode(&state_at_s)));
    let start = a.log().delete_below(s_lsn).unwrap();
    assert!(start > 0, "segments were deleted");
    // More than a segment after the snapshot: the principal rolls over
    // (padding included) where the reseeded mirror must roll over too
    // (regression: its restarted log used a whole segment from S and
    // refused the first batch after the principal's padding).
    for i in 0..50u32 {
        a.commit_wait(&[format!("after the snapshot {i}").as_bytes()])
            .unwrap();
    }
    for i in 1000..1100u32 {
        a.commit_wait(&[&noise(i, 4000)]).unwrap();
    }
    // The mirror returns: its log ends far below the principal's start.
    let state = Recs::default();
    let b = Mirror::start(config(&md, &lines), a.local_addr(), state.clone(), None).unwrap();
    wait_until("reseeded and caught up", Duration::from_secs(30), || {
        b.applier().applied_lsn() == a.log().written_lsn() && b.log().start_lsn() == s_lsn
    });
    let lines_now = lines.lock().unwrap().clone();
    assert!(
        lines_now
            .iter()
            .any(|l| l.contains("reseeding the mirror from the snapshot")),
        "{lines_now:#?}"
    );
    assert!(lines_now
        .iter()
        .any(|l| l.contains("reseeded: state restored at LSN")));
    // Equal state: everything the principal ever committed, in order.
    let mut expected = state_at_s.clone();
    expected.extend(records(a.log(), s_lsn, a.log().written_lsn()));
    assert_eq!(state.0.lock().unwrap().len(), expected.len());
    assert!(*state.0.lock().unwrap() == expected, "the states differ");
    // New commits are acknowledged with the reseeded mirror attached.
    wait_until("SYNCHRONIZED again", Duration::from_secs(10), || {
        a.status().state == MirroringState::Synchronized
    });
    assert!(!a.commit_wait(&[b"with the mirror"]).unwrap().exposed);
    // A restart of the reseeded mirror recovers its restarted log and
    // catches up without another reseed.
    drop(b);
    a.commit_wait(&[b"while it restarts"]).unwrap();
    let restored = Recs(Arc::new(Mutex::new(expected.clone())));
    restored.0.lock().unwrap().push(b"with the mirror".to_vec());
    let applied_to = {
        let (log, _) = Log::open(&md, LogOptions::default()).unwrap();
        assert_eq!(
            log.start_lsn(),
            s_lsn,
            "the reseeded log starts at the snapshot"
        );
        log.written_lsn()
    };
    let b = Mirror::start(
        config(&md, &lines),
        a.local_addr(),
        restored.clone(),
        Some(applied_to),
    )
    .unwrap();
    wait_until(
        "caught up after the restart",
        Duration::from_secs(10),
        || b.applier().applied_lsn() == a.log().written_lsn(),
    );
    let reseeds = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("reseeding the mirror from the snapshot"))
        .count();
    assert_eq!(reseeds, 1, "a second reseed was not needed");
    drop(b);
    let end = a.log().written_lsn();
    drop(a);
    assert_eq!(
        frames_from(&pd, s_lsn),
        frames_from(&md, s_lsn),
        "logs differ from the snapshot on"
    );
    let (_, last) = frames_from(&md, s_lsn).last().cloned().unwrap();
    assert!(!last.is_empty() && end > s_lsn);
    assert_eq!(
        EpochHistory::load(&md).unwrap().entries(),
        EpochHistory::load(&pd).unwrap().entries(),
        "the mirror adopted the principal's history"
    );
}

#[test]
fn without_a_snapshot_the_mirror_is_refused_with_the_reason() {
    let (pd, md) = (tempdir("reseed", "none-p"), tempdir("reseed", "none-m"));
    let lines: Lines = Arc::default();
    let a = Principal::start(config(&pd, &lines), "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = Mirror::start(config(&md, &lines), a.local_addr(), Recs::default(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        a.status().state == MirroringState::Synchronized
    });
    drop(b);
    for i in 0..300 {
        a.commit_wait(&[&noise(i, 4000)]).unwrap();
    }
    a.log().delete_below(a.log().written_lsn()).unwrap();
    let b = Mirror::start(config(&md, &lines), a.local_addr(), Recs::default(), None).unwrap();
    wait_until("the refusal", Duration::from_secs(10), || {
        b.status()
            .last_error
            .is_some_and(|e| e.contains("no snapshot source"))
    });
    assert_eq!(b.log().start_lsn(), 0, "the mirror's log is untouched");
}

#[test]
fn a_mirror_whose_reseed_was_interrupted_empties_its_log_at_start() {
    let d = tempdir("reseed", "interrupted");
    let lines: Lines = Arc::default();
    // A log that ends early (the mirror's old log).
    let p = Principal::start(config(&d, &lines), "127.0.0.1:0".parse().unwrap()).unwrap();
    for i in 0..10u32 {
        p.commit_at(&[&noise(i, 100)], mirrorlog_engine::commit::Level::Local)
            .unwrap()
            .wait()
            .unwrap();
    }
    let end = p.log().written_lsn();
    drop(p);
    // Its state machine was restored from a snapshot far beyond that, and
    // the crash came before the log restarted there.
    let s_lsn = end + 1_000_000;
    let m = Mirror::start(
        config(&d, &lines),
        "127.0.0.1:9".parse().unwrap(),
        Recs::default(),
        Some(s_lsn),
    )
    .unwrap();
    // The old log is of no use: emptied, to be fetched again from the
    // principal (the state machine resumes at its own LSN).
    assert_eq!(m.log().start_lsn(), 0);
    assert_eq!(m.log().written_lsn(), 0);
    assert_eq!(m.applier().applied_lsn(), s_lsn);
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("a reseed was interrupted")));
    drop(m);
    let (log, _) = Log::open(&d, LogOptions::default()).unwrap();
    assert_eq!(
        log.written_lsn(),
        0,
        "the emptied log stays empty across a reopen"
    );
}
