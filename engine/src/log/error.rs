//! One error enum per log operation, each with messages an operator can act on.

use std::io;

use thiserror::Error;

use crate::log::frame::FrameError;

/// Why a log directory could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("invalid log option: {0}")]
    BadOption(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{file}: {reason}; move the file out of the log directory if it does not belong there"
    )]
    BadSegment { file: String, reason: String },
    #[error(
        "log has a gap: segment {file} starts at LSN {found}, but the previous segment ends at LSN {expected}; \
         a segment file is missing"
    )]
    SegmentGap {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "corruption in the log at LSN {lsn} in {file}: {reason}; the log was durable up to at least LSN \
         {durable_lsn}{}, so cutting it here would lose acknowledged data. Restore this node from its mirror \
         or a backup, or move the log aside for salvage",
        match next_valid_lsn { Some(n) => format!(" and a valid batch follows at LSN {n}"), None => String::new() }
    )]
    CorruptMidLog {
        file: String,
        lsn: u64,
        reason: String,
        durable_lsn: u64,
        next_valid_lsn: Option<u64>,
    },
}

/// Why a batch was not appended. Nothing was written when this is returned,
/// except for [`AppendError::Poisoned`], whose cause happened earlier.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("log is poisoned by an earlier failure and accepts no more writes: {0}")]
    Poisoned(String),
    #[error("empty batch: a batch holds at least one record")]
    Empty,
    #[error(
        "batch of {frame_bytes} bytes does not fit in a segment ({capacity} bytes of frame space); \
         commit smaller batches or raise segment_bytes"
    )]
    TooLarge { frame_bytes: usize, capacity: u64 },
    #[error("epoch 0 is reserved for \"no batch\"; epochs start at 1")]
    EpochZero,
    #[error("epoch {got} is older than the log's last epoch {last}")]
    EpochRegression { last: u64, got: u64 },
    #[error("frame does not continue the log: it starts at LSN {got}, the log expects {expected}")]
    UnexpectedLsn { expected: u64, got: u64 },
    #[error("invalid frame: {0}")]
    BadFrame(#[from] FrameError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Whether `e` says the file system is out of space (ENOSPC) or over its
/// quota (EDQUOT): a condition that freeing space cures, unlike EIO.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl AppendError {
    /// The append failed for want of disk space. Unless the log is
    /// poisoned (see `Log::poisoned`), nothing was published and a retry
    /// once space is freed can succeed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, AppendError::Io { source, .. } if is_disk_full(source))
    }
}

/// Why log bytes could not be made durable.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum SyncError {
    #[error("log is poisoned and accepts no more writes: {0}")]
    Poisoned(String),
}

/// Why batches could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("LSN {lsn} was deleted from this log (it starts at LSN {start})")]
    Purged { lsn: u64, start: u64 },
    #[error("LSN {lsn} is beyond the end of the log ({end})")]
    BeyondEnd { lsn: u64, end: u64 },
    #[error("LSN {lsn} is not the start of a batch: {reason}")]
    NotABatch { lsn: u64, reason: String },
    #[error("batch at LSN {lsn} is corrupt: {source}")]
    Corrupt {
        lsn: u64,
        #[source]
        source: FrameError,
    },
}

/// Why the log could not be truncated or trimmed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TruncateError {
    #[error("log is poisoned and accepts no more writes: {0}")]
    Poisoned(String),
    #[error("cannot truncate at LSN {lsn}: {reason}")]
    BadLsn { lsn: u64, reason: String },
    #[error(
        "a group commit runs on this log; truncate through GroupCommit::truncate, which pauses it"
    )]
    InUse,
    #[error("{context}: {source}; the log is poisoned until reopened")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}
