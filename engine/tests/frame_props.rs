//! Property tests for the batch-frame codec (`log::frame`): round trips over
//! arbitrary batches, and "never panics" over arbitrary and mutated bytes.
//!
//! `fuzz_body` is the same body as the cargo-fuzz target in
//! `engine/fuzz/fuzz_targets/frame_decode.rs`; keep the two in step.

use mirrorlog_engine::log::frame::{
    decode_frame, decode_header, encode_frame, Codec, Compression, Encoder, FrameError,
    FrameHeader, Payload, Records, RecordsBuf, BATCH_RAW_BYTES_MAX, COMPRESS_BYTES_MIN,
    FRAME_ALIGN, FRAME_HEADER_BYTES, RECORD_PREFIX_BYTES,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------
// Allocation tracking: lets tests assert that hostile headers do not make the
// decoder allocate more than BATCH_RAW_BYTES_MAX in one go.

struct TrackingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
}
static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);

impl TrackingAlloc {
    fn note(size: usize) {
        if TRACKING.try_with(Cell::get).unwrap_or(false) {
            LARGEST_ALLOC.fetch_max(size, Ordering::Relaxed);
        }
    }
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: TrackingAlloc = TrackingAlloc;

/// Runs `f` and returns the largest single allocation it made on this thread.
/// Tests that track run under a lock so the shared maximum is theirs alone.
fn largest_alloc_during(f: impl FnOnce()) -> usize {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST_ALLOC.store(0, Ordering::Relaxed);
    TRACKING.with(|t| t.set(true));
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            TRACKING.with(|t| t.set(false));
        }
    }
    let stop = Stop;
    f();
    drop(stop);
    LARGEST_ALLOC.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Header offsets (docs: module comment of log/frame.rs).

const OFF_VERSION: usize = 4;
const OFF_CODEC: usize = 6;
const OFF_EPOCH: usize = 8;
const OFF_BASE_LSN: usize = 16;
const OFF_RECORD_COUNT: usize = 24;
const OFF_RAW_BYTES: usize = 28;
const OFF_STORED_BYTES: usize = 32;
const OFF_CRC: usize = 36;

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites the CRC of a (possibly mutated) frame so that it covers bytes
/// [0, 36) followed by `stored_bytes` of payload, as the header claims. Does
/// nothing when the bytes are too short to hold that payload.
fn fix_crc(b: &mut [u8]) {
    if b.len() < FRAME_HEADER_BYTES {
        return;
    }
    let stored = get_u32(b, OFF_STORED_BYTES) as usize;
    let Some(end) = FRAME_HEADER_BYTES.checked_add(stored) else {
        return;
    };
    if b.len() < end {
        return;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..OFF_CRC]), &b[FRAME_HEADER_BYTES..end]);
    put_u32(b, OFF_CRC, crc);
}

// ---------------------------------------------------------------------------
// The fuzz body (same as engine/fuzz/fuzz_targets/frame_decode.rs).

/// Decodes arbitrary bytes as a frame. Must never panic; when decoding
/// succeeds, the header and records must be consistent with each other and
/// with the input bytes.
fn fuzz_body(data: &[u8]) {
    let Ok((header, records)) = decode_frame(data) else {
        return;
    };
    check_decoded(data, &header, &records);
}

fn check_decoded(data: &[u8], header: &FrameHeader, records: &Records) {
    // The header decode_frame returned is the one decode_header sees.
    assert_eq!(decode_header(data).as_ref(), Ok(header));
    let stored = header.stored_bytes as usize;
    assert!(data.len() >= FRAME_HEADER_BYTES + stored);
    assert!(header.record_count >= 1);
    assert!(header.raw_bytes as usize <= BATCH_RAW_BYTES_MAX);
    assert_eq!(header.base_lsn % FRAME_ALIGN as u64, 0);
    assert_eq!(header.frame_bytes() % FRAME_ALIGN, 0);
    assert!(header.frame_bytes() >= FRAME_HEADER_BYTES + stored);
    assert!(header
        .base_lsn
        .checked_add(header.frame_bytes() as u64)
        .is_some());
    match header.codec {
        Codec::None => assert_eq!(header.stored_bytes, header.raw_bytes),
        Codec::Zstd => assert!(header.stored_bytes < header.raw_bytes),
    }

    // The records account for exactly raw_bytes and record_count.
    let mut count = 0u64;
    let mut sum = 0u64;
    let mut rebuilt = RecordsBuf::new();
    for r in records.iter() {
        count += 1;
        sum += (RECORD_PREFIX_BYTES + r.len()) as u64;
        rebuilt.push(r);
    }
    assert_eq!(count, u64::from(header.record_count));
    assert_eq!(sum, u64::from(header.raw_bytes));
    assert_eq!(rebuilt.count(), header.record_count);
    assert_eq!(rebuilt.raw_bytes(), header.raw_bytes as usize);
    let payload = &data[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + stored];
    if header.codec == Codec::None {
        assert_eq!(rebuilt.raw(), payload);
    }

    // Re-framing the same stored payload reproduces the input bytes exactly.
    let same = Payload {
        codec: header.codec,
        stored: payload,
        raw_bytes: header.raw_bytes,
        record_count: header.record_count,
    };
    let again = encode_frame(header.epoch, header.base_lsn, &same);
    assert_eq!(again.len(), header.frame_bytes());
    assert_eq!(
        &again[..FRAME_HEADER_BYTES + stored],
        &data[..FRAME_HEADER_BYTES + stored]
    );

    // Re-encoding the records plainly gives a frame that decodes to them.
    let mut enc = Encoder::new(Compression::Off).unwrap();
    let plain = encode_frame(header.epoch, header.base_lsn, &enc.payload(&rebuilt));
    let (h2, r2) = decode_frame(&plain).expect("re-encoded frame decodes");
    assert_eq!(
        (h2.record_count, h2.raw_bytes),
        (header.record_count, header.raw_bytes)
    );
    assert_eq!(&r2, records);
}

// ---------------------------------------------------------------------------
// Strategies.

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Incompressible.
        prop::collection::vec(any::<u8>(), 0..2000),
        // One repeated byte.
        (any::<u8>(), 0..2000usize).prop_map(|(b, n)| vec![b; n]),
        // A short repeated pattern.
        (prop::collection::vec(any::<u8>(), 1..8), 0..2000usize).prop_map(|(p, n)| p
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()),
        // Mostly one byte with random bytes sprinkled in.
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..2000)).prop_map(|(b, v)| v
            .into_iter()
            .map(|x| if x % 8 == 0 { x } else { b })
            .collect()),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(record(), 1..50)
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::Off),
        Just(Compression::Zstd(1)),
        Just(Compression::Zstd(3)),
    ]
}

/// 8-aligned and below 2^60.
fn base_lsn() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), (0u64..(1 << 57)).prop_map(|x| x * 8)]
}

fn records_buf(items: &[Vec<u8>]) -> RecordsBuf {
    let mut r = RecordsBuf::new();
    for i in items {
        r.push(i);
    }
    r
}

/// A valid frame of an arbitrary batch, plain or compressed.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (batch(), compression(), any::<u64>(), base_lsn()).prop_map(|(items, c, epoch, base)| {
        let r = records_buf(&items);
        let mut enc = Encoder::new(c).unwrap();
        encode_frame(epoch, base, &enc.payload(&r))
    })
}

/// A u32 header value: arbitrary, small, near a limit, or near the old value.
#[derive(Clone, Debug)]
enum U32Value {
    Any(u32),
    Small(u32),
    Limit(u32),
    Near(i16),
}

fn u32_value() -> impl Strategy<Value = U32Value> {
    prop_oneof![
        any::<u32>().prop_map(U32Value::Any),
        (0u32..4096).prop_map(U32Value::Small),
        prop_oneof![
            Just(u32::MAX),
            Just(u32::MAX - 1),
            Just(BATCH_RAW_BYTES_MAX as u32),
            Just(BATCH_RAW_BYTES_MAX as u32 + 1),
            Just(BATCH_RAW_BYTES_MAX as u32 - 1),
            Just(u32::MAX / 4),
            Just(u32::MAX / 4 + 1),
        ]
        .prop_map(U32Value::Limit),
        (-16i16..=16).prop_map(U32Value::Near),
    ]
}

impl U32Value {
    fn resolve(&self, old: u32) -> u32 {
        match *self {
            U32Value::Any(v) | U32Value::Small(v) | U32Value::Limit(v) => v,
            U32Value::Near(d) => old.wrapping_add_signed(i32::from(d)),
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte (anywhere) with a non-zero value.
    Flip(Index, u8),
    /// Cut the bytes at some length.
    Truncate(Index),
    /// Append junk.
    Extend(Vec<u8>),
    /// Overwrite a u32 header field (record_count, raw_bytes, stored_bytes,
    /// magic or crc).
    HeaderU32(Index, U32Value),
    /// Overwrite epoch or base_lsn.
    HeaderU64(bool, u64),
    /// Overwrite one of the version/codec/flags bytes with a small value.
    HeaderByte(Index, u8),
    /// Overwrite a u32 anywhere in the bytes (hits record length prefixes).
    AnyU32(Index, U32Value),
    /// Replace the payload by arbitrary bytes, fixing stored_bytes (and
    /// raw_bytes for an uncompressed frame).
    Payload(Vec<u8>),
    /// Replace the payload by the zstd compression of `records` (plus junk),
    /// with header lengths off by small deltas.
    Zstd {
        records: Vec<Vec<u8>>,
        junk: Vec<u8>,
        count_delta: i8,
        raw_delta: i8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let small_record = prop_oneof![
        (any::<u8>(), 0..300usize).prop_map(|(b, n)| vec![b; n]),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        4 => (any::<Index>(), u32_value()).prop_map(|(i, v)| Mutation::HeaderU32(i, v)),
        1 => (any::<bool>(), any::<u64>()).prop_map(|(b, v)| Mutation::HeaderU64(b, v)),
        1 => (any::<Index>(), 0u8..4).prop_map(|(i, v)| Mutation::HeaderByte(i, v)),
        2 => (any::<Index>(), u32_value()).prop_map(|(i, v)| Mutation::AnyU32(i, v)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Mutation::Payload),
        2 => (
            prop::collection::vec(small_record, 1..8),
            prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..8)],
            prop_oneof![3 => Just(0i8), 1 => -2i8..=2],
            prop_oneof![3 => Just(0i8), 1 => -8i8..=8],
        )
            .prop_map(|(records, junk, count_delta, raw_delta)| Mutation::Zstd {
                records,
                junk,
                count_delta,
                raw_delta,
            }),
    ]
}

const HEADER_U32_FIELDS: [usize; 5] = [
    OFF_RECORD_COUNT,
    OFF_RAW_BYTES,
    OFF_STORED_BYTES,
    0,
    OFF_CRC,
];

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let has_header = b.len() >= FRAME_HEADER_BYTES;
    match m {
        Mutation::Flip(i, x) if !b.is_empty() => {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        Mutation::Truncate(i) => {
            let len = i.index(b.len() + 1);
            b.truncate(len);
        }
        Mutation::Extend(junk) => b.extend_from_slice(junk),
        Mutation::HeaderU32(i, v) if has_header => {
            let off = HEADER_U32_FIELDS[i.index(HEADER_U32_FIELDS.len())];
            let old = get_u32(b, off);
            put_u32(b, off, v.resolve(old));
        }
        Mutation::HeaderU64(epoch, v) if has_header => {
            put_u64(b, if *epoch { OFF_EPOCH } else { OFF_BASE_LSN }, *v);
        }
        Mutation::HeaderByte(i, v) if has_header => {
            let off = OFF_VERSION + i.index(4);
            b[off] = *v;
        }
        Mutation::AnyU32(i, v) if b.len() >= 4 => {
            let off = i.index(b.len() - 3);
            let old = get_u32(b, off);
            put_u32(b, off, v.resolve(old));
        }
        Mutation::Payload(p) if has_header => {
            b.truncate(FRAME_HEADER_BYTES);
            b.extend_from_slice(p);
            put_u32(b, OFF_STORED_BYTES, p.len() as u32);
            if b[OFF_CODEC] == Codec::None as u8 {
                put_u32(b, OFF_RAW_BYTES, p.len() as u32);
            }
            b.resize(b.len().next_multiple_of(FRAME_ALIGN), 0);
        }
        Mutation::Zstd {
            records,
            junk,
            count_delta,
            raw_delta,
        } if has_header => {
            let mut raw = records_buf(records).raw().to_vec();
            raw.extend_from_slice(junk);
            let z = zstd::bulk::compress(&raw, 1).unwrap();
            b.truncate(FRAME_HEADER_BYTES);
            b.extend_from_slice(&z);
            b[OFF_CODEC] = Codec::Zstd as u8;
            let count = (records.len() as u32).wrapping_add_signed(i32::from(*count_delta));
            let raw_bytes = (raw.len() as u32).wrapping_add_signed(i32::from(*raw_delta));
            put_u32(b, OFF_RECORD_COUNT, count);
            put_u32(b, OFF_RAW_BYTES, raw_bytes);
            put_u32(b, OFF_STORED_BYTES, z.len() as u32);
            b.resize(b.len().next_multiple_of(FRAME_ALIGN), 0);
        }
        // Mutations that need more bytes than there are.
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_preserves_header_and_records(
        items in batch(),
        c in compression(),
        epoch in any::<u64>(),
        base in base_lsn(),
        trailing in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let r = records_buf(&items);
        let mut enc = Encoder::new(c).unwrap();
        let p = enc.payload(&r);
        let (codec, stored_len) = (p.codec, p.stored.len());
        if c == Compression::Off {
            prop_assert_eq!(codec, Codec::None);
        }
        let frame = encode_frame(epoch, base, &p);

        prop_assert_eq!(frame.len() % FRAME_ALIGN, 0);
        prop_assert!(frame[FRAME_HEADER_BYTES + stored_len..].iter().all(|&b| b == 0));

        let (h, recs) = decode_frame(&frame).unwrap();
        prop_assert_eq!(h.codec, codec);
        prop_assert_eq!(h.epoch, epoch);
        prop_assert_eq!(h.base_lsn, base);
        prop_assert_eq!(h.record_count as usize, items.len());
        prop_assert_eq!(h.raw_bytes as usize, r.raw_bytes());
        prop_assert_eq!(h.stored_bytes as usize, stored_len);
        prop_assert_eq!(h.frame_bytes(), frame.len());
        prop_assert_eq!(h.end_lsn(), base + frame.len() as u64);
        let got: Vec<&[u8]> = recs.iter().collect();
        let want: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(got, want);

        // Bytes after the frame (the next frame, zeroed space) are ignored.
        let mut longer = frame.clone();
        longer.extend_from_slice(&trailing);
        prop_assert_eq!(decode_frame(&longer).unwrap(), (h, recs.clone()));

        fuzz_body(&frame);
    }

    #[test]
    fn compressible_batches_are_stored_compressed(
        items in prop::collection::vec((any::<u8>(), 0..2000usize), 1..50),
        level in prop_oneof![Just(1), Just(3)],
    ) {
        let items: Vec<Vec<u8>> = items.into_iter().map(|(b, n)| vec![b; n]).collect();
        let r = records_buf(&items);
        prop_assume!(r.raw_bytes() >= 4 * COMPRESS_BYTES_MIN);
        let mut enc = Encoder::new(Compression::Zstd(level)).unwrap();
        let p = enc.payload(&r);
        prop_assert_eq!(p.codec, Codec::Zstd);
        prop_assert!(p.stored.len() < r.raw_bytes());
        let frame = encode_frame(7, 8, &p);
        let (_, recs) = decode_frame(&frame).unwrap();
        prop_assert_eq!(recs.iter().count(), items.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let largest = largest_alloc_during(|| fuzz_body(&data));
        prop_assert!(largest <= BATCH_RAW_BYTES_MAX, "allocated {} bytes", largest);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        frame in valid_frame(),
        header in prop::collection::vec(any::<u8>(), 0..FRAME_HEADER_BYTES),
        rest in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        // A real header prefix, then arbitrary bytes: gets past the magic,
        // version, codec and flags checks far more often than pure noise.
        let mut data = frame[..OFF_EPOCH].to_vec();
        data.extend_from_slice(&header);
        data.extend_from_slice(&rest);
        fix_crc(&mut data);
        let largest = largest_alloc_during(|| fuzz_body(&data));
        prop_assert!(largest <= BATCH_RAW_BYTES_MAX, "allocated {} bytes", largest);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn mutated_frames_never_panic(
        frame in valid_frame(),
        mutations in prop::collection::vec(mutation(), 1..4),
        recompute_crc in prop::bool::weighted(0.85),
    ) {
        let mut data = frame;
        for m in &mutations {
            apply(&mut data, m);
        }
        if recompute_crc {
            fix_crc(&mut data);
        }
        let largest = largest_alloc_during(|| fuzz_body(&data));
        prop_assert!(largest <= BATCH_RAW_BYTES_MAX, "allocated {} bytes", largest);
    }
}

// ---------------------------------------------------------------------------
// Deterministic cases.

fn one_record_frame(codec: Compression) -> Vec<u8> {
    let r = records_buf(&[vec![b'z'; 1000]]);
    let mut enc = Encoder::new(codec).unwrap();
    encode_frame(1, 0, &enc.payload(&r))
}

#[test]
fn huge_raw_bytes_with_valid_crc_is_rejected_without_allocating() {
    let claims = [
        u32::MAX,
        u32::MAX - 7,
        BATCH_RAW_BYTES_MAX as u32 + 1,
        BATCH_RAW_BYTES_MAX as u32 + 8,
    ];
    for compression in [Compression::Off, Compression::Zstd(1)] {
        let frame = one_record_frame(compression);
        let codec = decode_frame(&frame).unwrap().0.codec;
        for raw in claims {
            // raw_bytes alone, and (for a plain frame, which needs stored ==
            // raw) raw_bytes and stored_bytes together.
            for set_stored in [false, true] {
                let mut f = frame.clone();
                put_u32(&mut f, OFF_RAW_BYTES, raw);
                if set_stored {
                    put_u32(&mut f, OFF_STORED_BYTES, raw);
                }
                fix_crc(&mut f);
                let mut result = None;
                let largest = largest_alloc_during(|| result = Some(decode_frame(&f)));
                let result = result.unwrap();
                assert!(
                    matches!(result, Err(FrameError::BadLengths(_))),
                    "{codec:?} raw_bytes={raw} set_stored={set_stored}: {result:?}"
                );
                assert!(
                    largest < 1 << 20,
                    "{codec:?} raw_bytes={raw}: allocated {largest} bytes"
                );
            }
        }
    }
}

#[test]
fn raw_bytes_at_the_limit_passes_the_header_but_fails_decompression() {
    // The largest raw size the header accepts: decode_header lets it through
    // (checksum fixed), decompression then finds the payload does not match.
    let mut f = one_record_frame(Compression::Zstd(1));
    assert_eq!(decode_frame(&f).unwrap().0.codec, Codec::Zstd);
    put_u32(&mut f, OFF_RAW_BYTES, BATCH_RAW_BYTES_MAX as u32);
    fix_crc(&mut f);
    assert_eq!(
        decode_header(&f).unwrap().raw_bytes as usize,
        BATCH_RAW_BYTES_MAX
    );
    let mut result = None;
    let largest = largest_alloc_during(|| result = Some(decode_frame(&f)));
    assert!(
        matches!(result, Some(Err(FrameError::Decompress(_)))),
        "{result:?}"
    );
    assert!(largest <= BATCH_RAW_BYTES_MAX, "allocated {largest} bytes");
}

#[test]
fn wrong_raw_bytes_with_valid_crc_fails_decompression() {
    let frame = one_record_frame(Compression::Zstd(1));
    let raw = decode_frame(&frame).unwrap().0.raw_bytes;
    for claimed in [raw - 4, raw - 1, raw + 1, raw + 4, raw * 2] {
        let mut f = frame.clone();
        put_u32(&mut f, OFF_RAW_BYTES, claimed);
        fix_crc(&mut f);
        let result = decode_frame(&f);
        assert!(
            matches!(result, Err(FrameError::Decompress(_))),
            "raw_bytes={claimed}: {result:?}"
        );
    }
}

#[test]
fn garbage_zstd_payload_with_valid_crc_fails_decompression() {
    let mut f = one_record_frame(Compression::Zstd(1));
    let stored = decode_frame(&f).unwrap().0.stored_bytes as usize;
    for b in &mut f[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + stored] {
        *b = 0xa5;
    }
    fix_crc(&mut f);
    assert!(matches!(decode_frame(&f), Err(FrameError::Decompress(_))));
}

#[test]
fn bad_record_structure_with_valid_crc_is_rejected() {
    let r = records_buf(&[b"first".to_vec(), b"second".to_vec()]);
    let mut enc = Encoder::new(Compression::Off).unwrap();
    let frame = encode_frame(1, 8, &enc.payload(&r));
    let first_prefix = FRAME_HEADER_BYTES;
    let second_prefix = FRAME_HEADER_BYTES + RECORD_PREFIX_BYTES + 5;

    let cases: [(&str, usize, u32); 5] = [
        ("first record runs past payload", first_prefix, 1000),
        ("first record huge", first_prefix, u32::MAX),
        ("second record runs past payload", second_prefix, 7),
        ("bytes left over", second_prefix, 5),
        ("record count too high", OFF_RECORD_COUNT, 3),
    ];
    for (what, off, value) in cases {
        let mut f = frame.clone();
        put_u32(&mut f, off, value);
        fix_crc(&mut f);
        let result = decode_frame(&f);
        assert!(
            matches!(result, Err(FrameError::BadRecords(_))),
            "{what}: {result:?}"
        );
    }

    // Fewer records than the payload holds: bytes left over.
    let mut f = frame.clone();
    put_u32(&mut f, OFF_RECORD_COUNT, 1);
    fix_crc(&mut f);
    assert!(matches!(decode_frame(&f), Err(FrameError::BadRecords(_))));
}

#[test]
fn fixed_crc_makes_header_mutations_reach_validation() {
    // Sanity check of the helper the mutation test relies on: without it a
    // header change is a checksum error, with it the frame decodes again.
    let mut f = one_record_frame(Compression::Off);
    put_u64(&mut f, OFF_EPOCH, 99);
    assert!(matches!(
        decode_frame(&f),
        Err(FrameError::BadChecksum { .. })
    ));
    fix_crc(&mut f);
    let (h, _) = decode_frame(&f).unwrap();
    assert_eq!(h.epoch, 99);
    fuzz_body(&f);
}

#[test]
fn truncated_frames_are_rejected() {
    for compression in [Compression::Off, Compression::Zstd(1)] {
        let frame = one_record_frame(compression);
        let stored = decode_frame(&frame).unwrap().0.stored_bytes as usize;
        for len in 0..FRAME_HEADER_BYTES + stored {
            let result = decode_frame(&frame[..len]);
            assert!(
                matches!(result, Err(FrameError::Truncated { .. })),
                "len {len}: {result:?}"
            );
        }
    }
}

/// The mutation generator is only useful if mutated frames get past the
/// header and checksum checks: with a fixed seed, every decoder stage must be
/// reached (including success with both codecs).
#[test]
fn mutations_reach_every_decoder_stage() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let strategy = (
        valid_frame(),
        prop::collection::vec(mutation(), 1..4),
        prop::bool::weighted(0.85),
    );
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let (mut data, mutations, recompute_crc) =
            strategy.new_tree(&mut runner).unwrap().current();
        for m in &mutations {
            apply(&mut data, m);
        }
        if recompute_crc {
            fix_crc(&mut data);
        }
        fuzz_body(&data);
        let stage = match decode_frame(&data) {
            Ok((h, _)) if h.codec == Codec::None => "ok plain",
            Ok(_) => "ok zstd",
            Err(FrameError::Truncated { .. }) => "truncated",
            Err(FrameError::BadLengths(_)) => "bad lengths",
            Err(FrameError::BadChecksum { .. }) => "bad checksum",
            Err(FrameError::Decompress(_)) => "decompress",
            Err(FrameError::BadRecords(_)) => "bad records",
            Err(_) => "other header check",
        };
        *seen.entry(stage).or_default() += 1;
    }
    for stage in [
        "ok plain",
        "ok zstd",
        "truncated",
        "bad lengths",
        "bad checksum",
        "decompress",
        "bad records",
        "other header check",
    ] {
        assert!(
            seen.get(stage).copied().unwrap_or(0) >= 10,
            "stage {stage:?} reached too rarely: {seen:?}"
        );
    }
}
