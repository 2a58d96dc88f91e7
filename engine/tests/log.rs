//! The log on real files: append, read, reopen, rollover, truncation,
//! deletion, damaged files, poisoning.

mod scratch;
use mirrorlog_engine::log::segment::{segment_name, SEGMENT_HEADER_BYTES};
use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{
    AppendError, Compression, Log, LogOptions, OpenError, ReadError, RecordsBuf, SyncError,
    TruncateError,
};
use std::fs;
use std::path::Path;

const SEG: usize = 8192;

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: SEG,
        compression: Compression::Zstd(1),
    }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = scratch::path(&format!("test-{tag}"));
    let _ = fs::remove_dir_all(&d);
    d
}

fn batch(i: usize) -> RecordsBuf {
    let mut r = RecordsBuf::new();
    let body = format!("record {i} ").repeat(1 + i % 40);
    r.push(body.as_bytes());
    // Some incompressible bytes so batches keep a real size under zstd.
    let mut x = i as u64 + 1;
    let noise: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    r.push(&noise);
    r.push(&(i as u64).to_le_bytes());
    r
}

/// All batches as (lsn, epoch, records).
fn contents<S: mirrorlog_engine::log::Storage>(log: &Log<S>) -> Vec<(u64, u64, Vec<Vec<u8>>)> {
    log.read_from(log.start_lsn())
        .unwrap()
        .map(|v| {
            let v = v.unwrap();
            let recs = v.records().unwrap().iter().map(|r| r.to_vec()).collect();
            (v.lsn(), v.header().epoch, recs)
        })
        .collect()
}

#[test]
fn appended_batches_survive_reopen_across_many_segments() {
    let dir = tempdir("reopen");
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.end_lsn, 0);
    let mut positions = Vec::new();
    for i in 0..300 {
        let pos = log.append(1 + (i as u64 / 100), &batch(i)).unwrap();
        positions.push(pos);
        if i % 7 == 0 {
            assert_eq!(log.sync().unwrap(), pos.lsn_end);
        }
    }
    log.sync().unwrap();
    let before = contents(&log);
    assert_eq!(before.len(), 300);
    let segments = fs::read_dir(&dir).unwrap().count();
    assert!(segments > 5, "small segments must roll over ({segments})");
    drop(log);
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.batches, 300);
    assert_eq!(report.cut, None);
    assert_eq!(report.end_lsn, positions.last().unwrap().lsn_end);
    assert_eq!(report.last_epoch, 3);
    // Epoch history: epochs 1, 2, 3 began at batches 0, 100, 200.
    assert_eq!(
        report.epochs,
        vec![
            (1, positions[0].lsn_start),
            (2, positions[100].lsn_start),
            (3, positions[200].lsn_start)
        ]
    );
    assert_eq!(contents(&log), before);
    for (i, (lsn, _, recs)) in before.iter().enumerate() {
        assert_eq!(*lsn, positions[i].lsn_start);
        let want: Vec<Vec<u8>> = {
            let b = batch(i);
            let (log2, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
            log2.append(1, &b).unwrap();
            let v = log2.read_from(0).unwrap().next().unwrap().unwrap();
            v.records().unwrap().iter().map(|r| r.to_vec()).collect()
        };
        assert_eq!(recs, &want);
        assert_eq!(recs[2], (i as u64).to_le_bytes());
    }
    // Reading from the middle starts at that batch.
    let mid = positions[150].lsn_start;
    let first = log.read_from(mid).unwrap().next().unwrap().unwrap();
    assert_eq!(first.lsn(), mid);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reading_from_inside_a_batch_is_an_error_not_garbage() {
    let (log, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let pos = log.append(1, &batch(3)).unwrap();
    log.append(1, &batch(4)).unwrap();
    let err = log
        .read_from(pos.lsn_start + 8)
        .unwrap()
        .next()
        .unwrap()
        .err()
        .unwrap();
    assert!(
        matches!(err, ReadError::NotABatch { .. } | ReadError::Corrupt { .. }),
        "{err}"
    );
    assert!(matches!(
        log.read_from(1 << 40),
        Err(ReadError::BeyondEnd { .. })
    ));
}

#[test]
fn epochs_never_go_backwards() {
    let (log, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    log.append(5, &batch(1)).unwrap();
    let err = log.append(4, &batch(2)).unwrap_err();
    assert!(matches!(
        err,
        AppendError::EpochRegression { last: 5, got: 4 }
    ));
    assert!(matches!(
        log.append(5, &RecordsBuf::new()),
        Err(AppendError::Empty)
    ));
}

#[test]
fn batch_larger_than_a_segment_is_refused_and_log_unchanged() {
    let (log, _) = Log::open_with(
        SimStorage::new(),
        LogOptions {
            compression: Compression::Off,
            ..opts()
        },
    )
    .unwrap();
    let mut r = RecordsBuf::new();
    r.push(&vec![7u8; SEG]);
    assert!(matches!(
        log.append(1, &r),
        Err(AppendError::TooLarge { .. })
    ));
    assert_eq!(log.written_lsn(), 0);
    log.append(1, &batch(1)).unwrap();
}

#[test]
fn truncate_cuts_the_tail_durably_and_appends_continue_there() {
    let dir = tempdir("truncate");
    let (log, _) = Log::open(&dir, opts()).unwrap();
    let mut pos = Vec::new();
    for i in 0..100 {
        pos.push(log.append(1 + i as u64 / 50, &batch(i)).unwrap());
    }
    log.sync().unwrap();
    // A reader holding a view into the part that will be cut keeps valid bytes.
    let held = log
        .read_from(pos[70].lsn_start)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let held_bytes = held.frame().to_vec();
    let cut = pos[40].lsn_end;
    assert!(matches!(
        log.truncate(cut + 8),
        Err(TruncateError::BadLsn { .. })
    ));
    log.truncate(cut).unwrap();
    assert_eq!(log.written_lsn(), cut);
    assert_eq!(log.hardened_lsn(), cut);
    assert_eq!(log.last_epoch(), 1);
    assert_eq!(held.frame(), &held_bytes[..]);
    assert_eq!(contents(&log).len(), 41);
    let p = log.append(7, &batch(999)).unwrap();
    assert_eq!(p.lsn_start, cut.max(p.lsn_start));
    log.sync().unwrap();
    drop(log);
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.batches, 42);
    assert_eq!(report.cut, None);
    let all = contents(&log);
    assert_eq!(all.last().unwrap().1, 7);
    // Truncating to the very start of a segment leaves an empty log there.
    log.truncate(0).unwrap();
    assert_eq!(contents(&log).len(), 0);
    drop(log);
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!((report.batches, report.end_lsn), (0, 0));
    log.append(1, &batch(1)).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn delete_below_removes_whole_segments_only_and_reads_below_are_refused() {
    let dir = tempdir("delete");
    let (log, _) = Log::open(&dir, opts()).unwrap();
    let mut pos = Vec::new();
    for i in 0..200 {
        pos.push(log.append(1, &batch(i)).unwrap());
    }
    assert!(
        matches!(
            log.delete_below(pos[199].lsn_end),
            Err(TruncateError::BadLsn { .. })
        ),
        "unhardened"
    );
    log.sync().unwrap();
    let held = log.read_from(0).unwrap().next().unwrap().unwrap();
    let target = pos[100].lsn_start;
    let start = log.delete_below(target).unwrap();
    assert!(start <= target && start > 0);
    assert_eq!(start % (SEG - SEGMENT_HEADER_BYTES) as u64, 0);
    assert!(!dir.join(segment_name(0)).exists());
    assert!(
        held.records().is_ok(),
        "a view outlives deletion of its segment"
    );
    assert!(matches!(log.read_from(0), Err(ReadError::Purged { .. })));
    let kept = contents(&log);
    assert!(kept.iter().any(|(l, ..)| *l == target));
    drop(log);
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.start_lsn, start);
    assert_eq!(contents(&log), kept);
    fs::remove_dir_all(&dir).unwrap();
}

fn write_some(dir: &Path, n: usize) -> Vec<mirrorlog_engine::log::BatchPos> {
    let (log, _) = Log::open(dir, opts()).unwrap();
    let v = (0..n).map(|i| log.append(1, &batch(i)).unwrap()).collect();
    log.sync().unwrap();
    v
}

#[test]
fn segment_with_bad_magic_or_version_is_refused_with_the_file_named() {
    for (tag, off, bytes) in [
        ("magic", 0usize, b"NOTASEGM".to_vec()),
        ("version", 8, 9u32.to_le_bytes().to_vec()),
    ] {
        let dir = tempdir(tag);
        write_some(&dir, 3);
        let path = dir.join(segment_name(0));
        let mut data = fs::read(&path).unwrap();
        data[off..off + bytes.len()].copy_from_slice(&bytes);
        fs::write(&path, &data).unwrap();
        let err = Log::open(&dir, opts()).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, OpenError::BadSegment { .. }), "{msg}");
        assert!(msg.contains(&segment_name(0)), "{msg}");
        assert!(
            msg.contains(if tag == "magic" {
                "not a mirrorlog segment"
            } else {
                "version 9"
            }),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn missing_middle_segment_is_a_gap_error() {
    let dir = tempdir("gap");
    let pos = write_some(&dir, 200);
    let cap = (SEG - SEGMENT_HEADER_BYTES) as u64;
    assert!(pos.last().unwrap().lsn_end > 3 * cap);
    fs::remove_file(dir.join(segment_name(cap))).unwrap();
    let err = Log::open(&dir, opts()).err().unwrap();
    assert!(matches!(err, OpenError::SegmentGap { .. }), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corruption_in_the_middle_is_reported_not_cut() {
    let dir = tempdir("midcorrupt");
    let pos = write_some(&dir, 50);
    // Flip a payload byte of batch 10 (in segment 0).
    let victim = pos[10];
    assert!(victim.lsn_end < (SEG - SEGMENT_HEADER_BYTES) as u64);
    let path = dir.join(segment_name(0));
    let mut data = fs::read(&path).unwrap();
    data[SEGMENT_HEADER_BYTES + victim.lsn_start as usize + 44] ^= 0x40;
    fs::write(&path, &data).unwrap();
    let err = Log::open(&dir, opts()).err().unwrap();
    match &err {
        OpenError::CorruptMidLog {
            lsn,
            next_valid_lsn,
            durable_lsn,
            ..
        } => {
            assert_eq!(*lsn, victim.lsn_start);
            assert_eq!(*next_valid_lsn, Some(pos[11].lsn_start));
            assert_eq!(*durable_lsn, pos[49].lsn_end);
        }
        other => panic!("expected CorruptMidLog, got {other}"),
    }
    // Nothing was cut: restoring the byte makes the log whole again.
    data[SEGMENT_HEADER_BYTES + victim.lsn_start as usize + 44] ^= 0x40;
    fs::write(&path, &data).unwrap();
    let (_, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.batches, 50);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_last_batch_that_was_durable_is_an_error_not_a_cut() {
    let dir = tempdir("durabletail");
    let pos = write_some(&dir, 5);
    let last = pos[4];
    let path = dir.join(segment_name(0));
    let mut data = fs::read(&path).unwrap();
    data[SEGMENT_HEADER_BYTES + last.lsn_end as usize - 9] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let err = Log::open(&dir, opts()).err().unwrap();
    assert!(
        matches!(
            err,
            OpenError::CorruptMidLog {
                next_valid_lsn: None,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("acknowledged"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torn_last_batch_is_cut_and_reported() {
    let dir = tempdir("torn");
    let mut pos = write_some(&dir, 4);
    {
        // A fifth batch written but never synced: what a crash can tear.
        let (log, _) = Log::open(&dir, opts()).unwrap();
        pos.push(log.append(1, &batch(4)).unwrap());
    }
    let last = pos[4];
    let seg = (last.lsn_start / (SEG - SEGMENT_HEADER_BYTES) as u64)
        * (SEG - SEGMENT_HEADER_BYTES) as u64;
    let path = dir.join(segment_name(seg));
    let mut data = fs::read(&path).unwrap();
    let at = SEGMENT_HEADER_BYTES + (last.lsn_end - seg) as usize - 9;
    data[at] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let (log, report) = Log::open(&dir, opts()).unwrap();
    let cut = report.cut.clone().expect("a cut");
    assert_eq!(cut.from_lsn, last.lsn_start);
    assert!(cut.to_lsn > last.lsn_start && cut.to_lsn <= last.lsn_end);
    assert!(cut.reason.contains("checksum"), "{}", cut.reason);
    assert_eq!(report.batches, 4);
    assert_eq!(log.written_lsn(), last.lsn_start);
    // The cut bytes are zero on disk: a later append is not confused by them.
    let p = log.append(1, &batch(0)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(
        (report.batches, report.end_lsn, report.cut),
        (5, p.lsn_end, None)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn leftover_temporary_files_are_removed_and_foreign_files_left_alone() {
    let dir = tempdir("leftover");
    write_some(&dir, 3);
    fs::write(dir.join("00000000000000099999.mlseg.tmp"), b"half").unwrap();
    fs::write(dir.join("NOTES.txt"), b"operator notes").unwrap();
    let (_, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(
        report.removed_files,
        vec!["00000000000000099999.mlseg.tmp".to_string()]
    );
    assert!(dir.join("NOTES.txt").exists());
    fs::write(dir.join("12.mlseg"), b"x").unwrap();
    assert!(matches!(
        Log::open(&dir, opts()),
        Err(OpenError::BadSegment { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_are_refused_with_the_fix() {
    let err = Log::open_with(
        SimStorage::new(),
        LogOptions {
            segment_bytes: 5000,
            ..opts()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("multiple of 4096"), "{err}");
    let err = Log::open_with(
        SimStorage::new(),
        LogOptions {
            compression: Compression::Zstd(99),
            ..opts()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("zstd compression level"), "{err}");
}

#[test]
fn failed_sync_poisons_the_log_forever() {
    let storage = SimStorage::new();
    let (log, _) = Log::open_with(storage.clone(), opts()).unwrap();
    log.append(1, &batch(1)).unwrap();
    log.sync().unwrap();
    storage.fail_syncs_after(0);
    let hardened = log.hardened_lsn();
    log.append(1, &batch(2)).unwrap();
    let err = log.sync().unwrap_err();
    assert!(err.to_string().contains("msync"), "{err}");
    assert_eq!(
        log.hardened_lsn(),
        hardened,
        "a failed sync hardens nothing"
    );
    assert!(log.poisoned().is_some());
    assert!(matches!(
        log.append(1, &batch(3)),
        Err(AppendError::Poisoned(_))
    ));
    assert!(matches!(log.sync(), Err(SyncError::Poisoned(_))));
    assert!(matches!(log.truncate(0), Err(TruncateError::Poisoned(_))));
}

#[test]
fn append_frame_keeps_partner_logs_byte_identical() {
    let (principal, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let (mirror, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    for i in 0..120 {
        principal.append(1 + i as u64 / 60, &batch(i)).unwrap();
    }
    let mut shipped = 0;
    for view in principal.read_from(0).unwrap() {
        let view = view.unwrap();
        let pos = mirror.append_frame(view.frame()).unwrap();
        assert_eq!((pos.lsn_start, pos.lsn_end), (view.lsn(), view.end_lsn()));
        shipped += 1;
    }
    assert_eq!(shipped, 120);
    assert_eq!(mirror.written_lsn(), principal.written_lsn());
    let a: Vec<Vec<u8>> = principal
        .read_from(0)
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect();
    let b: Vec<Vec<u8>> = mirror
        .read_from(0)
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect();
    assert_eq!(a, b);
    // A frame that does not continue the log is refused.
    let first = principal.read_from(0).unwrap().next().unwrap().unwrap();
    assert!(matches!(
        mirror.append_frame(first.frame()),
        Err(AppendError::UnexpectedLsn { .. }) | Err(AppendError::EpochRegression { .. })
    ));
    let mut bad = first.frame().to_vec();
    bad[50] ^= 1;
    assert!(matches!(
        mirror.append_frame(&bad),
        Err(AppendError::BadFrame(_))
    ));
}

#[test]
fn recycled_segment_files_never_pass_stale_frames_for_batches() {
    let dir = tempdir("recycle");
    let (log, _) = Log::open(&dir, opts()).unwrap();
    let mut pos = Vec::new();
    for i in 0..300 {
        pos.push(log.append(1, &batch(i)).unwrap());
    }
    log.sync().unwrap();
    let start = log.delete_below(pos[290].lsn_start).unwrap();
    let deleted = (start / (SEG - SEGMENT_HEADER_BYTES) as u64) as usize;
    assert!(deleted >= 3, "{deleted}");
    let free: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".free"))
        .collect();
    assert_eq!(
        free.len(),
        2,
        "two retired files kept for reuse, the rest removed: {free:?}"
    );
    // Keep appending through several rollovers; each uses a prepared spare,
    // the first ones recycled files full of stale frames.
    let mut rolled_into_recycled = 0;
    for i in 300..700 {
        if log.wants_next_segment() {
            let before = fs::read_dir(&dir).unwrap().count();
            assert!(log.prepare_next_segment().unwrap());
            assert!(!log.wants_next_segment());
            if fs::read_dir(&dir).unwrap().count() == before {
                rolled_into_recycled += 1; // a free file became the spare
            }
        }
        pos.push(log.append(1, &batch(i)).unwrap());
        if i % 9 == 0 {
            log.sync().unwrap();
        }
    }
    assert!(rolled_into_recycled >= 2, "{rolled_into_recycled}");
    log.sync().unwrap();
    let kept = contents(&log);
    assert_eq!(kept.len(), 700 - kept_from(&pos, start));
    drop(log);
    let (log, report) = Log::open(&dir, opts()).unwrap();
    assert_eq!(report.cut, None, "{report}");
    assert_eq!(report.end_lsn, pos.last().unwrap().lsn_end);
    assert_eq!(contents(&log), kept);
    fs::remove_dir_all(&dir).unwrap();
}

fn kept_from(pos: &[mirrorlog_engine::log::BatchPos], start: u64) -> usize {
    pos.iter().filter(|p| p.lsn_start < start).count()
}
