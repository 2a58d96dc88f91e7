//! Recovery on open: scan every segment, verify every batch, cut a torn
//! tail, refuse damage in the middle.
//!
//! The rule that separates a torn tail from corruption: every segment header
//! carries a durable-LSN hint (see `segment`), never more than what was
//! durable. At the first position `p` that does not hold a valid batch:
//! if `p` is below the hint, durable (acknowledged) data is damaged and open
//! fails, naming the LSN and any valid batch that follows. Otherwise the
//! bytes from `p` on were never acknowledged; a crash may have written any
//! subset of their pages (kernel writeback has no order), so they are zeroed
//! and reported, valid-looking batches after the damage included.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::error::OpenError;
use crate::log::frame::{self, FRAME_ALIGN, FRAME_HEADER_BYTES, FRAME_MAGIC};
use crate::log::segment::{
    decode_segment_header, encode_segment_header, parse_segment_name, segment_name, Segment,
    SegmentRef, SEGMENT_HEADER_BYTES,
};
use crate::log::storage::{Storage, StorageFile};
use crate::log::LogOptions;

/// Suffix of the temporary file truncation builds before swapping it in.
pub(crate) const TRUNCATE_SUFFIX: &str = ".trunc";
const CREATE_SUFFIX: &str = ".tmp";

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub batches: u64,
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub last_epoch: u64,
    /// The torn tail that was cut, if any.
    pub cut: Option<TailCut>,
    /// Leftover temporary files and empty trailing segments that were removed.
    pub removed_files: Vec<String>,
    pub elapsed: Duration,
}

/// A tail removed by recovery: bytes that were written but never made
/// durable before a crash, so never acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    pub from_lsn: u64,
    /// End of the non-zero bytes that were cut.
    pub to_lsn: u64,
    pub reason: String,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recovered {} batches in {} segments, LSN {}..{}, last epoch {} ({:.1} ms)",
            self.batches,
            self.segments,
            self.start_lsn,
            self.end_lsn,
            self.last_epoch,
            self.elapsed.as_secs_f64() * 1e3
        )?;
        if let Some(cut) = &self.cut {
            write!(
                f,
                "; cut torn tail LSN {}..{}: {}",
                cut.from_lsn, cut.to_lsn, cut.reason
            )?;
        }
        for name in &self.removed_files {
            write!(f, "; removed {name}")?;
        }
        Ok(())
    }
}

pub(crate) struct Recovered<F> {
    pub segments: Vec<SegmentRef<F>>,
    pub start: u64,
    pub end: u64,
    pub last_epoch: u64,
    pub report: RecoveryReport,
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> OpenError {
    move |source| OpenError::Io { context, source }
}

/// Creates the segment at `base`, durable (file data and directory entry),
/// and maps it.
pub(crate) fn create_segment<S: Storage>(
    storage: &S,
    base: u64,
    segment_bytes: usize,
    durable_lsn: u64,
) -> Result<Segment<S::File>, (String, io::Error)> {
    let name = segment_name(base);
    let capacity = (segment_bytes - SEGMENT_HEADER_BYTES) as u64;
    let header = encode_segment_header(base, capacity, durable_lsn);
    storage
        .create(&name, &header, segment_bytes)
        .map_err(|e| (format!("creating segment {}", storage.describe(&name)), e))?;
    storage.sync_dir().map_err(|e| {
        (
            "syncing log directory after creating a segment".to_string(),
            e,
        )
    })?;
    let file = storage
        .open(&name)
        .map_err(|e| (format!("mapping segment {}", storage.describe(&name)), e))?;
    Ok(Segment {
        name,
        base_lsn: base,
        capacity,
        file,
    })
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Borrows log bytes during recovery.
fn bytes_of<F: StorageFile>(seg: &Segment<F>, lsn: u64, len: usize) -> &[u8] {
    // SAFETY: recovery runs before the log is shared; nothing else reads or
    // writes any segment while it scans.
    unsafe { seg.log_bytes(lsn, len) }
}

/// A valid frame at exactly `lsn` in `seg`, if there is one.
fn valid_frame_at<F: StorageFile>(seg: &Segment<F>, lsn: u64) -> Option<frame::FrameHeader> {
    let bytes = bytes_of(seg, lsn, (seg.end_lsn() - lsn) as usize);
    match frame::check_frame(bytes) {
        Ok((h, _)) if h.base_lsn == lsn && h.end_lsn() <= seg.end_lsn() => Some(h),
        _ => None,
    }
}

/// First valid frame at an aligned position after `from` (exclusive), in
/// `segments[first..]`.
fn find_valid_frame_after<F: StorageFile>(
    segments: &[SegmentRef<F>],
    first: usize,
    from: u64,
) -> Option<u64> {
    for seg in &segments[first..] {
        let mut lsn = if seg.contains(from) {
            from + FRAME_ALIGN as u64
        } else {
            seg.base_lsn
        };
        while lsn + FRAME_HEADER_BYTES as u64 <= seg.end_lsn() {
            let magic = bytes_of(seg, lsn, 4);
            if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) == FRAME_MAGIC
                && valid_frame_at(seg, lsn).is_some()
            {
                return Some(lsn);
            }
            lsn += FRAME_ALIGN as u64;
        }
    }
    None
}

/// Where the valid log stops and why.
enum Stop {
    /// Clean end: zeros from here to the end of the last segment.
    End(u64),
    /// Damage at this LSN (in segment `idx`).
    Damage {
        idx: usize,
        lsn: u64,
        reason: String,
    },
}

pub(crate) fn recover<S: Storage>(
    storage: &S,
    options: &LogOptions,
) -> Result<Recovered<S::File>, OpenError> {
    let began = Instant::now();
    let mut report = RecoveryReport::default();
    let names = storage
        .list()
        .map_err(io_err("listing log directory".into()))?;
    let mut bases = Vec::new();
    for name in names {
        if name.ends_with(CREATE_SUFFIX) || name.ends_with(TRUNCATE_SUFFIX) {
            // An unfinished segment creation or truncation: never part of the log.
            storage.remove(&name).map_err(io_err(format!(
                "removing leftover {}",
                storage.describe(&name)
            )))?;
            report.removed_files.push(name);
        } else if let Some(base) = parse_segment_name(&name) {
            bases.push(base);
        } else if name.ends_with(crate::log::segment::SEGMENT_SUFFIX) {
            return Err(OpenError::BadSegment {
                file: storage.describe(&name),
                reason: "segment file name is not 20 decimal digits of base LSN".into(),
            });
        }
        // Other files (an operator's notes, a lock file) are left alone.
    }
    bases.sort_unstable();

    let mut segments: Vec<SegmentRef<S::File>> = Vec::new();
    let mut durable_hint = 0u64;
    for base in bases {
        let name = segment_name(base);
        let file = storage.open(&name).map_err(io_err(format!(
            "mapping segment {}",
            storage.describe(&name)
        )))?;
        let bad = |reason: String| OpenError::BadSegment {
            file: storage.describe(&name),
            reason,
        };
        if file.len() < SEGMENT_HEADER_BYTES {
            return Err(bad(format!(
                "file is {} bytes, shorter than a segment header",
                file.len()
            )));
        }
        // SAFETY: recovery has exclusive use of the file; the range is in bounds.
        let header = unsafe { file.bytes(0, SEGMENT_HEADER_BYTES) };
        let (hbase, capacity) = decode_segment_header(header).map_err(&bad)?;
        if hbase != base {
            return Err(bad(format!(
                "header says base LSN {hbase}, file name says {base}"
            )));
        }
        if capacity != (file.len() - SEGMENT_HEADER_BYTES) as u64
            || capacity % FRAME_ALIGN as u64 != 0
        {
            return Err(bad(format!(
                "header capacity {capacity} does not match file length {}",
                file.len()
            )));
        }
        if let Some(hint) = crate::log::segment::decode_durable_hint(header) {
            // A hint beyond the segment's own end cannot have been written by us.
            if hint <= base + capacity {
                durable_hint = durable_hint.max(hint);
            }
        }
        if let Some(prev) = segments.last() {
            if prev.end_lsn() != base {
                return Err(OpenError::SegmentGap {
                    file: storage.describe(&name),
                    expected: prev.end_lsn(),
                    found: base,
                });
            }
        }
        segments.push(Arc::new(Segment {
            name,
            base_lsn: base,
            capacity,
            file,
        }));
    }

    if segments.is_empty() {
        let seg = create_segment(storage, 0, options.segment_bytes, 0)
            .map_err(|(context, source)| OpenError::Io { context, source })?;
        report.segments = 1;
        report.elapsed = began.elapsed();
        return Ok(Recovered {
            segments: vec![Arc::new(seg)],
            start: 0,
            end: 0,
            last_epoch: 0,
            report,
        });
    }

    let start = segments[0].base_lsn;
    let mut last_epoch = 0u64;
    // End of the last valid batch: the log's end, whatever stopped the scan
    // (the zeros after it may run into the next segment's base).
    let mut end = start;
    let stop = scan(&segments, &mut last_epoch, &mut report.batches, &mut end);
    match stop {
        Stop::End(at) => assert!(at >= end, "scan ended before its last batch"),
        Stop::Damage { idx, lsn, reason } => {
            let next_valid_lsn = find_valid_frame_after(&segments, idx, lsn);
            if lsn < durable_hint {
                return Err(OpenError::CorruptMidLog {
                    file: storage.describe(&segments[idx].name),
                    lsn,
                    reason,
                    durable_lsn: durable_hint,
                    next_valid_lsn,
                });
            }
            // At or above the durable point nothing was acknowledged: a crash
            // may have written any subset of these pages, so valid-looking
            // batches after the damage are cut with it.
            let reason = match next_valid_lsn {
                Some(n) => {
                    format!("{reason} (a batch at LSN {n} after it was never made durable either)")
                }
                None => reason,
            };
            let to_lsn = cut_tail(storage, &mut segments, idx, lsn, &mut report)?;
            report.cut = Some(TailCut {
                from_lsn: lsn,
                to_lsn,
                reason,
            });
        }
    }

    // A trailing segment holding nothing is what a crash right after a
    // rollover leaves behind. Remove it so the next append places its batch
    // exactly as a partner's log would (in the previous segment if it fits).
    while segments.len() > 1 && end <= segments[segments.len() - 1].base_lsn {
        let seg = segments.pop().expect("len > 1");
        let tail = bytes_of(&seg, seg.base_lsn, seg.capacity as usize);
        assert!(
            is_zero(tail),
            "segment beyond the end of the log is not empty"
        );
        storage.remove(&seg.name).map_err(io_err(format!(
            "removing empty segment {}",
            storage.describe(&seg.name)
        )))?;
        report.removed_files.push(seg.name.clone());
    }
    storage
        .sync_dir()
        .map_err(io_err("syncing log directory".into()))?;

    // After a process crash the kept bytes may still be only in the page
    // cache; make them durable before calling them hardened.
    for seg in &segments {
        seg.sync_log_range(seg.base_lsn, end)
            .map_err(io_err(format!("syncing {}", storage.describe(&seg.name))))?;
    }
    let last = segments.last().expect("at least one segment");
    // SAFETY: recovery has exclusive use of the log.
    unsafe { last.write_durable_hint(end) }
        .and_then(|()| last.sync_header())
        .map_err(io_err(format!(
            "syncing header of {}",
            storage.describe(&last.name)
        )))?;

    report.segments = segments.len();
    report.start_lsn = start;
    report.end_lsn = end;
    report.last_epoch = last_epoch;
    report.elapsed = began.elapsed();
    Ok(Recovered {
        segments,
        start,
        end,
        last_epoch,
        report,
    })
}

/// Walks valid frames from the start of the log to the first position that
/// is not one.
fn scan<F: StorageFile>(
    segments: &[SegmentRef<F>],
    last_epoch: &mut u64,
    batches: &mut u64,
    last_end: &mut u64,
) -> Stop {
    let mut idx = 0;
    let mut lsn = segments[0].base_lsn;
    loop {
        let seg = &segments[idx];
        let room = (seg.end_lsn() - lsn) as usize;
        let head = bytes_of(seg, lsn, room.min(FRAME_HEADER_BYTES));
        if is_zero(head) {
            // Either the end of the log or the padding before the next segment.
            let rest = bytes_of(seg, lsn, room);
            if let Some(i) = rest.iter().position(|&b| b != 0) {
                let at = lsn + (i / FRAME_ALIGN * FRAME_ALIGN) as u64;
                return Stop::Damage {
                    idx,
                    lsn,
                    reason: format!("unexpected bytes at LSN {at} after zeroed space"),
                };
            }
            let Some(next) = segments.get(idx + 1) else {
                return Stop::End(lsn);
            };
            // Padding is legitimate only if the next segment's first batch
            // would not have fit here; otherwise a batch is missing.
            match valid_frame_at(next, next.base_lsn) {
                Some(h) if h.frame_bytes() > room => {
                    idx += 1;
                    lsn = next.base_lsn;
                    continue;
                }
                Some(h) => {
                    return Stop::Damage {
                        idx,
                        lsn,
                        reason: format!(
                            "batch missing: {room} bytes free here, yet the next batch ({} bytes) starts the next segment",
                            h.frame_bytes()
                        ),
                    }
                }
                None => {
                    // The next segment does not start with a batch: either it is an
                    // empty leftover of a rollover (clean end here) or it holds
                    // damage; damage handling below tells them apart.
                    let tail = bytes_of(next, next.base_lsn, next.capacity as usize);
                    if is_zero(tail) && idx + 2 == segments.len() {
                        return Stop::End(lsn);
                    }
                    return Stop::Damage {
                        idx: idx + 1,
                        lsn: next.base_lsn,
                        reason: "segment does not start with a valid batch".into(),
                    };
                }
            }
        }
        match frame::check_frame(bytes_of(seg, lsn, room)) {
            Ok((h, _)) if h.base_lsn != lsn => {
                return Stop::Damage {
                    idx,
                    lsn,
                    reason: format!("batch claims LSN {} (stale or misplaced)", h.base_lsn),
                }
            }
            Ok((h, _)) if h.epoch < *last_epoch => {
                return Stop::Damage {
                    idx,
                    lsn,
                    reason: format!(
                        "batch epoch {} is older than the previous batch's {}",
                        h.epoch, last_epoch
                    ),
                }
            }
            Ok((h, _)) => {
                *last_epoch = h.epoch;
                *batches += 1;
                lsn = h.end_lsn();
                *last_end = lsn;
                assert!(
                    lsn <= seg.end_lsn(),
                    "check_frame bounded the frame by the segment"
                );
                if lsn == seg.end_lsn() {
                    match segments.get(idx + 1) {
                        Some(next) => {
                            idx += 1;
                            lsn = next.base_lsn;
                        }
                        None => return Stop::End(lsn),
                    }
                }
            }
            Err(e) => {
                return Stop::Damage {
                    idx,
                    lsn,
                    reason: format!("torn or corrupt batch: {e}"),
                }
            }
        }
    }
}

/// Zeroes the log from `lsn` (in `segments[idx]`) to the end and removes
/// later segments. Returns the end of the non-zero bytes that were cut.
fn cut_tail<S: Storage>(
    storage: &S,
    segments: &mut Vec<SegmentRef<S::File>>,
    idx: usize,
    lsn: u64,
    report: &mut RecoveryReport,
) -> Result<u64, OpenError> {
    let mut to_lsn = lsn;
    // Later segments first, last one first: a crash part-way never leaves a
    // hole in front of surviving bytes.
    while segments.len() > idx + 1 {
        let seg = segments.pop().expect("len > idx + 1");
        let bytes = bytes_of(&seg, seg.base_lsn, seg.capacity as usize);
        if let Some(i) = bytes.iter().rposition(|&b| b != 0) {
            to_lsn = to_lsn.max(seg.base_lsn + i as u64 + 1);
        }
        storage
            .remove(&seg.name)
            .map_err(io_err(format!("removing {}", storage.describe(&seg.name))))?;
        storage
            .sync_dir()
            .map_err(io_err("syncing log directory".into()))?;
        report.removed_files.push(seg.name.clone());
    }
    let seg = &segments[idx];
    let rest = bytes_of(seg, lsn, (seg.end_lsn() - lsn) as usize);
    if let Some(i) = rest.iter().rposition(|&b| b != 0) {
        let len = i + 1;
        to_lsn = to_lsn.max(lsn + len as u64);
        let zeros = vec![0u8; len];
        // SAFETY: recovery has exclusive use of the segment; in bounds.
        unsafe { seg.write_log_bytes(lsn, &zeros) }
            .and_then(|()| seg.sync_log_range(lsn, lsn + len as u64))
            .map_err(io_err(format!(
                "zeroing torn tail of {}",
                storage.describe(&seg.name)
            )))?;
    }
    Ok(to_lsn)
}
