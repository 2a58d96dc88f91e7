//! A full disk degrades, never blinds: an append that fails for want of
//! space publishes nothing, leaves the log unpoisoned and usable, and group
//! commit fails the commits that may depend on the failed one until its
//! owner resumes it. A failed fsync still poisons (fsyncgate).

use std::sync::Arc;

use mirrorlog_engine::commit::{CommitError, CommitOptions, GroupCommit};
use mirrorlog_engine::log::sim::{CrashMode, SimStorage, ENOSPC};
use mirrorlog_engine::log::{Compression, Log, LogOptions, RecordsBuf};

const SEG: usize = 8192;

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: SEG,
        compression: Compression::Off,
    }
}

fn batch(tag: u8, bytes: usize) -> RecordsBuf {
    let mut r = RecordsBuf::new();
    r.push(&vec![tag; bytes]);
    r
}

/// The payload bytes of every batch in the log, in order.
fn contents(log: &Log<SimStorage>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for view in log.read_from(log.start_lsn()).expect("read") {
        let view = view.expect("batch");
        for r in view.records().expect("records").iter() {
            out.push(r.to_vec());
        }
    }
    out
}

#[test]
fn log_disk_full_at_segment_creation_fails_the_append_and_a_retry_after_space_returns_succeeds() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    // Fill the first segment: 3 batches of ~2 KiB fit in 8 KiB, a fourth does not.
    let mut acked = Vec::new();
    for i in 0..3u8 {
        log.append(1, &batch(i, 2000)).unwrap();
        acked.push(vec![i; 2000]);
    }
    log.sync().unwrap();
    let written = log.written_lsn();
    sim.fail_creates_after(0, ENOSPC);
    let err = log.append(1, &batch(9, 2000)).unwrap_err();
    assert!(err.is_disk_full(), "want a disk-full error, got: {err}");
    assert!(
        err.to_string().contains("No space left on device"),
        "the error names the cause: {err}"
    );
    assert_eq!(log.poisoned(), None, "ENOSPC at creation must not poison");
    assert_eq!(log.written_lsn(), written, "nothing was published");
    assert_eq!(log.sync().unwrap(), written, "the log still syncs");
    assert_eq!(contents(&log), acked, "reads still see every batch");
    // Still full: a second try fails the same way, and changes nothing.
    assert!(log.append(1, &batch(9, 2000)).unwrap_err().is_disk_full());
    sim.heal();
    log.append(1, &batch(3, 2000)).unwrap();
    acked.push(vec![3; 2000]);
    log.sync().unwrap();
    assert_eq!(contents(&log), acked);
    // What is on disk recovers to exactly the appended batches.
    drop(log);
    let image = sim.crash_image(sim.ops(), CrashMode::SyncedOnly);
    let (reopened, _) = Log::open_with(image, opts()).unwrap();
    assert_eq!(contents(&reopened), acked);
}

#[test]
fn log_disk_full_in_a_write_zeroes_the_frame_and_a_shorter_batch_takes_its_place() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    log.append(1, &batch(1, 500)).unwrap();
    let written = log.written_lsn();
    // The frame's first write fails (a copy-on-write file system needs
    // space even to overwrite); the zeroing after it succeeds.
    sim.fail_next_writes(1, ENOSPC);
    let err = log.append(1, &batch(2, 3000)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert_eq!(log.poisoned(), None);
    assert_eq!(log.written_lsn(), written);
    log.append(1, &batch(3, 100)).unwrap();
    log.sync().unwrap();
    drop(log);
    for mode in [CrashMode::Everything, CrashMode::SyncedOnly] {
        let image = sim.crash_image(sim.ops(), mode);
        let (reopened, _) = Log::open_with(image, opts()).unwrap();
        assert_eq!(
            contents(&reopened),
            vec![vec![1; 500], vec![3; 100]],
            "{mode:?}"
        );
    }
}

#[test]
fn log_disk_full_in_a_write_that_cannot_be_undone_poisons() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    log.append(1, &batch(1, 500)).unwrap();
    // The write and the zeroing both fail: the bytes past the end are
    // unknown, nothing may be appended after them.
    sim.fail_next_writes(2, ENOSPC);
    assert!(log.append(1, &batch(2, 3000)).is_err());
    assert!(log.poisoned().is_some());
    assert!(log.append(1, &batch(3, 100)).is_err());
}

#[test]
fn log_failed_sync_still_poisons_for_good() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    log.append(1, &batch(1, 500)).unwrap();
    sim.fail_syncs_after(0);
    assert!(log.sync().is_err());
    sim.heal();
    assert!(log.poisoned().is_some(), "fsyncgate: never retried");
    assert!(log.append(1, &batch(2, 100)).is_err());
}

#[test]
fn group_commit_disk_full_fails_later_commits_until_resume_then_writes_resume() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    // Full before the preparer can make a spare: the first rollover must
    // create the next segment itself, and fails.
    sim.fail_creates_after(0, ENOSPC);
    let gc = GroupCommit::start(Arc::new(log), CommitOptions::default()).unwrap();
    let mut acked = Vec::new();
    for i in 0..3u8 {
        gc.commit(&[&vec![i; 2000]]).unwrap().wait().unwrap();
        acked.push(vec![i; 2000]);
    }
    let hardened = gc.hardened_batch();
    let failed = gc.commit(&[&[9u8; 2000]]).unwrap();
    let failed_batch = failed.batch();
    match failed.wait() {
        Err(CommitError::DiskFull(why)) => {
            assert!(why.contains("No space left on device"), "{why}")
        }
        other => panic!("want DiskFull, got {other:?}"),
    }
    assert!(failed_batch > hardened);
    assert_eq!(
        gc.hardened_batch(),
        hardened,
        "the failed batch is not durable"
    );
    assert!(gc.halted());
    assert!(matches!(gc.append_error(), Some(CommitError::DiskFull(_))));
    // A commit made after the failure may carry effects computed from the
    // failed one: it fails unwritten, even though space is back.
    sim.heal();
    let dependent = gc.commit(&[&[8u8; 100]]).unwrap();
    assert!(dependent.batch() > hardened);
    match dependent.wait() {
        Err(CommitError::Halted(why)) => assert!(why.contains("disk is full"), "{why}"),
        other => panic!("want Halted, got {other:?}"),
    }
    assert_eq!(gc.log().poisoned(), None);
    // The owner took back the failed commits' effects: it resumes, and the
    // next commit retries the disk.
    gc.resume();
    assert!(!gc.halted());
    gc.commit(&[&[4u8; 2000]]).unwrap().wait().unwrap();
    acked.push(vec![4; 2000]);
    assert_eq!(
        gc.append_error(),
        None,
        "a successful append clears the error"
    );
    let log = gc.log().clone();
    drop(gc);
    let mut got = Vec::new();
    for view in log.read_from(log.start_lsn()).unwrap() {
        for r in view.unwrap().records().unwrap().iter() {
            got.push(r.to_vec());
        }
    }
    assert_eq!(got, acked, "the log holds exactly the acknowledged commits");
}

#[test]
fn group_commit_failed_sync_poisons_without_halting_and_names_the_last_durable_batch() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), CommitOptions::default()).unwrap();
    gc.commit(&[b"durable"]).unwrap().wait().unwrap();
    let hardened = gc.hardened_batch();
    sim.fail_syncs_after(0);
    let t = gc.commit(&[b"never acknowledged"]).unwrap();
    assert!(t.batch() > hardened);
    assert!(matches!(t.wait(), Err(CommitError::Poisoned(_))));
    // fsyncgate: no resume, no retry. The owner learns what to take back
    // (batches newer than this) from the same watermark.
    assert_eq!(gc.hardened_batch(), hardened);
    assert!(
        !gc.halted(),
        "a poisoned log is not halted: it refuses outright"
    );
    sim.heal();
    gc.resume();
    assert!(matches!(
        gc.commit(&[b"after"]),
        Err(CommitError::Poisoned(_))
    ));
}
