//! End to end, in process, over loopback TCP: a principal with group commit
//! and a mirror with an applier, running the real sessions over the
//! blocking transport. Commits at remote-flush are hardened on the mirror
//! when acknowledged, remote-apply ones are applied there, and the logs end
//! byte-identical.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mirrorlog_engine::apply::{Applier, ApplierThread, ApplyOptions};
use mirrorlog_engine::commit::{CommitOptions, GroupCommit, Level};
use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, Records};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::SessionConfig;
use mirrorlog_engine::transport::blocking::BlockingConn;
use mirrorlog_engine::transport::runner::{run_mirror, run_principal, NodeIdentity, SessionStatus};

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: 64 * 1024,
        compression: Compression::Zstd(1),
    }
}

#[derive(Clone, Default)]
struct Kv {
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Applier for Kv {
    fn apply(&mut self, _start: u64, _end: u64, records: &Records) -> Result<(), String> {
        let mut a = self.applied.lock().unwrap();
        for r in records.iter() {
            a.push(r.to_vec());
        }
        Ok(())
    }
}

fn frames(log: &Log<SimStorage>) -> Vec<Vec<u8>> {
    log.read_from(log.start_lsn())
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect()
}

#[test]
fn commits_at_remote_levels_are_on_the_mirror_when_acknowledged() {
    let id = NodeIdentity {
        database_id: *b"e2e-database-001",
        secret: Secret::new(b"e2e-shared-secret".to_vec()).unwrap(),
    };
    let cfg = SessionConfig::default();
    let (p_log, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let gc = Arc::new(GroupCommit::start(Arc::new(p_log), CommitOptions::default()).unwrap());
    let (m_log, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let m_log = Arc::new(m_log);
    let kv = Kv::default();
    let applier = Arc::new(
        ApplierThread::start(m_log.clone(), kv.clone(), 0, ApplyOptions::default()).unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let principal = {
        let (gc, id, stop) = (gc.clone(), id.clone(), stop.clone());
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut conn = BlockingConn::new(stream).unwrap();
            let status = SessionStatus::default();
            run_principal(&mut conn, &gc, &[(1, 0)], &id, cfg, [1; 32], &stop, &status)
        })
    };
    let mirror = {
        let (m_log, applier, id, stop) = (m_log.clone(), applier.clone(), id.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn = BlockingConn::new(TcpStream::connect(addr).unwrap()).unwrap();
            let status = SessionStatus::default();
            run_mirror(
                &mut conn, &m_log, &applier, None, &id, cfg, [2; 32], &stop, &status,
            )
        })
    };

    // Until the session is up, remote levels are refused; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gc.progress().remote_attached() {
        assert!(
            std::time::Instant::now() < deadline,
            "session never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for i in 0..100u32 {
        let rec = format!("set key{i} value{i}");
        let c = gc
            .commit_at(&[rec.as_bytes()], Level::RemoteFlush)
            .unwrap()
            .wait()
            .unwrap();
        assert!(
            m_log.hardened_lsn() >= c.lsn_end,
            "commit {i} acknowledged at remote-flush before the mirror hardened it"
        );
    }
    let c = gc
        .commit_at(&[b"read-your-write"], Level::RemoteApply)
        .unwrap()
        .wait()
        .unwrap();
    assert!(applier.applied_lsn() >= c.lsn_end);
    assert!(kv
        .applied
        .lock()
        .unwrap()
        .iter()
        .any(|r| r == b"read-your-write"));
    // A few local-level commits, then let the mirror catch up fully.
    for i in 0..20u32 {
        gc.commit(&[&i.to_le_bytes()]).unwrap().wait().unwrap();
    }
    let end = gc.log().hardened_lsn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m_log.hardened_lsn() < end || applier.applied_lsn() < end {
        assert!(
            std::time::Instant::now() < deadline,
            "mirror never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let why_p = principal.join().unwrap();
    let why_m = mirror.join().unwrap();
    assert!(
        why_p == "stopped" || why_m == "stopped",
        "{why_p} / {why_m}"
    );
    let p_frames: Vec<Vec<u8>> = gc
        .log()
        .read_from(0)
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect();
    assert_eq!(frames(&m_log), p_frames, "logs differ");
    assert_eq!(kv.applied.lock().unwrap().len(), 121);
}
