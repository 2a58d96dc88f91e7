//! Segment files: fixed-size, preallocated, named by their base LSN.
//!
//! A segment file is a 64-byte header followed by `capacity` bytes of frame
//! space. LSN `base + i` lives at file offset `SEGMENT_HEADER_BYTES + i`; the
//! next segment's base is `base + capacity`. Byte layout (little-endian; see
//! docs/format.md):
//!
//! ```text
//! offset size field
//!      0    8 magic       b"MLOGSEG\0"
//!      8    4 version     SEGMENT_VERSION (1)
//!     12    4 crc32c      CRC32C of bytes [0, 12) followed by [16, 32)
//!     16    8 base_lsn    LSN of the first byte of frame space
//!     24    8 capacity    bytes of frame space (file length - 64)
//!     32    8 durable_lsn hint: every log byte below it was durable when written
//!     40    4 hint_crc    CRC32C of bytes [32, 40); a bad one means "no hint"
//!     44   20 reserved    zeros
//!     64    . frames      frames back to back; zeros after the last one
//! ```
//!
//! The durable-LSN hint is rewritten (in the map, not synced) after every
//! successful sync and synced on close. It may reach the disk late or not at
//! all, but it never claims more than was durable, so recovery can tell
//! damage to acknowledged data (below the hint: an error) from a torn,
//! never-acknowledged tail (at or above it: cut). It is node-local; the
//! frame space is what partners keep byte-identical.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::frame::FRAME_ALIGN;
use crate::log::storage::StorageFile;

pub const SEGMENT_MAGIC: [u8; 8] = *b"MLOGSEG\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const SEGMENT_SUFFIX: &str = ".mlseg";
/// Segment files are whole pages so that msync ranges never straddle files.
pub const PAGE_BYTES: usize = 4096;
pub const SEGMENT_BYTES_MIN: usize = 2 * PAGE_BYTES;
pub const SEGMENT_BYTES_MAX: usize = 1 << 32;
pub const SEGMENT_BYTES_DEFAULT: usize = 64 << 20;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(PAGE_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN > SEGMENT_HEADER_BYTES);

/// The file name of the segment starting at `base_lsn`: 20 zero-padded
/// decimal digits, so names sort in LSN order.
pub fn segment_name(base_lsn: u64) -> String {
    format!("{base_lsn:020}{SEGMENT_SUFFIX}")
}

/// The base LSN a segment file name claims, if the name is one of ours.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File offset of the durable-LSN hint and its length (value + CRC).
pub const DURABLE_HINT_OFFSET: usize = 32;
pub const DURABLE_HINT_BYTES: usize = 12;

pub fn encode_segment_header(
    base_lsn: u64,
    capacity: u64,
    durable_lsn: u64,
) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_lsn.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    let crc = header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h[DURABLE_HINT_OFFSET..DURABLE_HINT_OFFSET + DURABLE_HINT_BYTES]
        .copy_from_slice(&encode_durable_hint(durable_lsn));
    h
}

fn header_crc(h: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[0..12]), &h[16..32])
}

pub fn encode_durable_hint(lsn: u64) -> [u8; DURABLE_HINT_BYTES] {
    let mut b = [0u8; DURABLE_HINT_BYTES];
    b[0..8].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..8]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The hint in a segment header, if its checksum holds.
pub fn decode_durable_hint(h: &[u8]) -> Option<u64> {
    let b = h.get(DURABLE_HINT_OFFSET..DURABLE_HINT_OFFSET + DURABLE_HINT_BYTES)?;
    let lsn = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    (crc == crc32c::crc32c(&b[0..8])).then_some(lsn)
}

/// Validates a segment header; returns (base_lsn, capacity) or why not.
pub fn decode_segment_header(h: &[u8]) -> Result<(u64, u64), String> {
    if h.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than a segment header",
            h.len()
        ));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad magic: this is not a mirrorlog segment file".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads version {SEGMENT_VERSION})"
        ));
    }
    let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let computed = header_crc(h);
    if stored != computed {
        return Err(format!(
            "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let base = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let capacity = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
    Ok((base, capacity))
}

/// One open segment. Shared (`Arc`) between the log and any reader holding a
/// view into it, so deleting or replacing a segment never unmaps bytes a
/// reader is looking at.
pub struct Segment<F> {
    pub name: String,
    pub base_lsn: u64,
    pub capacity: u64,
    pub file: F,
    /// Where this segment's batches end once a later segment exists (the
    /// rest is padding, whatever bytes it holds: zeros, or stale frames of a
    /// recycled file). `u64::MAX` while it is the last segment.
    data_end: AtomicU64,
}

/// `data_end` of the last segment.
pub const DATA_END_OPEN: u64 = u64::MAX;

impl<F: StorageFile> Segment<F> {
    pub fn new(name: String, base_lsn: u64, capacity: u64, file: F) -> Segment<F> {
        Segment {
            name,
            base_lsn,
            capacity,
            file,
            data_end: AtomicU64::new(DATA_END_OPEN),
        }
    }

    pub fn data_end(&self) -> u64 {
        self.data_end.load(Ordering::Acquire)
    }

    /// Seals the segment at `lsn` (a later segment follows), or reopens it
    /// with [`DATA_END_OPEN`] (it is the last again, after a truncation).
    pub fn set_data_end(&self, lsn: u64) {
        assert!(
            lsn == DATA_END_OPEN || (lsn >= self.base_lsn && lsn <= self.end_lsn()),
            "data end {lsn} outside segment {}",
            self.name
        );
        self.data_end.store(lsn, Ordering::Release);
    }

    pub fn end_lsn(&self) -> u64 {
        self.base_lsn + self.capacity
    }

    pub fn contains(&self, lsn: u64) -> bool {
        lsn >= self.base_lsn && lsn < self.end_lsn()
    }

    /// File offset of `lsn`, which must be inside `[base, end]`.
    pub fn offset_of(&self, lsn: u64) -> usize {
        assert!(
            lsn >= self.base_lsn && lsn <= self.end_lsn(),
            "LSN {lsn} outside segment {}",
            self.name
        );
        SEGMENT_HEADER_BYTES + (lsn - self.base_lsn) as usize
    }

    /// Borrows the log bytes `[lsn, lsn + len)`.
    ///
    /// # Safety
    /// Nobody may write that range while the slice lives: callers only read
    /// below the log's published written LSN, which appends never rewrite.
    pub unsafe fn log_bytes(&self, lsn: u64, len: usize) -> &[u8] {
        let off = self.offset_of(lsn);
        assert!(lsn + len as u64 <= self.end_lsn(), "read past segment end");
        // SAFETY: bounds asserted above; exclusivity is the caller's promise.
        unsafe { self.file.bytes(off, len) }
    }

    /// Copies `data` to LSN `lsn`.
    ///
    /// # Safety
    /// The caller is the only writer and no reader looks at the range.
    pub unsafe fn write_log_bytes(&self, lsn: u64, data: &[u8]) -> std::io::Result<()> {
        let off = self.offset_of(lsn);
        assert!(
            lsn + data.len() as u64 <= self.end_lsn(),
            "write past segment end"
        );
        // SAFETY: bounds asserted above; exclusivity is the caller's promise.
        unsafe { self.file.write(off, data) }
    }

    /// Records in the header (unsynced) that every log byte below `lsn` is
    /// durable.
    ///
    /// # Safety
    /// The caller is the only writer of the header (the log's sync lock).
    pub unsafe fn write_durable_hint(&self, lsn: u64) -> std::io::Result<()> {
        // SAFETY: the hint lies inside the header, which readers never read;
        // exclusivity among writers is the caller's promise.
        unsafe {
            self.file
                .write(DURABLE_HINT_OFFSET, &encode_durable_hint(lsn))
        }
    }

    pub fn sync_header(&self) -> std::io::Result<()> {
        self.file.sync(0, SEGMENT_HEADER_BYTES)
    }

    /// Makes log bytes `[from, to)` of this segment durable.
    pub fn sync_log_range(&self, from: u64, to: u64) -> std::io::Result<()> {
        let from = from.max(self.base_lsn);
        let to = to.min(self.end_lsn());
        if from >= to {
            return Ok(());
        }
        self.file.sync(self.offset_of(from), (to - from) as usize)
    }
}

pub type SegmentRef<F> = Arc<Segment<F>>;
