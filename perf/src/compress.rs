//! Measures, on this machine, what the engine's batch encoder (zstd level 1
//! on whole batches, kept only when smaller; engine/src/log/frame.rs) does
//! to records of the workload's shape: log bytes per payload byte, with
//! and without compression, and the compression speed.
//!
//! The records are synthetic, made like the benchmark's
//! (bench/src/local_commit.rs `RecordGen`): "compressible" is repeated SQL
//! text with a counter, "incompressible" fresh pseudo-random bytes. Real
//! records compress differently; the report says so.

use std::time::Instant;

use mirrorlog_engine::log::frame::{frame_bytes_for, Encoder};
use mirrorlog_engine::log::{Compression, RecordsBuf};
use serde::Serialize;

use crate::workload::{Content, Workload};

const TEXT: &[u8] = b"INSERT INTO orders (id, customer, item, qty, status) VALUES \
(?, 'customer-0042', 'widget-blue-large', 3, 'shipped'); -- mirrorlog bench row\n";

/// What one measurement found, for one batch size.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Compressed {
    pub records_per_batch: u32,
    /// Log (frame) bytes per record payload byte with zstd:1.
    pub log_per_payload_zstd: f64,
    /// The same with compression off (headers, length prefixes, padding).
    pub log_per_payload_plain: f64,
    /// Record payload MB/s through the zstd encoder on one core.
    pub encode_mb_per_s: f64,
}

struct Gen {
    state: u64,
    counter: u64,
}

impl Gen {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn record(&mut self, content: Content, size: usize, out: &mut Vec<u8>) {
        out.clear();
        self.counter += 1;
        match content {
            Content::Compressible => {
                out.extend((0..size).map(|i| TEXT[i % TEXT.len()]));
                let digits = b"0123456789abcdef";
                for (i, b) in out.iter_mut().take(16).enumerate() {
                    *b = digits[((self.counter >> (4 * (15 - i))) & 0xf) as usize];
                }
            }
            Content::Incompressible => {
                while out.len() < size {
                    let w = self.next_u64().to_le_bytes();
                    let n = (size - out.len()).min(8);
                    out.extend_from_slice(&w[..n]);
                }
            }
        }
    }

    /// A record size drawn from the workload's distribution.
    fn size(&mut self, sizes: &[(u64, f64)]) -> usize {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for &(b, w) in sizes {
            acc += w;
            if u < acc {
                return b as usize;
            }
        }
        sizes.last().map_or(1, |s| s.0 as usize)
    }
}

/// Encodes about `payload_bytes` of the workload's records in batches of
/// `records_per_batch`, with zstd:1 and without, timing the zstd encoder.
pub fn measure(w: &Workload, records_per_batch: u32, payload_bytes: usize) -> Compressed {
    assert!(records_per_batch >= 1);
    let mut gen = Gen {
        state: 0x9E37_79B9_7F4A_7C15,
        counter: 1 << 40,
    };
    let mut zstd = Encoder::new(Compression::Zstd(1)).expect("zstd context");
    let mut plain = Encoder::new(Compression::Off).expect("encoder");
    let mut batch = RecordsBuf::new();
    let mut record = Vec::new();
    let (mut payload, mut log_z, mut log_p) = (0usize, 0usize, 0usize);
    let mut encode_s = 0.0;
    while payload < payload_bytes {
        batch.clear();
        for _ in 0..records_per_batch {
            let size = gen.size(&w.sizes);
            gen.record(w.content, size, &mut record);
            batch.push(&record);
            payload += size;
        }
        let t = Instant::now();
        let stored = zstd.payload(&batch).stored.len();
        encode_s += t.elapsed().as_secs_f64();
        log_z += frame_bytes_for(stored);
        log_p += frame_bytes_for(plain.payload(&batch).stored.len());
    }
    Compressed {
        records_per_batch,
        log_per_payload_zstd: log_z as f64 / payload as f64,
        log_per_payload_plain: log_p as f64 / payload as f64,
        encode_mb_per_s: payload as f64 / encode_s.max(1e-9) / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::parse;

    fn workload(content: &str, size: u64) -> Workload {
        parse(&format!(
            "[records]\nsizes = [[{size}, 1]]\ncontent = \"{content}\"\n[rate]\naverage_mb_per_s = 1\npeak_mb_per_s = 1\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_single_small_record_costs_header_prefix_and_padding() {
        // 100 B + 4 B length prefix + 40 B header = 144, already 8-aligned:
        // what the mirroring benchmark's log shows per 100 B commit.
        let c = measure(&workload("compressible", 100), 1, 100_000);
        assert!((c.log_per_payload_plain - 1.44).abs() < 1e-9, "{c:?}");
        // Below 128 B a payload is never compressed.
        assert!((c.log_per_payload_zstd - 1.44).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn text_shrinks_in_large_batches_and_random_bytes_do_not() {
        let text = measure(&workload("compressible", 4096), 16, 1 << 20);
        assert!(text.log_per_payload_zstd < 0.2, "{text:?}");
        assert!(text.log_per_payload_plain > 1.0);
        let random = measure(&workload("incompressible", 4096), 16, 1 << 20);
        assert!(random.log_per_payload_zstd > 1.0, "{random:?}");
        assert!(random.log_per_payload_zstd <= random.log_per_payload_plain + 1e-9);
        assert!(text.encode_mb_per_s > 0.0);
    }
}
