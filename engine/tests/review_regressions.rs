//! Review regressions: durability, crash-safety and concurrency holes found by
//! reading engine/src/log and engine/src/commit, each proven (or checked)
//! with a test. Tests that interleave two log operations deterministically use
//! `Hooked`, a `Storage` wrapper around `SimStorage` that runs a closure
//! before each directory operation (the closure may call back into the log,
//! exactly as another thread could at that instant), or injects an error.

use std::io;

mod common;
use common::Hooked;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use mirrorlog_engine::commit::{CommitError, CommitOptions, GroupCommit, Level};
use mirrorlog_engine::log::segment::{
    decode_durable_hint, segment_name, SEGMENT_HEADER_BYTES, SEGMENT_SUFFIX,
};
use mirrorlog_engine::log::sim::{CrashMode, SimStorage};
use mirrorlog_engine::log::{Compression, Log, LogOptions, RecordsBuf, Storage};

const SEG: usize = 8192;
const CAP: u64 = (SEG - SEGMENT_HEADER_BYTES) as u64;

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: SEG,
        compression: Compression::Off,
    }
}

/// One record of `n` bytes of `fill`: a frame of align8(44 + n) bytes.
fn rec(n: usize, fill: u8) -> RecordsBuf {
    let mut r = RecordsBuf::new();
    r.push(&vec![fill; n]);
    r
}

fn lsns<S: Storage>(log: &Log<S>) -> Vec<u64> {
    log.read_from(log.start_lsn())
        .expect("read")
        .map(|v| v.expect("valid batch").lsn())
        .collect()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = common::scratch::path(&format!("review-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

// ---------------------------------------------------------------------------
// Hooked storage
// ---------------------------------------------------------------------------

type LogCell = Arc<OnceLock<Weak<Log<Hooked>>>>;

fn hooked_log(sim: &SimStorage) -> (Arc<Log<Hooked>>, Hooked, LogCell) {
    let storage = Hooked::new(sim.clone());
    let (log, _) = Log::open_with(storage.clone(), opts()).expect("open");
    let log = Arc::new(log);
    let cell: LogCell = Arc::new(OnceLock::new());
    cell.set(Arc::downgrade(&log)).ok().unwrap();
    (log, storage, cell)
}

/// Durable-LSN hints of every segment and spare file in `sim` (by name).
fn hints(sim: &SimStorage) -> Vec<(String, Option<u64>)> {
    let mut names = sim.list().unwrap();
    names.sort();
    names
        .into_iter()
        .filter(|n| n.contains(SEGMENT_SUFFIX) && !n.ends_with(".free"))
        .map(|n| {
            let bytes = sim.file_bytes(&n).unwrap();
            let h = decode_durable_hint(&bytes[..SEGMENT_HEADER_BYTES]);
            (n, h)
        })
        .collect()
}

/// Starts `f` on another thread from inside a storage hook, as a concurrent
/// caller would at that instant, and lets it run (or block on the log's
/// locks) for a moment before the hooked operation continues.
fn concurrently(f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    let h = std::thread::spawn(f);
    std::thread::sleep(Duration::from_millis(50));
    h
}

// ---------------------------------------------------------------------------
// Commit path
// ---------------------------------------------------------------------------

/// Truncation does not rewind the group commit's `local` watermark. After
/// `gc.log().truncate(..)` (a rejoining node cutting its divergent tail)
/// the next batches land at LSNs below the old watermark, so their tickets
/// complete as soon as the batch is *placed*, before it is synced. Here the
/// sync of that batch fails (log poisoned, batch never durable) and the
/// commit is still acknowledged.
#[test]
fn regression_commit_after_truncate_is_acked_before_it_is_durable() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let gc = GroupCommit::start(
        Arc::new(log),
        CommitOptions {
            spin: Duration::ZERO,
            ..CommitOptions::default()
        },
    )
    .unwrap();
    let first = gc.commit(&[&[1u8; 500]]).unwrap().wait().unwrap();
    for i in 0..4u8 {
        gc.commit(&[&[i; 500]]).unwrap().wait().unwrap();
    }
    let watermark = gc.progress().reached(Level::Local);
    gc.truncate(first.lsn_end).unwrap();
    assert_eq!(gc.log().hardened_lsn(), first.lsn_end);
    // The next sync fails: nothing after the cut ever becomes durable.
    sim.fail_syncs_after(0);
    let got = gc.commit(&[b"after the cut"]).unwrap().wait();
    assert!(
        got.is_err(),
        "commit acknowledged although its batch was never synced: {got:?}; \
         log hardened LSN {}, poisoned: {:?}, local watermark still {watermark}",
        gc.log().hardened_lsn(),
        gc.log().poisoned()
    );
}

/// Remote levels are cumulative in docs/design.md ("remote-write: + mirror
/// received it", "a synchronous commit costs max(local fsync, RTT + mirror
/// fsync)"), but a remote-level ticket only looks at its own watermark. A
/// remote-flush commit whose local sync failed (log poisoned, batch not
/// durable on the principal) is acknowledged as soon as the mirror reports.
#[test]
fn regression_remote_level_commit_acked_without_local_hardening() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let gc = GroupCommit::start(
        Arc::new(log),
        CommitOptions {
            spin: Duration::ZERO,
            ..CommitOptions::default()
        },
    )
    .unwrap();
    gc.commit(&[b"warm up"]).unwrap().wait().unwrap();
    gc.progress().set_remote_attached(true);
    let before = gc.log().written_lsn();
    sim.fail_syncs_after(0);
    let t = gc.commit_at(&[b"sync commit"], Level::RemoteFlush).unwrap();
    // The appender places the batch, then its msync fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gc.log().poisoned().is_none() {
        assert!(std::time::Instant::now() < deadline, "sync never failed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let end = gc.log().written_lsn();
    assert!(end > before);
    // The mirror layer reports it received and hardened the batch.
    gc.progress().advance(Level::RemoteWrite, end);
    gc.progress().advance(Level::RemoteFlush, end);
    let got = t.wait();
    assert!(
        got.is_err(),
        "remote-flush commit acknowledged though the principal never hardened it: {got:?}; \
         local watermark {}, log hardened {}, poisoned {:?}",
        gc.progress().reached(Level::Local),
        gc.log().hardened_lsn(),
        gc.log().poisoned()
    );
}

/// `GroupCommit::set_epoch` with a lower epoch (a stale epoch from the
/// control plane) panics in the caller instead of returning an error.
#[test]
fn regression_set_epoch_backwards_is_an_error_not_a_panic() {
    let (log, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let gc = GroupCommit::start(Arc::new(log), CommitOptions::default()).unwrap();
    gc.set_epoch(5).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| gc.set_epoch(3)));
    let r = r.expect("set_epoch(3) after set_epoch(5) panicked");
    assert!(
        matches!(
            r,
            Err(CommitError::EpochRegression {
                current: 5,
                requested: 3
            })
        ),
        "{r:?}"
    );
    assert_eq!(gc.epoch(), 5);
}

/// Invariant (passes): with many concurrent committers, every
/// acknowledgement at level `local` is below the log's hardened LSN at the
/// moment the committer sees it, and the acknowledged records are in the log.
#[test]
fn regression_every_local_ack_is_below_the_hardened_lsn() {
    let (log, _) = Log::open_with(
        SimStorage::new(),
        LogOptions {
            segment_bytes: 64 * 1024,
            compression: Compression::Zstd(1),
        },
    )
    .unwrap();
    let gc = Arc::new(GroupCommit::start(Arc::new(log), CommitOptions::default()).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let gc = gc.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for i in 0..150u32 {
                    let r = [t, (i >> 8) as u8, i as u8].repeat(1 + (i as usize % 50));
                    let c = gc.commit(&[&r]).unwrap().wait().unwrap();
                    let h = gc.log().hardened_lsn();
                    assert!(c.lsn_end <= h, "ack {c:?} above hardened {h}");
                    acks.push((c.lsn_start, r));
                }
                acks
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in threads {
        acks.extend(t.join().unwrap());
    }
    let log = gc.log();
    let mut in_log = std::collections::HashMap::<u64, Vec<Vec<u8>>>::new();
    for v in log.read_from(log.start_lsn()).unwrap() {
        let v = v.unwrap();
        in_log.insert(
            v.lsn(),
            v.records().unwrap().iter().map(|r| r.to_vec()).collect(),
        );
    }
    for (lsn, r) in acks {
        assert!(in_log[&lsn].contains(&r), "acked record missing at {lsn}");
    }
}

// ---------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------

/// A batch A fits at the end of segment 0; the next batch B does not fit
/// after A (and not even at A's start), so it starts segment 1. Neither was
/// synced, and writeback persisted B's pages but not A's: recovery took the
/// zeros at A's LSN for padding and kept B without A, a hole in the logical
/// log. Now a rollover makes the sealed segment's tail durable (and records
/// it in that segment's hint) before B is written: no crash image can hold
/// B without A, and if damage loses A anyway, recovery refuses to take the
/// space below the sealed segment's hint for padding.
#[test]
fn regression_recovery_keeps_a_later_batch_across_padding_after_a_lost_one() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let c = log.append(1, &rec(2960, 1)).unwrap();
    log.sync().unwrap();
    let a = log.append(1, &rec(100, 2)).unwrap();
    let b = log.append(1, &rec(6000, 3)).unwrap();
    assert_eq!(a.lsn_start, c.lsn_end);
    assert_eq!(b.lsn_start, CAP, "B starts segment 1");
    assert!(b.lsn_end - b.lsn_start > CAP - a.lsn_start);
    let point = sim.ops();
    let seg0 = segment_name(0);
    let seg1 = segment_name(CAP);
    let want1 = sim.file_bytes(&seg1).unwrap();
    let a_off = SEGMENT_HEADER_BYTES + a.lsn_start as usize;
    let a_len = (a.lsn_end - a.lsn_start) as usize;
    let b_range = SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + (b.lsn_end - b.lsn_start) as usize;
    for seed in 0..2000 {
        let image = sim.crash_image(point, CrashMode::RandomPages { seed });
        let (Some(i0), Some(i1)) = (image.file_bytes(&seg0), image.file_bytes(&seg1)) else {
            continue;
        };
        assert!(
            !(i0[a_off..a_off + a_len].iter().all(|&x| x == 0)
                && i1[b_range.clone()] == want1[b_range.clone()]),
            "seed {seed}: a crash image holds B without A"
        );
        let (log2, _) = Log::open_with(image, opts()).unwrap();
        let got = lsns(&log2);
        assert!(
            got.contains(&a.lsn_start),
            "seed {seed}: A was durable before B was written"
        );
    }
    // Damage that loses A after the fact: not padding, an error.
    let image = sim.crash_image(point, CrashMode::Everything);
    image.corrupt(&seg0, a_off, &vec![0u8; a_len]);
    let err = Log::open_with(image, opts())
        .err()
        .expect("a hole is refused");
    assert!(
        err.to_string().contains(&format!("LSN {}", a.lsn_start)),
        "{err}"
    );
}

/// Crash-image sweep (like crash_images.rs, but several unsynced batches
/// cross segment boundaries) checking what crash_images.rs does not: the
/// recovered batches are a *prefix* of the written sequence, with no hole.
#[test]
fn regression_crash_images_recover_a_prefix_of_the_written_batches() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let mut x = 0x9E37_79B9u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut written: Vec<u64> = Vec::new();
    let mut acked = 0usize; // written[..acked] were synced
    let mut points = Vec::new(); // (crash point, written so far, acked)
    for i in 0..90 {
        let size = [40, 300, 1500, 2900, 5000][(next() % 5) as usize];
        let pos = log.append(1, &rec(size, i as u8)).unwrap();
        written.push(pos.lsn_start);
        points.push((sim.ops(), written.len(), acked));
        if next() % 3 == 0 {
            log.sync().unwrap();
            acked = written.len();
        }
    }
    let mut failures = Vec::new();
    let mut images = 0;
    for (k, &(point, n, acked)) in points.iter().enumerate() {
        for s in 0..6u64 {
            let seed = (k as u64) << 8 | s;
            let image = sim.crash_image(point, CrashMode::RandomPages { seed });
            images += 1;
            let (log2, _) = match Log::open_with(image, opts()) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("point {point} seed {seed}: refused: {e}"));
                    continue;
                }
            };
            let got = lsns(&log2);
            if got.len() < acked || got[..] != written[..got.len().min(n)] || got.len() > n {
                failures.push(format!(
                    "point {point} seed {seed}: recovered {got:?}, written {:?} (acked {acked})",
                    &written[..n]
                ));
            }
        }
    }
    let refused = failures.iter().filter(|f| f.contains("refused")).count();
    assert!(
        failures.is_empty(),
        "{} of {images} images broke the prefix rule ({refused} refused to open); first: {}",
        failures.len(),
        failures[..failures.len().min(3)].join(" | ")
    );
}

/// Retention removed old segments front-first with one directory sync at
/// the end: if a crash persisted the retirement of segment 1 but not of
/// segment 0, the directory had a hole and recovery refused the log with a
/// gap error. Each removal is now durable before the next; a crash at any
/// operation inside `delete_below` recovers a contiguous log holding every
/// batch at or above the new start.
#[test]
fn regression_crash_in_delete_below_can_leave_a_gap_recovery_refuses() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    for i in 0..8 {
        log.append(1, &rec(2960, i)).unwrap();
    }
    log.sync().unwrap();
    assert!(log.written_lsn() > 3 * CAP, "four segments");
    let kept = lsns(&log)
        .into_iter()
        .filter(|&l| l >= 2 * CAP)
        .collect::<Vec<_>>();
    let before = sim.ops();
    let start = log.delete_below(2 * CAP).unwrap();
    assert_eq!(start, 2 * CAP);
    let after = sim.ops();
    assert!(
        after > before + 2,
        "two retirements and their directory syncs"
    );
    for point in before..=after {
        for mode in [
            CrashMode::SyncedOnly,
            CrashMode::Everything,
            CrashMode::RandomPages { seed: point as u64 },
        ] {
            let r = Log::open_with(sim.crash_image(point, mode), opts());
            let (log2, _) = r.unwrap_or_else(|e| {
                panic!("recovery refused a log a crash inside delete_below can leave (op {point}, {mode:?}): {e}")
            });
            let got = lsns(&log2);
            assert!(
                got.ends_with(&kept),
                "op {point} {mode:?}: lost batches at or above the new start: {got:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrency between log maintenance operations
// ---------------------------------------------------------------------------

/// `prepare_next_segment` (the group commit's background thread) running
/// while `truncate` is rewriting the last segment: truncate retired the old
/// spare up front and releases the spares lock, so a spare prepared in the
/// window gets the *pre-cut* hardened LSN as its durable-LSN hint, and
/// keeps it (its base is still the next segment's). The next rollover uses
/// it; a crash before the next sync leaves a hint that claims bytes after
/// the cut were durable, and recovery refuses the log as mid-log corruption.
#[test]
fn regression_spare_prepared_during_truncate_claims_the_cut_tail_durable() {
    let sim = SimStorage::new();
    let (log, storage, cell) = hooked_log(&sim);
    let c = log.append(1, &rec(2960, 1)).unwrap();
    log.append(1, &rec(2000, 2)).unwrap();
    log.append(1, &rec(1000, 3)).unwrap();
    log.sync().unwrap();
    let old_hardened = log.hardened_lsn();
    let fired = Arc::new(AtomicBool::new(false));
    let preparer_out: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    {
        let fired = fired.clone();
        let cell = cell.clone();
        let preparer = preparer_out.clone();
        storage.set_hook(move |op, name| {
            if op == "create" && name.ends_with(".trunc") && !fired.swap(true, Ordering::SeqCst) {
                // The preparer thread runs here, between truncate's spare
                // retirement and the end of the cut.
                let log = cell.get().unwrap().upgrade().unwrap();
                *preparer.lock().unwrap() = Some(concurrently(move || {
                    log.prepare_next_segment().unwrap();
                }));
            }
            Ok(())
        });
    }
    log.truncate(c.lsn_end).unwrap();
    assert!(fired.load(Ordering::SeqCst));
    let handle = preparer_out
        .lock()
        .unwrap()
        .take()
        .expect("preparer started");
    handle.join().unwrap();
    assert_eq!(log.hardened_lsn(), c.lsn_end);
    let spare_hints = hints(&sim);
    // Appends after the cut roll into the prepared spare (the rollover
    // makes batch 4 durable first; batch 5 stays unsynced).
    let four = log.append(2, &rec(2960, 4)).unwrap();
    let rolled = log.append(2, &rec(2960, 5)).unwrap();
    assert_eq!(rolled.lsn_start, CAP, "rolled into the spare");
    let image = sim.crash_image(sim.ops(), CrashMode::SyncedOnly);
    let r = Log::open_with(image, opts());
    assert!(
        r.is_ok(),
        "recovery refused a legitimate crash image: {}\n  hardened before cut {old_hardened}, \
         cut at {}; headers after truncate: {spare_hints:?}",
        r.as_ref().err().unwrap(),
        c.lsn_end
    );
    let (log2, _) = r.unwrap();
    assert_eq!(log2.written_lsn(), four.lsn_end);
}

/// `delete_below` takes neither the writer nor the sync lock, so it can run
/// while `truncate` is between its segment snapshot and its swap. Truncate
/// then asserts `segs.len() == idx + 1` against an index from the stale
/// snapshot and panics while holding the writer mutex and the segments
/// lock: every later log call panics ("log lock poisoned by a panic").
#[test]
fn regression_delete_below_during_truncate_panics_and_wedges_the_log() {
    let sim = SimStorage::new();
    let (log, storage, cell) = hooked_log(&sim);
    let mut pos = Vec::new();
    for i in 0..8 {
        pos.push(log.append(1, &rec(2960, i)).unwrap());
    }
    log.sync().unwrap();
    assert_eq!(pos[4].lsn_start, 2 * CAP, "segment 2 starts with batch 4");
    let fired = Arc::new(AtomicBool::new(false));
    let retention_out: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    {
        let fired = fired.clone();
        let cell = cell.clone();
        let retention = retention_out.clone();
        storage.set_hook(move |op, name| {
            if op == "create" && name.ends_with(".trunc") && !fired.swap(true, Ordering::SeqCst) {
                // Retention runs here, on another thread.
                let log = cell.get().unwrap().upgrade().unwrap();
                *retention.lock().unwrap() = Some(concurrently(move || {
                    log.delete_below(2 * CAP).unwrap();
                }));
            }
            Ok(())
        });
    }
    let cut = pos[5].lsn_start;
    let r = catch_unwind(AssertUnwindSafe(|| log.truncate(cut)));
    assert!(fired.load(Ordering::SeqCst));
    if let Some(h) = retention_out.lock().unwrap().take() {
        h.join().expect("delete_below after the truncation");
    }
    let msg = match &r {
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
        Ok(_) => String::new(),
    };
    if r.is_err() {
        // Log::drop would panic again on the poisoned segments lock and,
        // during this test's unwinding, abort the whole test binary.
        let after = catch_unwind(AssertUnwindSafe(|| lsns(&log)))
            .map(|_| "reads still work".to_string())
            .unwrap_or_else(|_| "later reads panic too".into());
        let writer_poisoned = catch_unwind(AssertUnwindSafe(|| log.last_epoch())).is_err();
        // Not unwinding here, so a panic in Log::drop is caught, not an abort.
        drop(cell);
        let drop_panics = catch_unwind(AssertUnwindSafe(move || drop(log))).is_err();
        panic!(
            "truncate panicked when delete_below ran concurrently: {msg} ({after}; \
             writer lock poisoned: {writer_poisoned}; Log::drop panics: {drop_panics})"
        );
    }
    assert!(r.unwrap().is_ok());
    assert_eq!(log.written_lsn(), cut);
    assert_eq!(lsns(&log), vec![pos[4].lsn_start]);
}

/// A failed directory sync (or mmap) during a rollover is reported as a
/// plain I/O error without poisoning, but the new segment file is already
/// under its final name: every later rollover fails with "already exists"
/// and the log accepts no batch that needs a new segment until it is
/// reopened (or a spare happens to be renamed over the orphan). Either the
/// failure must poison the log or the retry must succeed.
#[test]
fn regression_failed_rollover_leaves_the_log_wedged_not_poisoned() {
    let sim = SimStorage::new();
    let (log, storage, _cell) = hooked_log(&sim);
    log.append(1, &rec(2960, 1)).unwrap();
    log.append(1, &rec(2960, 2)).unwrap();
    log.sync().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    {
        let armed = armed.clone();
        storage.set_hook(move |op, _| {
            if op == "sync_dir" && armed.swap(false, Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        });
    }
    let first = log.append(1, &rec(2960, 3));
    assert!(first.is_err(), "injected failure must surface");
    assert!(!armed.load(Ordering::SeqCst));
    // The storage is healthy again.
    let retry = log.append(1, &rec(2960, 3));
    assert!(
        retry.is_ok() || log.poisoned().is_some(),
        "after one failed rollover ({}), the retry fails with {} and the log is not poisoned",
        first.unwrap_err(),
        retry.unwrap_err()
    );
}

/// Invariant (passes): through appends, syncs, rollovers, spare
/// preparation, retention and truncation done one at a time, no segment or
/// spare header ever carries a durable-LSN hint above the hardened LSN.
#[test]
fn regression_no_header_hint_exceeds_the_hardened_lsn() {
    let sim = SimStorage::new();
    let (log, _) = Log::open_with(sim.clone(), opts()).unwrap();
    let check = |what: &str| {
        let h = log.hardened_lsn();
        for (name, hint) in hints(&sim) {
            if let Some(hint) = hint {
                assert!(hint <= h, "after {what}: {name} hint {hint} > hardened {h}");
            }
        }
    };
    let mut x = 77u64;
    let mut pos = Vec::new();
    for i in 0..120 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pos.push(
            log.append(1 + i / 40, &rec((x >> 40) as usize % 3000, i as u8))
                .unwrap(),
        );
        check("append");
        if x.is_multiple_of(3) {
            log.sync().unwrap();
            check("sync");
        }
        if x.is_multiple_of(5) {
            log.prepare_next_segment().unwrap();
            check("prepare");
        }
        if i % 30 == 29 {
            log.sync().unwrap();
            log.delete_below(log.hardened_lsn() / 2).unwrap();
            check("delete_below");
        }
        if i % 45 == 44 {
            let cut = pos[pos.len() - 3].lsn_start;
            log.truncate(cut).unwrap();
            pos.truncate(pos.len() - 3);
            check("truncate");
        }
    }
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

/// Nothing stops a second `Log::open` of a directory that a live log (in
/// this or another process) is using: the second open recovers it (and
/// deletes the live log's spare/free files), then both write at the same
/// LSNs and one acknowledged batch silently replaces the other.
#[test]
fn regression_second_open_of_a_live_log_directory_is_refused() {
    let dir = tempdir("double-open");
    let (a, _) = Log::open(&dir, opts()).unwrap();
    a.append(1, &rec(100, 1)).unwrap();
    a.sync().unwrap();
    let second = Log::open(&dir, opts());
    let Ok((b, _)) = second else {
        std::fs::remove_dir_all(&dir).unwrap();
        return; // refused: fine
    };
    let acked = a.append(1, &rec(100, 2)).unwrap();
    a.sync().unwrap();
    let other = b.append(1, &rec(100, 3)).unwrap();
    b.sync().unwrap();
    drop(a);
    drop(b);
    let (c, _) = Log::open(&dir, opts()).unwrap();
    let recs: Vec<Vec<u8>> = c
        .read_from(0)
        .unwrap()
        .flat_map(|v| {
            v.unwrap()
                .records()
                .unwrap()
                .iter()
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    panic!(
        "a second Log::open of a live directory succeeded; both logs placed a batch at LSN {} \
         ({}), and after reopening the acknowledged batch of the first is {}",
        acked.lsn_start,
        other.lsn_start,
        if recs.contains(&vec![2u8; 100]) {
            "still there"
        } else {
            "gone"
        }
    );
}
