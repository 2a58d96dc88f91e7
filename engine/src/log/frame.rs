//! Batch frames: the unit of log on disk and on the wire.
//!
//! A frame is a fixed 40-byte header, the stored payload, and zero padding up
//! to the next multiple of 8 bytes. The bytes of a frame are identical in the
//! principal's segment, on the wire and in the mirror's segment. Byte layout
//! (all integers little-endian; see docs/format.md):
//!
//! ```text
//! offset size field
//!      0    4 magic          0x4642_4C4D ("MLBF" in file order)
//!      4    2 version        FRAME_VERSION (1)
//!      6    1 codec          0 = none, 1 = zstd
//!      7    1 flags          0 (reserved; a reader rejects anything else)
//!      8    8 epoch          failover generation that wrote the batch
//!     16    8 base_lsn       LSN of the first header byte
//!     24    4 record_count   records in the batch, >= 1
//!     28    4 raw_bytes      payload length after decompression
//!     32    4 stored_bytes   payload length as stored (== raw_bytes for codec none)
//!     36    4 crc32c         CRC32C of bytes [0, 36) followed by the stored payload
//!     40    . payload        stored_bytes bytes
//!      .    . padding        zeros up to frame_bytes = align8(40 + stored_bytes)
//! ```
//!
//! The raw payload is the records back to back, each a `u32` length followed
//! by that many bytes.

use thiserror::Error;

pub const FRAME_MAGIC: u32 = 0x4642_4C4D;
pub const FRAME_VERSION: u16 = 1;
pub const FRAME_HEADER_BYTES: usize = 40;
/// Frames start on 8-byte boundaries so that recovery can search for frames
/// after a damaged one without testing every byte offset.
pub const FRAME_ALIGN: usize = 8;
/// Upper bound on a batch's raw payload. It bounds what a decoder allocates
/// for a hostile header that still passed its checksum.
pub const BATCH_RAW_BYTES_MAX: usize = 64 << 20;
/// Payloads smaller than this are never compressed: zstd's own framing eats
/// the gain and the attempt costs latency.
pub const COMPRESS_BYTES_MIN: usize = 128;
/// Each record is preceded by its length.
pub const RECORD_PREFIX_BYTES: usize = 4;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_CODEC: usize = 6;
const OFF_FLAGS: usize = 7;
const OFF_EPOCH: usize = 8;
const OFF_BASE_LSN: usize = 16;
const OFF_RECORD_COUNT: usize = 24;
const OFF_RAW_BYTES: usize = 28;
const OFF_STORED_BYTES: usize = 32;
const OFF_CRC: usize = 36;

const _: () = assert!(OFF_CRC + 4 == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(BATCH_RAW_BYTES_MAX <= u32::MAX as usize);

/// How a payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Zstd = 1,
}

impl Codec {
    fn from_byte(b: u8) -> Result<Codec, FrameError> {
        match b {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Zstd),
            other => Err(FrameError::UnknownCodec(other)),
        }
    }
}

/// The decoded, validated header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub codec: Codec,
    pub epoch: u64,
    pub base_lsn: u64,
    pub record_count: u32,
    pub raw_bytes: u32,
    pub stored_bytes: u32,
    pub crc32c: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies in the log, padding included.
    pub fn frame_bytes(&self) -> usize {
        frame_bytes_for(self.stored_bytes as usize)
    }

    /// LSN just past this frame.
    pub fn end_lsn(&self) -> u64 {
        self.base_lsn + self.frame_bytes() as u64
    }
}

/// Bytes a frame with `stored_bytes` of payload occupies, padding included.
pub fn frame_bytes_for(stored_bytes: usize) -> usize {
    (FRAME_HEADER_BYTES + stored_bytes).next_multiple_of(FRAME_ALIGN)
}

/// Why bytes are not a valid frame. Every decoder path returns one of these;
/// none panics on arbitrary input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad frame magic {0:#010x} (not a mirrorlog batch, or zeroed space)")]
    BadMagic(u32),
    #[error(
        "frame format version {0} is not supported (this build reads version {FRAME_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("unknown payload codec {0}")]
    UnknownCodec(u8),
    #[error("reserved frame flags are set: {0:#04x}")]
    ReservedFlags(u8),
    #[error("frame lengths are inconsistent: {0}")]
    BadLengths(&'static str),
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("frame payload does not decompress: {0}")]
    Decompress(String),
    #[error("frame records are malformed: {0}")]
    BadRecords(&'static str),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The base LSN a frame's header names, without checking anything (for
/// frames already verified, e.g. views of the log). Panics if `frame` is
/// shorter than a header.
pub fn frame_base_lsn(frame: &[u8]) -> u64 {
    u64_at(frame, OFF_BASE_LSN)
}

/// Decodes and validates a header (not the checksum, which needs the payload).
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: bytes.len(),
        });
    }
    let magic = u32_at(bytes, OFF_MAGIC);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16_at(bytes, OFF_VERSION);
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let codec = Codec::from_byte(bytes[OFF_CODEC])?;
    let flags = bytes[OFF_FLAGS];
    if flags != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    let header = FrameHeader {
        codec,
        epoch: u64_at(bytes, OFF_EPOCH),
        base_lsn: u64_at(bytes, OFF_BASE_LSN),
        record_count: u32_at(bytes, OFF_RECORD_COUNT),
        raw_bytes: u32_at(bytes, OFF_RAW_BYTES),
        stored_bytes: u32_at(bytes, OFF_STORED_BYTES),
        crc32c: u32_at(bytes, OFF_CRC),
    };
    validate_lengths(&header)?;
    Ok(header)
}

/// Length rules every header must satisfy before anything is allocated for
/// it. Checked again by [`decode_records`], whose header may be hand-made.
fn validate_lengths(header: &FrameHeader) -> Result<(), FrameError> {
    let raw = header.raw_bytes as usize;
    let stored = header.stored_bytes as usize;
    if header.record_count == 0 {
        return Err(FrameError::BadLengths("a batch holds at least one record"));
    }
    if raw > BATCH_RAW_BYTES_MAX {
        return Err(FrameError::BadLengths(
            "raw payload exceeds BATCH_RAW_BYTES_MAX",
        ));
    }
    if (header.record_count as usize).saturating_mul(RECORD_PREFIX_BYTES) > raw {
        return Err(FrameError::BadLengths(
            "record count exceeds what raw payload can hold",
        ));
    }
    match header.codec {
        Codec::None if stored != raw => {
            return Err(FrameError::BadLengths(
                "uncompressed payload with stored != raw",
            ))
        }
        // The encoder only keeps a compressed payload that is smaller.
        Codec::Zstd if stored >= raw => {
            return Err(FrameError::BadLengths(
                "compressed payload not smaller than raw",
            ))
        }
        _ => {}
    }
    if !header.base_lsn.is_multiple_of(FRAME_ALIGN as u64) {
        return Err(FrameError::BadLengths("base LSN is not 8-byte aligned"));
    }
    if header
        .base_lsn
        .checked_add(header.frame_bytes() as u64)
        .is_none()
    {
        return Err(FrameError::BadLengths("frame end LSN overflows u64"));
    }
    Ok(())
}

fn checksum(header_prefix: &[u8], payload: &[u8]) -> u32 {
    debug_assert_eq!(header_prefix.len(), OFF_CRC);
    crc32c::crc32c_append(crc32c::crc32c(header_prefix), payload)
}

/// Validates a whole frame at the start of `bytes` (header, lengths and
/// checksum) and returns its header and stored payload. Trailing bytes after
/// the frame are ignored; padding bytes are not checked.
pub fn check_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    let header = decode_header(bytes)?;
    let payload_end = FRAME_HEADER_BYTES + header.stored_bytes as usize;
    if bytes.len() < payload_end {
        return Err(FrameError::Truncated {
            needed: payload_end,
            available: bytes.len(),
        });
    }
    let payload = &bytes[FRAME_HEADER_BYTES..payload_end];
    let computed = checksum(&bytes[..OFF_CRC], payload);
    if computed != header.crc32c {
        return Err(FrameError::BadChecksum {
            stored: header.crc32c,
            computed,
        });
    }
    Ok((header, payload))
}

/// Records being gathered into one batch: the raw payload, built in place.
#[derive(Default, Clone, Debug)]
pub struct RecordsBuf {
    raw: Vec<u8>,
    count: u32,
}

impl RecordsBuf {
    pub fn new() -> RecordsBuf {
        RecordsBuf::default()
    }

    pub fn with_capacity(bytes: usize) -> RecordsBuf {
        RecordsBuf {
            raw: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Bytes a record adds to the raw payload.
    pub fn cost(record: &[u8]) -> usize {
        RECORD_PREFIX_BYTES + record.len()
    }

    /// Appends one record. The caller keeps the total under
    /// [`BATCH_RAW_BYTES_MAX`]; the log refuses larger batches.
    pub fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).expect("record length fits u32 (checked by callers)");
        self.raw.extend_from_slice(&len.to_le_bytes());
        self.raw.extend_from_slice(record);
        self.count += 1;
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn raw_bytes(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn clear(&mut self) {
        self.raw.clear();
        self.count = 0;
    }
}

/// Compression setting for new batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    Off,
    /// zstd at this level, kept only when the result is smaller.
    Zstd(i32),
}

/// Encodes batches; holds a reusable zstd context and scratch buffer.
pub struct Encoder {
    compression: Compression,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    /// Consecutive batches that did not shrink. After a run of them we only
    /// try every `INCOMPRESSIBLE_RETRY_EVERY`-th batch, so incompressible
    /// workloads do not pay for a failed compression on every commit.
    incompressible_streak: u32,
}

const INCOMPRESSIBLE_STREAK_MAX: u32 = 8;
const INCOMPRESSIBLE_RETRY_EVERY: u32 = 16;

/// A payload ready to be framed: which codec and the stored bytes.
pub struct Payload<'a> {
    pub codec: Codec,
    pub stored: &'a [u8],
    pub raw_bytes: u32,
    pub record_count: u32,
}

impl Encoder {
    pub fn new(compression: Compression) -> std::io::Result<Encoder> {
        let compressor = match compression {
            Compression::Off => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
        };
        Ok(Encoder {
            compression,
            compressor,
            scratch: Vec::new(),
            incompressible_streak: 0,
        })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Chooses the stored form of `records`: compressed if that is smaller.
    pub fn payload<'a>(&'a mut self, records: &'a RecordsBuf) -> Payload<'a> {
        let raw = records.raw();
        assert!(
            raw.len() <= BATCH_RAW_BYTES_MAX,
            "batch exceeds BATCH_RAW_BYTES_MAX"
        );
        assert!(records.count() > 0, "empty batch");
        let plain = Payload {
            codec: Codec::None,
            stored: raw,
            raw_bytes: raw.len() as u32,
            record_count: records.count(),
        };
        let Some(compressor) = self.compressor.as_mut() else {
            return plain;
        };
        if raw.len() < COMPRESS_BYTES_MIN {
            return plain;
        }
        if self.incompressible_streak >= INCOMPRESSIBLE_STREAK_MAX {
            self.incompressible_streak = self.incompressible_streak.saturating_add(1);
            if !self
                .incompressible_streak
                .is_multiple_of(INCOMPRESSIBLE_RETRY_EVERY)
            {
                return plain;
            }
        }
        // Room for about raw bytes: if zstd needs more, compress_to_buffer
        // reports an error, which here simply means "store it plain"; a
        // result that fits but is not smaller is refused by the filter.
        self.scratch.clear();
        self.scratch.reserve(raw.len());
        let fits = compressor
            .compress_to_buffer(raw, &mut self.scratch)
            .ok()
            .filter(|&n| n < raw.len());
        match fits {
            Some(n) => {
                self.incompressible_streak = 0;
                Payload {
                    codec: Codec::Zstd,
                    stored: &self.scratch[..n],
                    raw_bytes: raw.len() as u32,
                    record_count: records.count(),
                }
            }
            None => {
                self.incompressible_streak = self.incompressible_streak.saturating_add(1);
                plain
            }
        }
    }
}

/// Writes the 40 header bytes for `payload` at `base_lsn` into `out`.
pub fn encode_header(
    epoch: u64,
    base_lsn: u64,
    payload: &Payload<'_>,
    out: &mut [u8; FRAME_HEADER_BYTES],
) {
    assert!(
        base_lsn.is_multiple_of(FRAME_ALIGN as u64),
        "frame base LSN must be aligned"
    );
    out[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&FRAME_VERSION.to_le_bytes());
    out[OFF_CODEC] = payload.codec as u8;
    out[OFF_FLAGS] = 0;
    out[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&epoch.to_le_bytes());
    out[OFF_BASE_LSN..OFF_BASE_LSN + 8].copy_from_slice(&base_lsn.to_le_bytes());
    out[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4]
        .copy_from_slice(&payload.record_count.to_le_bytes());
    out[OFF_RAW_BYTES..OFF_RAW_BYTES + 4].copy_from_slice(&payload.raw_bytes.to_le_bytes());
    let stored = u32::try_from(payload.stored.len()).expect("stored payload fits u32");
    out[OFF_STORED_BYTES..OFF_STORED_BYTES + 4].copy_from_slice(&stored.to_le_bytes());
    let crc = checksum(&out[..OFF_CRC], payload.stored);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a whole frame (header, payload, padding) into a new vector.
/// The log writes frames in place instead; this is for tests and tools.
pub fn encode_frame(epoch: u64, base_lsn: u64, payload: &Payload<'_>) -> Vec<u8> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    encode_header(epoch, base_lsn, payload, &mut header);
    let mut out = Vec::with_capacity(frame_bytes_for(payload.stored.len()));
    out.extend_from_slice(&header);
    out.extend_from_slice(payload.stored);
    out.resize(frame_bytes_for(payload.stored.len()), 0);
    out
}

/// The raw payload of a batch, decompressed if needed, with its records
/// validated: `record_count` records whose lengths add up to `raw_bytes`.
pub fn decode_records(header: &FrameHeader, stored: &[u8]) -> Result<Records, FrameError> {
    validate_lengths(header)?;
    if stored.len() != header.stored_bytes as usize {
        return Err(FrameError::BadLengths(
            "stored payload length differs from header",
        ));
    }
    let raw = match header.codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd => {
            // raw_bytes was bounded by decode_header, so this allocation is too.
            let mut out = Vec::with_capacity(header.raw_bytes as usize);
            let mut d = zstd::bulk::Decompressor::new()
                .map_err(|e| FrameError::Decompress(e.to_string()))?;
            d.decompress_to_buffer(stored, &mut out)
                .map_err(|e| FrameError::Decompress(e.to_string()))?;
            if out.len() != header.raw_bytes as usize {
                return Err(FrameError::Decompress(format!(
                    "decompressed to {} bytes, header says {}",
                    out.len(),
                    header.raw_bytes
                )));
            }
            out
        }
    };
    validate_records(&raw, header.record_count)?;
    Ok(Records { raw })
}

fn validate_records(raw: &[u8], count: u32) -> Result<(), FrameError> {
    let mut off = 0usize;
    for _ in 0..count {
        if raw.len() - off < RECORD_PREFIX_BYTES {
            return Err(FrameError::BadRecords(
                "record length prefix runs past payload",
            ));
        }
        let len = u32_at(raw, off) as usize;
        off += RECORD_PREFIX_BYTES;
        if raw.len() - off < len {
            return Err(FrameError::BadRecords("record runs past payload"));
        }
        off += len;
    }
    if off != raw.len() {
        return Err(FrameError::BadRecords(
            "bytes left over after the last record",
        ));
    }
    Ok(())
}

/// The validated records of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records {
    raw: Vec<u8>,
}

impl Records {
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter { rest: &self.raw }
    }
}

/// Iterates records of a validated raw payload.
pub struct RecordIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // Validated by validate_records: every prefix and body is in bounds.
        let len = u32_at(self.rest, 0) as usize;
        let record = &self.rest[RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + len];
        self.rest = &self.rest[RECORD_PREFIX_BYTES + len..];
        Some(record)
    }
}

/// Why the log bytes starting at `lsn` (`bytes`, up to the segment end) hold
/// no batch of the current log, in words for reports: zeros, a stale frame
/// of another LSN (a recycled segment file), an epoch going back, or damage.
/// Shared by recovery and `mirrorlog inspect-log`.
pub fn describe_non_batch(bytes: &[u8], lsn: u64, last_epoch: u64) -> String {
    if bytes.is_empty() {
        return "end of the segment".into();
    }
    if bytes[..bytes.len().min(FRAME_HEADER_BYTES)]
        .iter()
        .all(|&b| b == 0)
    {
        return "zeroed space".into();
    }
    match check_frame(bytes) {
        Ok((h, _)) if h.base_lsn != lsn => {
            format!(
                "a stale batch of LSN {} (recycled or misplaced)",
                h.base_lsn
            )
        }
        Ok((h, _)) if h.epoch < last_epoch => {
            format!("a batch of epoch {} after epoch {last_epoch}", h.epoch)
        }
        Ok(_) => "a batch running past the segment end".into(),
        Err(e) => format!("torn or corrupt batch: {e}"),
    }
}

/// Decodes one whole frame from arbitrary bytes: the fuzz target's body.
/// Returns the header and records, or an error; never panics.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, Records), FrameError> {
    let (header, payload) = check_frame(bytes)?;
    let records = decode_records(&header, payload)?;
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(items: &[&[u8]]) -> RecordsBuf {
        let mut r = RecordsBuf::new();
        for i in items {
            r.push(i);
        }
        r
    }

    #[test]
    fn compressible_batch_is_stored_compressed_and_round_trips() {
        let big = vec![b'a'; 4000];
        let r = records(&[&big, b"x", &big]);
        let mut enc = Encoder::new(Compression::Zstd(1)).unwrap();
        let p = enc.payload(&r);
        assert_eq!(p.codec, Codec::Zstd);
        assert!(p.stored.len() < r.raw_bytes());
        let frame = encode_frame(3, 64, &p);
        assert_eq!(frame.len() % FRAME_ALIGN, 0);
        let (h, recs) = decode_frame(&frame).unwrap();
        assert_eq!((h.epoch, h.base_lsn, h.record_count), (3, 64, 3));
        assert_eq!(h.end_lsn(), 64 + frame.len() as u64);
        let got: Vec<&[u8]> = recs.iter().collect();
        assert_eq!(got, vec![&big[..], b"x", &big[..]]);
    }

    #[test]
    fn small_batch_is_stored_plain() {
        let r = records(&[b"hello"]);
        let mut enc = Encoder::new(Compression::Zstd(1)).unwrap();
        let p = enc.payload(&r);
        assert_eq!(p.codec, Codec::None);
        assert_eq!(p.stored, r.raw());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let r = records(&[b"some record", b"another one"]);
        let mut enc = Encoder::new(Compression::Off).unwrap();
        let frame = encode_frame(1, 8, &enc.payload(&r));
        let payload_end = FRAME_HEADER_BYTES + r.raw_bytes();
        for byte in 0..payload_end {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[byte] ^= 1 << bit;
                assert!(
                    decode_frame(&f).is_err(),
                    "flip of byte {byte} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn header_claiming_huge_raw_size_is_refused_before_allocation() {
        let r = records(&[b"abc"]);
        let mut enc = Encoder::new(Compression::Off).unwrap();
        let mut frame = encode_frame(1, 0, &enc.payload(&r));
        frame[OFF_RAW_BYTES..OFF_RAW_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_header(&frame),
            Err(FrameError::BadLengths(_))
        ));
    }

    #[test]
    fn decode_records_rechecks_a_hand_made_header_before_allocating() {
        let header = FrameHeader {
            codec: Codec::Zstd,
            epoch: 1,
            base_lsn: 0,
            record_count: 1,
            raw_bytes: u32::MAX,
            stored_bytes: 3,
            crc32c: 0,
        };
        assert!(matches!(
            decode_records(&header, b"abc"),
            Err(FrameError::BadLengths(_))
        ));
        let plain = FrameHeader {
            codec: Codec::None,
            raw_bytes: 10,
            ..header
        };
        assert!(matches!(
            decode_records(&plain, b"abc"),
            Err(FrameError::BadLengths(_))
        ));
    }

    #[test]
    fn incompressible_streak_skips_compression_then_retries() {
        let mut seed = 1u64;
        let mut noise = vec![0u8; 1024];
        let mut enc = Encoder::new(Compression::Zstd(1)).unwrap();
        for i in 0..40 {
            for b in noise.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (seed >> 56) as u8;
            }
            let r = records(&[&noise]);
            assert_eq!(enc.payload(&r).codec, Codec::None, "batch {i}");
        }
        // A compressible batch is compressed again within the retry window.
        let mut compressed = false;
        for _ in 0..INCOMPRESSIBLE_RETRY_EVERY {
            let r = records(&[&[7u8; 2048]]);
            compressed |= enc.payload(&r).codec == Codec::Zstd;
        }
        assert!(compressed);
    }
}
