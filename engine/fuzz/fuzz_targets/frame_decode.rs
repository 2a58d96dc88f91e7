//! Fuzzes the batch-frame decoder with arbitrary bytes.
//!
//! The body is the same as `fuzz_body` in `engine/tests/frame_props.rs`
//! (which runs it under proptest on every `cargo test`); keep the two in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorlog_engine::log::frame::{
    decode_frame, decode_header, encode_frame, Codec, Compression, Encoder, FrameHeader, Payload,
    Records, RecordsBuf, BATCH_RAW_BYTES_MAX, FRAME_ALIGN, FRAME_HEADER_BYTES, RECORD_PREFIX_BYTES,
};

fuzz_target!(|data: &[u8]| fuzz_body(data));

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
