//! The applier: order, the limit, errors, the redo queue, hand-back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorlog_engine::apply::{Applier, ApplierThread, ApplyError, ApplyOptions};
use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, Records, RecordsBuf};

fn log_with(n: u32) -> (Arc<Log<SimStorage>>, Vec<(u64, u64)>) {
    let (log, _) = Log::open_with(
        SimStorage::new(),
        LogOptions {
            segment_bytes: 8192,
            compression: Compression::Off,
        },
    )
    .unwrap();
    let mut pos = Vec::new();
    for i in 0..n {
        let mut r = RecordsBuf::new();
        r.push(format!("set k{i} {}", "v".repeat((i % 50) as usize * 20)).as_bytes());
        r.push(&i.to_le_bytes());
        let p = log.append(1, &r).unwrap();
        pos.push((p.lsn_start, p.lsn_end));
    }
    log.sync().unwrap();
    (Arc::new(log), pos)
}

/// Applied batches: (start, end, records).
type Seen = Arc<Mutex<Vec<(u64, u64, Vec<Vec<u8>>)>>>;

/// Records every applied batch; can be told to fail at one.
#[derive(Default)]
struct Recorder {
    seen: Seen,
    fail_at: Option<u64>,
}

impl Applier for Recorder {
    fn apply(&mut self, lsn_start: u64, lsn_end: u64, records: &Records) -> Result<(), String> {
        if self.fail_at == Some(lsn_start) {
            return Err(format!("refusing batch at {lsn_start}"));
        }
        let recs = records.iter().map(|r| r.to_vec()).collect();
        self.seen.lock().unwrap().push((lsn_start, lsn_end, recs));
        Ok(())
    }
}

#[test]
fn applies_in_lsn_order_and_never_beyond_the_limit() {
    let (log, pos) = log_with(200);
    assert!(
        pos.last().unwrap().1 > 3 * 8128,
        "batches span segments (padding crossed)"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder {
        seen: seen.clone(),
        fail_at: None,
    };
    let a = ApplierThread::start(log.clone(), rec, 0, ApplyOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.applied_lsn(), 0, "nothing before a limit is set");
    // A limit inside batch 50 allows batches 0..50 only.
    let limit = pos[50].0 + 8;
    a.set_limit(limit);
    assert!(a.wait_applied(pos[49].1, Duration::from_secs(5)).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        a.applied_lsn(),
        pos[49].1,
        "a batch ending past the limit waits"
    );
    assert_eq!(a.redo_queue().bytes, limit - pos[49].1);
    a.set_limit(pos[10].1); // never moves back
    assert_eq!(a.limit(), limit);
    a.set_limit(u64::MAX);
    let end = pos.last().unwrap().1;
    assert!(a.wait_applied(end, Duration::from_secs(5)).unwrap());
    assert_eq!(a.redo_queue().bytes, 0);
    let rec = a.shutdown();
    let seen = rec.seen.lock().unwrap();
    let got: Vec<(u64, u64)> = seen.iter().map(|(s, e, _)| (*s, *e)).collect();
    assert_eq!(got, pos, "every batch once, in order");
    assert_eq!(seen[7].2[1], 7u32.to_le_bytes());
}

#[test]
fn new_batches_are_applied_as_the_log_and_limit_grow() {
    let (log, _) = log_with(5);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = ApplierThread::start(
        log.clone(),
        Recorder {
            seen: seen.clone(),
            fail_at: None,
        },
        0,
        ApplyOptions { core: Some(0) },
    )
    .unwrap();
    a.set_limit(u64::MAX); // a limit ahead of the log: applies as batches land
    for i in 0..20u32 {
        let mut r = RecordsBuf::new();
        r.push(&i.to_le_bytes());
        let p = log.append(1, &r).unwrap();
        assert!(a.wait_applied(p.lsn_end, Duration::from_secs(5)).unwrap());
    }
    assert_eq!(seen.lock().unwrap().len(), 25);
}

#[test]
fn an_apply_error_stops_the_applier_and_is_reported() {
    let (log, pos) = log_with(30);
    let a = ApplierThread::start(
        log,
        Recorder {
            seen: Default::default(),
            fail_at: Some(pos[12].0),
        },
        0,
        ApplyOptions::default(),
    )
    .unwrap();
    a.set_limit(u64::MAX);
    let err = a
        .wait_applied(pos[29].1, Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::Stopped {
            applied_lsn: pos[11].1,
            reason: format!("refusing batch at {}", pos[12].0)
        }
    );
    assert_eq!(a.applied_lsn(), pos[11].1);
    assert!(a.failure().unwrap().contains("refusing"));
}

#[test]
fn starting_from_a_checkpoint_lsn_skips_what_the_state_already_has() {
    let (log, pos) = log_with(10);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = ApplierThread::start(
        log,
        Recorder {
            seen: seen.clone(),
            fail_at: None,
        },
        pos[4].0,
        ApplyOptions::default(),
    )
    .unwrap();
    a.set_limit(u64::MAX);
    assert!(a.wait_applied(pos[9].1, Duration::from_secs(5)).unwrap());
    assert_eq!(seen.lock().unwrap()[0].0, pos[4].0);
    assert_eq!(seen.lock().unwrap().len(), 6);
    let err = ApplierThread::start(
        log_with(1).0,
        Recorder::default(),
        0,
        ApplyOptions { core: Some(4096) },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("core 4096 does not exist"),
        "{err}"
    );
}
