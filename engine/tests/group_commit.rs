//! Group commit: concurrency, commit levels, failures, async waiting.

mod scratch;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use mirrorlog_engine::commit::{CommitError, CommitOptions, GroupCommit, Level};
use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, Storage};

fn log_opts() -> LogOptions {
    LogOptions {
        segment_bytes: 64 * 1024,
        compression: Compression::Zstd(1),
    }
}

fn commit_opts() -> CommitOptions {
    CommitOptions {
        batch_bytes_max: Some(32 * 1024),
        ..CommitOptions::default()
    }
}

fn fs_log(tag: &str) -> (Arc<Log>, std::path::PathBuf) {
    let dir = scratch::path(&format!("gc-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (log, _) = Log::open(&dir, log_opts()).unwrap();
    (Arc::new(log), dir)
}

/// Minimal executor: polls a future on this thread, parking between wakes.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

fn all_records<S: Storage>(log: &Log<S>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in log.read_from(log.start_lsn()).unwrap() {
        for r in v.unwrap().records().unwrap().iter() {
            out.push(r.to_vec());
        }
    }
    out
}

#[test]
fn concurrent_committers_are_grouped_and_every_ack_is_in_the_log() {
    let (log, dir) = fs_log("concurrent");
    let gc = Arc::new(GroupCommit::start(log.clone(), commit_opts()).unwrap());
    let threads = 8;
    let per_thread = 300;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let gc = gc.clone();
            thread::spawn(move || {
                let mut acks = Vec::new();
                for i in 0..per_thread {
                    let rec = format!("t{t}-c{i}");
                    let c = gc.commit(&[rec.as_bytes()]).unwrap().wait().unwrap();
                    assert_eq!(c.level, Level::Local);
                    assert!(c.lsn_end > c.lsn_start);
                    acks.push((rec, c));
                }
                acks
            })
        })
        .collect();
    let acks: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stats = gc.stats();
    assert_eq!(stats.commits, (threads * per_thread) as u64);
    assert!(
        stats.batches < stats.commits,
        "no grouping happened: {stats:?}"
    );
    assert_eq!(gc.latency_ns(Level::Local).len(), stats.commits);

    // Every acknowledged commit is hardened, at the place its ticket named.
    assert!(log.hardened_lsn() >= acks.iter().map(|(_, c)| c.lsn_end).max().unwrap());
    let mut batches = HashMap::new();
    for v in log.read_from(0).unwrap() {
        let v = v.unwrap();
        let recs: Vec<Vec<u8>> = v.records().unwrap().iter().map(|r| r.to_vec()).collect();
        batches.insert(v.lsn(), (v.end_lsn(), recs));
    }
    for (rec, c) in &acks {
        let (end, recs) = &batches[&c.lsn_start];
        assert_eq!(*end, c.lsn_end);
        assert_eq!(&recs[c.first_record as usize], rec.as_bytes());
    }
    // Per thread, commits appear in the log in the order they were made.
    let all = all_records(&log);
    for t in 0..threads {
        let mine: Vec<_> = all
            .iter()
            .filter(|r| r.starts_with(format!("t{t}-").as_bytes()))
            .cloned()
            .collect();
        let want: Vec<Vec<u8>> = (0..per_thread)
            .map(|i| format!("t{t}-c{i}").into_bytes())
            .collect();
        assert_eq!(mine, want);
    }
    drop(gc);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn multi_record_commit_lands_in_one_batch_in_order() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), commit_opts()).unwrap();
    let c = gc.commit(&[b"a", b"bb", b"ccc"]).unwrap().wait().unwrap();
    assert_eq!((c.first_record, c.records), (0, 3));
    let v = gc
        .log()
        .read_from(c.lsn_start)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let owned: Vec<Vec<u8>> = v.records().unwrap().iter().map(|r| r.to_vec()).collect();
    assert_eq!(owned, vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
}

#[test]
fn async_wait_completes_and_pipelined_tickets_resolve_in_lsn_order() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), commit_opts()).unwrap();
    let tickets: Vec<_> = (0..500u32)
        .map(|i| gc.commit(&[&i.to_le_bytes()]).unwrap())
        .collect();
    let mut last_end = 0;
    for t in tickets {
        let c = block_on(t).unwrap();
        assert!(c.lsn_end >= last_end);
        last_end = c.lsn_end;
    }
    assert_eq!(gc.stats().commits, 500);
}

#[test]
fn remote_levels_need_a_mirror_and_complete_only_when_the_mirror_layer_advances_them() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), commit_opts()).unwrap();
    assert_eq!(
        gc.commit_at(&[b"x"], Level::RemoteFlush).err().unwrap(),
        CommitError::LevelUnavailable(Level::RemoteFlush)
    );
    gc.progress().set_remote_attached(true);
    let ticket = gc.commit_at(&[b"x"], Level::RemoteFlush).unwrap();
    let local = gc.commit(&[b"y"]).unwrap().wait().unwrap();
    assert!(gc.log().hardened_lsn() >= local.lsn_end);
    assert!(
        ticket.try_result().is_none(),
        "hardened locally is not remote-flush"
    );
    let progress = gc.progress().clone();
    let end = local.lsn_end;
    let advancer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        progress.advance(Level::RemoteWrite, end);
        progress.advance(Level::RemoteFlush, end);
    });
    let c = ticket.wait().unwrap();
    assert_eq!(c.level, Level::RemoteFlush);
    advancer.join().unwrap();
    // Timeouts report the level and leave the commit alive.
    let t = gc.commit_at(&[b"z"], Level::RemoteApply).unwrap();
    let err = t.wait_timeout(Duration::from_millis(10)).unwrap_err();
    assert!(matches!(
        err,
        CommitError::Timeout {
            level: Level::RemoteApply,
            ..
        }
    ));
}

#[test]
fn failed_sync_fails_waiting_commits_and_refuses_new_ones_but_keeps_earlier_acks() {
    let storage = SimStorage::new();
    let (log, _) = Log::open_with(storage.clone(), log_opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), commit_opts()).unwrap();
    let early = gc.commit(&[b"early"]).unwrap();
    let early_ack = gc.commit(&[b"sync me"]).unwrap().wait().unwrap();
    storage.fail_syncs_after(0);
    let err = gc.commit(&[b"doomed"]).unwrap().wait().unwrap_err();
    assert!(matches!(err, CommitError::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("msync"), "{err}");
    assert!(matches!(
        gc.commit(&[b"later"]).err().unwrap(),
        CommitError::Poisoned(_)
    ));
    // A commit acknowledged before the failure is still acknowledged.
    let c = early.wait().unwrap();
    assert!(c.lsn_end <= early_ack.lsn_end);
}

#[test]
fn bad_commits_and_bad_options_get_clear_errors() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let log = Arc::new(log);
    let gc = GroupCommit::start(log.clone(), commit_opts()).unwrap();
    assert_eq!(gc.commit(&[]).err().unwrap(), CommitError::Empty);
    let big = vec![0u8; 40 * 1024];
    assert!(matches!(
        gc.commit(&[&big]).err().unwrap(),
        CommitError::TooLarge { .. }
    ));
    drop(gc);
    let err = GroupCommit::start(
        log.clone(),
        CommitOptions {
            batch_bytes_max: Some(1 << 20),
            ..commit_opts()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("batch_bytes_max"), "{err}");
    let err = GroupCommit::start(
        log,
        CommitOptions {
            appender_core: Some(4096),
            ..commit_opts()
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("appender_core 4096 does not exist"),
        "{err}"
    );
}

#[test]
fn shutdown_drains_queued_commits() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let mut gc = GroupCommit::start(Arc::new(log), commit_opts()).unwrap();
    let tickets: Vec<_> = (0..100u32)
        .map(|i| gc.commit(&[&i.to_le_bytes()]).unwrap())
        .collect();
    gc.shutdown();
    for t in tickets {
        t.wait().unwrap();
    }
    assert_eq!(gc.commit(&[b"x"]).err().unwrap(), CommitError::ShutDown);
    assert_eq!(all_records(gc.log()).len(), 100);
}

#[test]
fn appender_can_be_pinned() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let gc = GroupCommit::start(
        Arc::new(log),
        CommitOptions {
            appender_core: Some(0),
            ..commit_opts()
        },
    )
    .unwrap();
    gc.commit(&[b"pinned"]).unwrap().wait().unwrap();
}

#[test]
fn rollovers_use_segments_prepared_in_the_background() {
    let (log, dir) = fs_log("prepared");
    let gc = GroupCommit::start(log.clone(), commit_opts()).unwrap();
    let mut x = 7u64;
    let mut want = Vec::new();
    for _ in 0..1500 {
        let rec: Vec<u8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        gc.commit(&[&rec]).unwrap().wait().unwrap();
        want.push(rec);
    }
    let stats = gc.stats();
    // ~1.5 MB of incompressible records in 64 KiB segments: ~24 rollovers.
    assert!(stats.log_bytes > 20 * 64 * 1024, "{stats:?}");
    assert!(stats.segments_prepared >= 10, "{stats:?}");
    assert_eq!(stats.segment_prepare_errors, 0);
    assert_eq!(all_records(&log), want);
    drop(gc);
    drop(log);
    let (log, report) = Log::open(&dir, log_opts()).unwrap();
    assert_eq!(report.cut, None, "{report}");
    assert_eq!(all_records(&log), want);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncation_goes_through_group_commit_which_rewinds_the_levels() {
    let (log, _) = Log::open_with(SimStorage::new(), log_opts()).unwrap();
    let log = Arc::new(log);
    let mut gc = GroupCommit::start(log.clone(), commit_opts()).unwrap();
    // A second group commit on the same log is refused.
    let err = GroupCommit::start(log.clone(), commit_opts())
        .err()
        .unwrap();
    assert!(err.to_string().contains("already runs"), "{err}");
    let first = gc.commit(&[b"keep"]).unwrap().wait().unwrap();
    for i in 0..10u32 {
        gc.commit(&[&i.to_le_bytes()]).unwrap().wait().unwrap();
    }
    // Cutting the log behind the group commit's back is refused...
    assert!(matches!(
        log.truncate(first.lsn_end),
        Err(mirrorlog_engine::log::TruncateError::InUse)
    ));
    // ...through it, the appender pauses and every level moves back.
    gc.truncate(first.lsn_end).unwrap();
    assert_eq!(gc.progress().reached(Level::Local), first.lsn_end);
    let after = gc.commit(&[b"after the cut"]).unwrap().wait().unwrap();
    assert_eq!(after.lsn_start, first.lsn_end);
    assert_eq!(
        all_records(&log),
        vec![b"keep".to_vec(), b"after the cut".to_vec()]
    );
    // After shutdown the log is the caller's again.
    gc.shutdown();
    log.truncate(first.lsn_end).unwrap();
}
