//! Integrity after the handshake: every message either way carries a tag,
//! a BLAKE3 keyed hash (`blake3::keyed_hash`) of a per-direction sequence
//! number and the message's bytes, keyed with that direction's session key
//! (`pake::SessionSecrets::seal_keys`).
//!
//! ```text
//! tag = BLAKE3-keyed(key_direction, seq u64 LE ‖ message bytes)
//! ```
//!
//! `seq` counts the messages sent in that direction since the handshake,
//! from 0, so a message dropped, repeated, reordered, moved to the other
//! direction or to another connection fails its check. The tag is not part
//! of the message: the sender computes it over the bytes it sends (for a
//! `ship`, over its header and the frame straight in the segment map, so
//! zero-copy sending stays zero-copy) and sends it after them as one more
//! small buffer; the receiver checks it before decoding the message.
//!
//! BLAKE3 rather than HMAC-SHA256: it is a keyed MAC by design (no
//! nested hashing), and on this machine (AVX-512) it hashes large frames
//! several times faster than SHA-256 with SHA-NI (measured by the test
//! `seal_tag_throughput` below, run with `--ignored --nocapture`).

use thiserror::Error;

/// Bytes of a tag.
pub const TAG_BYTES: usize = 32;

/// One direction's key and the sequence number of its next message.
pub struct SealKey {
    key: [u8; 32],
    seq: u64,
}

impl SealKey {
    fn new(key: [u8; 32]) -> SealKey {
        SealKey { key, seq: 0 }
    }

    /// The tag of the message made of `parts` (concatenated), for the
    /// current sequence number, without advancing it.
    pub fn tag_of(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.seq.to_le_bytes());
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Tags the next message and advances the sequence number.
    pub fn seal(&mut self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let t = self.tag_of(parts);
        self.seq += 1;
        t
    }

    /// Checks the next message's tag (constant time) and advances.
    pub fn open(&mut self, msg: &[u8], tag: &[u8; TAG_BYTES]) -> Result<(), IntegrityError> {
        let want = blake3::Hash::from(self.tag_of(&[msg]));
        // `blake3::Hash`'s equality is constant-time.
        if want != blake3::Hash::from(*tag) {
            return Err(IntegrityError {
                seq: self.seq,
                kind: msg.get(4).copied(),
            });
        }
        self.seq += 1;
        Ok(())
    }

    /// Messages sealed or opened so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// The keys of one side of a session: what it sends, what it receives.
pub struct SealKeys {
    pub send: SealKey,
    pub recv: SealKey,
}

impl SealKeys {
    pub fn new(send: [u8; 32], recv: [u8; 32]) -> SealKeys {
        SealKeys {
            send: SealKey::new(send),
            recv: SealKey::new(recv),
        }
    }
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealKeys(send seq {}, recv seq {}, keys redacted)",
            self.send.seq, self.recv.seq
        )
    }
}

/// A message whose tag did not verify: altered, dropped, replayed or
/// reordered on the way, or sent by someone without the session key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "integrity check failed on message {seq} from the partner (type {}): it was altered, dropped, replayed or reordered on the way; the session is closed and nothing of it was used",
    kind.map_or("unknown".to_string(), |k| k.to_string())
)]
pub struct IntegrityError {
    pub seq: u64,
    /// The message's type byte as received (itself unauthenticated).
    pub kind: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SealKeys, SealKeys) {
        (
            SealKeys::new([1; 32], [2; 32]),
            SealKeys::new([2; 32], [1; 32]),
        )
    }

    #[test]
    fn tags_check_in_order_and_only_in_order() {
        let (mut a, mut b) = pair();
        let t0 = a.send.seal(&[b"hel", b"lo"]);
        let t1 = a.send.seal(&[b"world"]);
        assert_eq!(b.recv.open(b"hello", &t0), Ok(()));
        assert_eq!(b.recv.open(b"world", &t1), Ok(()));
        // Replay of message 1 as message 2.
        assert!(b.recv.open(b"world", &t1).is_err());

        let (mut a, mut b) = pair();
        let _t0 = a.send.seal(&[b"one"]);
        let t1 = a.send.seal(&[b"two"]);
        assert!(b.recv.open(b"two", &t1).is_err(), "a dropped message");

        let (mut a, mut b) = pair();
        let t0 = a.send.seal(&[b"one"]);
        assert!(a.recv.open(b"one", &t0).is_err(), "reflected");
        let mut bad = *b"one";
        bad[1] ^= 1;
        assert!(b.recv.open(&bad, &t0).is_err(), "tampered");
        assert_eq!(
            b.recv.open(b"one", &t0),
            Ok(()),
            "the failed check did not advance"
        );
    }

    /// Not a benchmark of record (see bench/): a quick look at what the
    /// MAC costs per byte, BLAKE3 against HMAC-SHA256.
    #[test]
    #[ignore]
    fn seal_tag_throughput() {
        use hmac::{Hmac, KeyInit, Mac};
        use sha2::Sha256;
        for size in [64usize, 4096, 65536, 1 << 20] {
            let buf = vec![7u8; size];
            let n = (256usize << 20) / size;
            let k = SealKey::new([3; 32]);
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(k.tag_of(&[&buf]));
            }
            let b3 = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            for _ in 0..n {
                let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&[3; 32]).unwrap();
                m.update(&buf);
                std::hint::black_box(m.finalize());
            }
            let hs = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("{size:>8} B: blake3 {b3:.2} GB/s, hmac-sha256 {hs:.2} GB/s");
        }
    }
}
