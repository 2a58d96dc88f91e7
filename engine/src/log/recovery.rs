//! Recovery on open: scan every segment, verify every batch, find where the
//! log ends, refuse damage to acknowledged data.
//!
//! A position holds a batch only if a frame there passes its checksum and
//! names that very position as its base LSN (and its epoch does not go
//! back). The log ends at the first position that does not. What lies there
//! may be zeros (a fresh segment), stale frames of a recycled segment file
//! (valid, but for an older, lower LSN), or the torn remains of a write a
//! crash interrupted. Which of these it is matters only for the report:
//!
//! * every segment header carries a durable-LSN hint (see `segment`), never
//!   more than what was durable. An end below the hint means durable,
//!   acknowledged data is damaged: open fails, naming the LSN and any valid
//!   batch that follows;
//! * an end at or above the hint is where the never-acknowledged tail
//!   starts. If batches of the current log lie beyond it (written after a
//!   batch that did not reach the disk: kernel writeback has no order) they
//!   are zeroed, with the torn header, and the cut is reported.
//!
//! Padding: when a batch did not fit in a segment it starts the next one.
//! At the first non-batch position of a segment that is followed by
//! another, recovery accepts the rest of the segment as padding only if the
//! next segment begins with a batch that would not have fitted.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::error::OpenError;
use crate::log::frame::{self, FrameHeader, FRAME_ALIGN, FRAME_HEADER_BYTES, FRAME_MAGIC};
use crate::log::segment::{
    decode_segment_header, encode_segment_header, parse_segment_name, segment_name, Segment,
    SegmentRef, SEGMENT_HEADER_BYTES,
};
use crate::log::storage::{Storage, StorageFile};
use crate::log::LogOptions;

/// Suffixes of files that are not (yet, or any longer) part of the log:
/// a segment being created, rewritten by truncation, prepared as the next
/// segment, or kept for recycling. Recovery removes them.
pub(crate) const CREATE_SUFFIX: &str = ".tmp";
pub(crate) const TRUNCATE_SUFFIX: &str = ".trunc";
pub(crate) const SPARE_SUFFIX: &str = ".spare";
pub(crate) const FREE_SUFFIX: &str = ".free";

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub batches: u64,
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub last_epoch: u64,
    /// Epoch history of the retained log: each epoch and the LSN of its
    /// first batch, in log order (the failover and mirroring rules use it to
    /// find where partners' histories part).
    pub epochs: Vec<(u64, u64)>,
    /// The torn tail that was cut, if any.
    pub cut: Option<TailCut>,
    /// Leftover temporary, spare and free files, and segments beyond the
    /// end of the log, that were removed.
    pub removed_files: Vec<String>,
    pub elapsed: Duration,
}

/// A tail removed by recovery: bytes that were written but never made
/// durable before a crash, so never acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    pub from_lsn: u64,
    /// End of the bytes that were zeroed (or of removed segments' batches).
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

/// Why a segment could not be created; `created`: the file may already
/// exist under the segment's name.
pub(crate) struct CreateError {
    pub context: String,
    pub source: io::Error,
    pub created: bool,
}

/// Creates the segment at `base`, durable (file data and directory entry),
/// and maps it.
pub(crate) fn create_segment<S: Storage>(
    storage: &S,
    base: u64,
    segment_bytes: usize,
    durable_lsn: u64,
) -> Result<Segment<S::File>, CreateError> {
    let name = segment_name(base);
    let capacity = (segment_bytes - SEGMENT_HEADER_BYTES) as u64;
    let header = encode_segment_header(base, capacity, durable_lsn);
    let fail = |context: String, created: bool| {
        move |source| CreateError {
            context,
            source,
            created,
        }
    };
    storage.create(&name, &header, segment_bytes).map_err(fail(
        format!("creating segment {}", storage.describe(&name)),
        false,
    ))?;
    storage.sync_dir().map_err(fail(
        "syncing log directory after creating a segment".into(),
        true,
    ))?;
    let file = storage.open(&name).map_err(fail(
        format!("mapping segment {}", storage.describe(&name)),
        true,
    ))?;
    Ok(Segment::new(name, base, capacity, file))
}

/// Borrows log bytes during recovery.
fn bytes_of<F: StorageFile>(seg: &Segment<F>, lsn: u64, len: usize) -> &[u8] {
    // SAFETY: recovery runs before the log is shared; nothing else reads or
    // writes any segment while it scans.
    unsafe { seg.log_bytes(lsn, len) }
}

/// A valid frame at exactly `lsn` in `seg`, if there is one.
fn valid_frame_at<F: StorageFile>(seg: &Segment<F>, lsn: u64) -> Option<FrameHeader> {
    let bytes = bytes_of(seg, lsn, (seg.end_lsn() - lsn) as usize);
    match frame::check_frame(bytes) {
        Ok((h, _)) if h.base_lsn == lsn && h.end_lsn() <= seg.end_lsn() => Some(h),
        _ => None,
    }
}

/// Why `lsn` does not hold a batch, in words for the report.
fn describe_non_batch<F: StorageFile>(seg: &Segment<F>, lsn: u64, last_epoch: u64) -> String {
    frame::describe_non_batch(
        bytes_of(seg, lsn, (seg.end_lsn() - lsn) as usize),
        lsn,
        last_epoch,
    )
}

/// Whether the bytes at `lsn` start a frame of this very position that did
/// not survive intact: a header naming `lsn` whose batch fails its checksum.
fn torn_frame_at<F: StorageFile>(seg: &Segment<F>, lsn: u64) -> bool {
    let room = (seg.end_lsn() - lsn) as usize;
    matches!(frame::decode_header(bytes_of(seg, lsn, room)), Ok(h) if h.base_lsn == lsn)
}

/// Valid frames of the current log (at their own LSN) at aligned positions
/// after `from` (exclusive) in `seg`: the end of the last one.
fn last_current_frame_after<F: StorageFile>(seg: &Segment<F>, from: u64) -> Option<u64> {
    current_frames(seg, from + FRAME_ALIGN as u64)
        .last()
        .map(|h| h.end_lsn())
}

/// Valid frames of the current log (each at its own LSN) at 8-byte-aligned
/// positions from `from` (inclusive) to the end of `seg`.
fn current_frames<F: StorageFile>(
    seg: &Segment<F>,
    from: u64,
) -> impl Iterator<Item = FrameHeader> + '_ {
    (from..)
        .step_by(FRAME_ALIGN)
        .take_while(move |&lsn| lsn + FRAME_HEADER_BYTES as u64 <= seg.end_lsn())
        .filter_map(move |lsn| {
            let magic = bytes_of(seg, lsn, 4);
            if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != FRAME_MAGIC {
                return None;
            }
            valid_frame_at(seg, lsn)
        })
}

/// First valid frame of the current log after `from` in `segments[first..]`.
fn first_current_frame_after<F: StorageFile>(
    segments: &[SegmentRef<F>],
    first: usize,
    from: u64,
) -> Option<u64> {
    segments[first..].iter().find_map(|seg| {
        let start = if seg.contains(from) {
            from + FRAME_ALIGN as u64
        } else {
            seg.base_lsn
        };
        current_frames(seg, start).next().map(|h| h.base_lsn)
    })
}

/// Where the scan stopped: segment index and LSN of the first position
/// that holds no batch (the end of the log if nothing is wrong).
struct Stop {
    idx: usize,
    lsn: u64,
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
        if [CREATE_SUFFIX, TRUNCATE_SUFFIX, SPARE_SUFFIX, FREE_SUFFIX]
            .iter()
            .any(|s| name.ends_with(s))
        {
            // An unfinished creation or truncation, or a spare or free file:
            // never part of the log.
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
    // Each segment's own hint: for a sealed segment, where its batches end
    // (a rollover syncs that before writing the next segment).
    let mut segment_hints = Vec::new();
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
        let hint = crate::log::segment::decode_durable_hint(header)
            // A hint beyond the segment's own end cannot have been written by us.
            .filter(|&h| h <= base + capacity)
            .unwrap_or(0);
        durable_hint = durable_hint.max(hint);
        segment_hints.push(hint);
        if let Some(prev) = segments.last() {
            if prev.end_lsn() != base {
                return Err(OpenError::SegmentGap {
                    file: storage.describe(&name),
                    expected: prev.end_lsn(),
                    found: base,
                });
            }
        }
        segments.push(Arc::new(Segment::new(name, base, capacity, file)));
    }

    if segments.is_empty() {
        let seg =
            create_segment(storage, 0, options.segment_bytes, 0).map_err(|e| OpenError::Io {
                context: e.context,
                source: e.source,
            })?;
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
    let stop = scan(
        &segments,
        &segment_hints,
        &mut last_epoch,
        &mut report.batches,
        &mut report.epochs,
    );
    let end = stop.lsn;
    let seg = segments[stop.idx].clone();
    let at_segment_end = end == seg.end_lsn();
    let next_valid = if at_segment_end {
        first_current_frame_after(&segments, stop.idx + 1, end)
    } else {
        first_current_frame_after(&segments, stop.idx, end)
    };
    if end < durable_hint {
        let reason = if at_segment_end {
            "the next segment does not start with a valid batch".to_string()
        } else {
            describe_non_batch(&seg, end, last_epoch)
        };
        return Err(OpenError::CorruptMidLog {
            file: storage.describe(&seg.name),
            lsn: end,
            reason,
            durable_lsn: durable_hint,
            next_valid_lsn: next_valid,
        });
    }

    let reason = if at_segment_end {
        String::new()
    } else {
        describe_non_batch(&seg, end, last_epoch)
    };
    // Beyond the end: zero what the current log wrote in this segment (a
    // torn batch and any batch after it), and remove later segments.
    let mut cut_to = None;
    if !at_segment_end {
        let torn = torn_frame_at(&seg, end);
        let after = last_current_frame_after(&seg, end);
        if torn || after.is_some() {
            let room = seg.end_lsn() - end;
            let to = after
                .unwrap_or(end)
                .max(end + room.min(FRAME_HEADER_BYTES as u64));
            let zeros = vec![0u8; (to - end) as usize];
            // SAFETY: recovery has exclusive use of the segment; in bounds.
            unsafe { seg.write_log_bytes(end, &zeros) }
                .and_then(|()| seg.sync_log_range(end, to))
                .map_err(io_err(format!(
                    "zeroing torn tail of {}",
                    storage.describe(&seg.name)
                )))?;
            cut_to = Some(to);
        }
    }
    // Later segments go last one first, each removal durable, so a crash
    // part-way never leaves a hole in front of surviving bytes.
    while segments.len() > stop.idx + 1 {
        let later = segments.pop().expect("len > idx + 1");
        let torn = torn_frame_at(&later, later.base_lsn)
            .then_some(later.base_lsn + FRAME_HEADER_BYTES as u64);
        if let Some(to) = last_current_frame_after(&later, later.base_lsn)
            .or_else(|| valid_frame_at(&later, later.base_lsn).map(|h| h.end_lsn()))
            .or(torn)
        {
            cut_to = Some(cut_to.unwrap_or(end).max(to));
        }
        storage.remove(&later.name).map_err(io_err(format!(
            "removing {}",
            storage.describe(&later.name)
        )))?;
        storage
            .sync_dir()
            .map_err(io_err("syncing log directory".into()))?;
        report.removed_files.push(later.name.clone());
    }
    storage
        .sync_dir()
        .map_err(io_err("syncing log directory".into()))?;
    // The scan sealed every segment it moved past; the one it stopped in is
    // the last one now.
    let last = segments.last().expect("at least one segment").clone();
    assert_eq!(last.data_end(), crate::log::segment::DATA_END_OPEN);
    if let Some(to) = cut_to {
        let reason = match next_valid {
            Some(n) if reason.is_empty() => format!(
                "the next segment does not start with a valid batch; batches from LSN {n} were never made durable"
            ),
            Some(n) => format!(
                "{reason}; the batch at LSN {n} after it was never made durable either"
            ),
            None => reason,
        };
        report.cut = Some(TailCut {
            from_lsn: end,
            to_lsn: to.max(end),
            reason,
        });
    }

    // After a process crash the kept bytes may still be only in the page
    // cache; make them durable before calling them hardened.
    for seg in &segments {
        seg.sync_log_range(seg.base_lsn, end)
            .map_err(io_err(format!("syncing {}", storage.describe(&seg.name))))?;
    }
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
/// is not one, sealing each segment that is followed by padding.
fn scan<F: StorageFile>(
    segments: &[SegmentRef<F>],
    segment_hints: &[u64],
    last_epoch: &mut u64,
    batches: &mut u64,
    epochs: &mut Vec<(u64, u64)>,
) -> Stop {
    let mut idx = 0;
    let mut lsn = segments[0].base_lsn;
    loop {
        let seg = &segments[idx];
        if lsn < seg.end_lsn() {
            if let Some(h) = valid_frame_at(seg, lsn).filter(|h| h.epoch >= *last_epoch) {
                if epochs.last().is_none_or(|&(e, _)| e != h.epoch) {
                    epochs.push((h.epoch, lsn));
                }
                *last_epoch = h.epoch;
                *batches += 1;
                lsn = h.end_lsn();
                continue;
            }
        }
        // No batch at `lsn`: the end of the log, unless the rest of this
        // segment is padding before a batch that did not fit here.
        let Some(next) = segments.get(idx + 1) else {
            return Stop { idx, lsn };
        };
        let room = seg.end_lsn() - lsn;
        match valid_frame_at(next, next.base_lsn) {
            // A batch of the current log inside what would be padding means
            // the padding is really a hole (rollover syncs the sealed tail,
            // so a crash cannot make one; damage can).
            Some(h)
                if h.frame_bytes() as u64 > room
                    && h.epoch >= *last_epoch
                    && lsn >= segment_hints[idx]
                    && last_current_frame_after(seg, lsn).is_none() =>
            {
                seg.set_data_end(lsn);
                idx += 1;
                lsn = next.base_lsn;
            }
            _ => return Stop { idx, lsn },
        }
    }
}
